"""Exact match during training (``sandbox.tasks.edits.learning``): the trainer's
``make_eval_extra`` hook writes ``val_edit_em`` into the eval records of an edit run, a model
that memorised the items scores 1.0, and the report draws the curve (skipping runs without it)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import FIXTURES, compose
from test_edits_task import EDIT_DATA, _Cycle

from sandbox.core.errors import UserError

SHORT = ["data.prompt_len=160", "data.target_len=112", "train.seq_len=272", "model.n_heads=2",
         "model.n_kv_heads=2", "train.log_every=50", "train.eval_batches=1", "train.eval_draws=1",
         "train.progress=false"]


def _evals(run_dir) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "eval"]


def test_a_model_that_memorised_the_items_logs_exact_match_one(tmp_path, sandbox_cache, monkeypatch):
    """AR trained on the very val items the hook decodes: every eval record carries the exact
    match in [0, 1] and the item count, the decoder is compiled at the first evaluation only, and
    the last evaluation reproduces both items exactly."""
    from sandbox.tasks.edits.learning import em_items
    from sandbox.tasks.edits.task import EditBatches
    from sandbox.train import run

    def fixed(self, seed):  # the training stream cycles over the items the hook decodes
        return _Cycle(em_items(self, self.em_items))

    monkeypatch.setattr(EditBatches, "_sampler", fixed)
    d = tmp_path / "ar"
    run(compose([*EDIT_DATA, *SHORT, "data.em_items=2", "model.d_model=64", "model.n_layers=2",
                 "train.batch_size=8", "train.steps=80", "train.eval_every=40", "train.ckpt_every=1000",
                 "optim.lr=0.003", "optim.warmup_steps=10", "train.ema_decay=0.9", "objective=ar",
                 f"cache_dir={sandbox_cache}"]), d)
    ev = _evals(d)
    assert [r["step"] for r in ev] == [40, 80]
    for r in ev:
        assert 0 <= r["val_edit_em"] <= 1 and r["val_edit_items"] == 2 and r["val_edit_s"] > 0
        kinds = [k for k in r if k.startswith("val_edit_em_")]
        assert kinds and all(0 <= r[k] <= 1 for k in kinds)
    assert "val_edit_compile_s" in ev[0] and "val_edit_compile_s" not in ev[1]  # compiled once
    assert ev[-1]["val_edit_em"] == 1.0


def test_diffusion_decodes_the_masked_canvas_and_zero_items_turns_it_off(sandbox_cache):
    """The hook on an MDLM model (its threshold sampler fills the masked canvas), without a
    training run; ``em_items=0`` gives no hook and a negative count is one line."""
    from sandbox.core.build import build
    from sandbox.tasks.edits.task import EditsTask

    b = build(compose([*EDIT_DATA, *SHORT, "data.em_items=3", "model.d_model=32", "model.n_layers=1",
                       "train.batch_size=4", "train.steps=1", "objective=mdlm",
                       f"cache_dir={sandbox_cache}"]))
    hook = b.data.make_eval_extra(graphdef=b.graphdef, objective=b.objective, layout=b.layout)
    assert hook.sampler.name == "mdm_threshold" and hook.sampler.precision == "greedy"
    assert hook.chunks[0].shape == (3, b.data.seq_len)  # prompt + masked canvas, one batch
    r = hook(b.layout.place(b.params), step=0)
    assert r["val_edit_items"] == 3 and 1 <= r["val_edit_nfe"] <= b.data.target_len
    assert all(0 <= r[k] <= 1 for k in r if k.startswith("val_edit_em"))
    b.data.em_items = 0
    assert b.data.make_eval_extra(graphdef=b.graphdef, objective=b.objective, layout=b.layout) is None
    with pytest.raises(UserError, match="data.em_items: must be an integer >= 0"):
        EditsTask(em_items=-1)._check()


# --- the report ---------------------------------------------------------------------------------
RUNS = FIXTURES / "run_folders" / "scaling"


def _with_em(src, dest, ems: list[float]) -> None:
    """A copy of a fixture run whose eval records carry ``val_edit_em`` (as an edit run's do)."""
    shutil.copytree(src, dest)
    p = dest / "metrics.jsonl"
    out, i = [], 0
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "eval":
            em = ems[min(i, len(ems) - 1)]
            rec.update(val_edit_em=em, val_edit_items=32, val_edit_em_rename=em, val_edit_em_swap_op=0.0,
                       val_edit_s=1.5)
            i += 1
        out.append(json.dumps(rec) + "\n")
    p.write_text("".join(out))


def test_the_report_draws_exact_match_beside_bpb_and_skips_runs_without_it(tmp_path):
    from analysis.context import build_context
    from analysis.edits import edit_curves
    from analysis.sections import edit_curves as section

    runs = tmp_path / "runs"
    _with_em(RUNS / "ar_d32_1e11_s0", runs / "edits_ar", [0.0, 0.125, 0.5])
    _with_em(RUNS / "mdlm_d32_1e11_s0", runs / "edits_mdlm", [0.0, 0.0625, 0.25])
    shutil.copytree(RUNS / "ar_d64_1e11_s0", runs / "lm_ar")  # no val_edit_em: left out
    (tmp_path / "out").mkdir()
    ctx = build_context(str(runs / "*"), tmp_path / "out")
    curves = edit_curves(ctx.metrics)
    assert set(curves["run_name"]) == {"edits_ar", "edits_mdlm"}
    md = section.section(ctx)
    assert md.startswith(section.HEADING) and f"![{section.FILE}]({section.FILE})" in md
    assert (tmp_path / "out" / section.FILE).stat().st_size > 0
    rows = [x for x in md.splitlines() if x.startswith("| ") and "(edits_" in x]
    assert len(rows) == 2 and "lm_ar" not in md
    assert all("| 32 |" in x and "rename" in x for x in rows)

    empty = tmp_path / "empty"
    shutil.copytree(RUNS / "ar_d64_1e11_s0", empty / "lm_ar")
    md = section.section(build_context(str(empty / "*"), tmp_path / "out2"))
    body = md.split("\n", 1)[1].strip()
    assert body.startswith("_No run logged exact match") and body.endswith("_") and "\n" not in body
    assert not (tmp_path / "out2" / section.FILE).exists()
