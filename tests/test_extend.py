"""A new objective is one class plus one YAML file: nothing else in the repository changes.

The class lives in this test file and its YAML in a temporary config folder that Hydra
finds through ``hydra.searchpath`` (a researcher's plugin folder; putting the file in
``conf/objective/`` works the same). The objective then trains through the trainer,
samples through ``sandbox.sample`` with the default sampler it declares, and appears in
the report under the label it declares, with its likelihood reported as exact, all with
no edit to ``sandbox/``, ``analysis/`` or ``conf/``. ``docs/extending.md`` walks through the
same class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
from conftest import REPO, TINY, compose

from sandbox.objectives.base import Objective, seq_mean, token_nll


@dataclass(frozen=True)
class SmoothedAR(Objective):
    """Next-token prediction trained with label smoothing (Szegedy et al. 2016, eq. 6):
    loss = (1 - eps) CE(x) + eps * mean_v(-log p(v)); its likelihood (``nll``) stays the exact
    cross-entropy, so it reads as an exact figure beside AR's."""

    smoothing: float = 0.1
    bos_id: int = -1
    name: str = "ar_smooth"
    mask_kind: str = "causal"
    exact: bool = True
    conditional: bool = False
    sampler_family: str = "ar"       # the left-to-right samplers read its checkpoints
    default_sampler: str = "ar"      # conf/sampler/ar.yaml when none is named

    @property
    def label(self) -> str:
        return f"ar_smooth({self.smoothing:g})"

    def bind(self, tokenizer):
        return self.replace(bos_id=int(tokenizer.bos_id))

    def _logp(self, model, tokens):
        bos = jnp.full((tokens.shape[0], 1), self.bos_id, tokens.dtype)
        logits = model(jnp.concatenate([bos, tokens[:, :-1]], axis=1), mask_kind=self.mask_kind)
        return logits

    def loss(self, model, tokens, key, cond=None):
        logits = self._logp(model, tokens)
        ce = token_nll(logits, tokens)
        uniform = -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
        loss = jnp.mean((1.0 - self.smoothing) * ce + self.smoothing * uniform)
        return loss, {"nll": jnp.mean(ce)}

    def nll(self, model, tokens, key, draws=None, cond=None):
        return seq_mean(token_nll(self._logp(model, tokens), tokens), cond)[None, :]  # [1, B] exact


YAML = f"""# Label-smoothed AR (the class is {__name__}.SmoothedAR)
_target_: {__name__}.SmoothedAR
name: ar_smooth
smoothing: 0.1
"""


def test_an_objective_added_from_outside_trains_samples_and_reports(tmp_path, sandbox_cache):
    import sandbox.sample as sample_cmd
    from analysis.report import build_report
    from sandbox.train import run

    conf = tmp_path / "plugin_conf"
    (conf / "objective").mkdir(parents=True)
    (conf / "objective" / "ar_smooth.yaml").write_text(YAML)
    search = f"hydra.searchpath=[file://{conf}]"
    run_dir = tmp_path / "runs" / "smooth"
    cfg = compose([search, "objective=ar_smooth", *TINY])
    assert cfg.objective._target_.endswith("SmoothedAR")
    last = run(cfg, run_dir)
    assert last["bound"] == "exact" and last["val_bpb"] > 0

    meta = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert meta["objective"] == "ar_smooth" and meta["objective_label"] == "ar_smooth(0.1)"
    assert meta["bound"] == "exact"

    # sampling: no sampler named, so the one the objective declares (conf/sampler/ar.yaml)
    out = sample_cmd.task(compose([f"run_dir={run_dir}", "num_samples=2", "batch_size=2", "length=16",
                                   "progress=false"], config_name="sample"))
    lines = [json.loads(x) for x in Path(out).read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["sampler"] == "ar" and len(lines[0]["tokens"]) == 16

    report = build_report(str(tmp_path / "runs" / "*"), tmp_path / "report", "extend")
    text = Path(report).read_text()
    assert "ar_smooth(0.1)" in text
    # nothing in the repository names the new objective
    for folder in ("sandbox", "analysis", "conf"):
        for f in (REPO / folder).rglob("*"):
            if f.suffix in (".py", ".yaml"):
                assert "ar_smooth" not in f.read_text(), f


def test_the_cli_finds_an_objective_on_the_searchpath(tmp_path):
    """The command-line check of overrides knows the plugin folder too (an unknown option
    would otherwise be refused before Hydra runs)."""
    from sandbox.core.cli import check_overrides

    conf = tmp_path / "plugin_conf"
    (conf / "objective").mkdir(parents=True)
    (conf / "objective" / "ar_smooth.yaml").write_text(YAML)
    check_overrides([f"hydra.searchpath=[file://{conf}]", "objective=ar_smooth"], "config")
