"""Edit-native diffusion (``data.format=native``, ``objective=edit_mdlm``): the line alignment,
the two canvases, the objective, the pairing checks and decoding a memorised set of edits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import compose
from test_edits_task import EDIT_DATA, MODULES, SOURCE, _Cycle  # noqa: F401  (MODULES: data set)

from sandbox.core.errors import UserError
from sandbox.data.tokenizers import ByteTokenizer
from sandbox.tasks.edits.native import NativeBatches, align_lines, apply_lines, split_lines
from sandbox.tasks.edits.task import EditsTask


@pytest.fixture(scope="module")
def native(sandbox_cache) -> NativeBatches:
    task = EditsTask(source=SOURCE, format="native", tiers=("micro",), prompt_len=576, target_len=320,
                     native_slack=48)  # bytes: an inserted statement is longer than 16
    return task.batch_source(ByteTokenizer(), sandbox_cache, progress=False)


@pytest.fixture(scope="module")
def native_plain(sandbox_cache) -> NativeBatches:
    """The first layout (``native_twin=false``): the old function inside the prompt's text."""
    task = EditsTask(source=SOURCE, format="native", tiers=("micro",), prompt_len=384, target_len=320,
                     native_slack=48, native_twin=False)
    return task.batch_source(ByteTokenizer(), sandbox_cache, progress=False)


CASES = {  # before, after: every shape of line change
    "replace": ("def f(a):\n    return a + 1\n", "def f(a):\n    return a - 1\n"),
    "delete": ("def f(a):\n    x = 1\n    return a\n", "def f(a):\n    return a\n"),
    "insert_middle": ("def f(a):\n    return a\n", "def f(a):\n    y = 2\n    return a\n"),
    "insert_end": ("def f(a):\n    return a", "def f(a):\n    return a\n    print(a)"),
    "insert_top": ("    return a\n", "def f(a):\n    return a\n"),
    "one_to_two": ("def f(a):\n    return a\n", "def f(a, b):\n    if b:\n        return b\n    return a\n"),
    "two_to_one": ("def f(a):\n    x = 1\n    y = 2\n", "def f(a):\n    z = 3\n"),
    "no_change": ("def f():\n    pass\n", "def f():\n    pass\n"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_line_alignment_rebuilds_the_new_function(name):
    before, after = CASES[name]
    flags, content = align_lines(before, after)
    assert len(flags) == len(split_lines(before))
    assert apply_lines(before, flags, content) == after
    assert any(flags) == (before != after)


def test_alignment_flags_the_changed_line_and_attaches_insertions_above():
    flags, content = align_lines(*CASES["insert_middle"])
    assert flags == [True, False] and content[0] == "def f(a):\n    y = 2\n"
    flags, content = align_lines(*CASES["delete"])
    assert flags == [False, True, False] and content[1] == ""
    flags, content = align_lines(*CASES["insert_top"])  # nothing above: attached below
    assert flags == [True] and content[0] == "def f(a):\n    return a\n"


def test_alignment_round_trips_every_frozen_item(native):
    items = native.data.items("val") + native.data.items("test")
    assert len(items) > 50
    for it in items:
        assert apply_lines(it.before, *align_lines(it.before, it.after)) == it.after, it.id


@pytest.mark.parametrize("layout", ["native", "native_plain"])
def test_canvases_of_an_item_decode_to_before_and_after(layout, request):
    native = request.getfixturevalue(layout)
    tok = native.tokenizer
    p, n = native.prompt_len, native.target_len
    h = native.head_len  # the instruction's share of the prompt
    seen = 0
    for it in native.data.items("val", tiers="micro"):
        e = native.encode(it)
        if not e.fits:
            continue
        seen += 1
        src, rewrite = e.extra["source"], e.extra["rewrite"]
        assert tok.decode(src[p:]) == it.before                     # the source canvas
        assert native.decode_canvas(e.tokens[p:]) == it.after        # the gold fill canvas
        assert (e.tokens[:h] == src[:h]).all() and e.cond[:p].all()  # same instruction, clean prompt
        assert not e.extra["source_cond"][p:].any() and e.extra["source_cond"][:p].all()
        # the rewrite positions are exactly the flagged lines of the source canvas
        lay = native.layout(it.before)
        flags, _ = align_lines(it.before, it.after)
        want = np.zeros(n, bool)
        for (s, t), f in zip(lay.spans, flags, strict=True):
            want[s:t] = f
        assert (rewrite[p:] == want).all() and not rewrite[:p].any()
        # slots: len(line) + slack positions each, the only unknown positions of the fill canvas
        n_slot = sum(len(ids) + native.slack for ids, f in zip(lay.line_ids, flags, strict=True) if f)
        assert int((~e.cond).sum()) == n_slot == e.target_tokens
        assert native.line_flags(lay, rewrite[p:].astype(float)) == flags  # a perfect locate
    assert seen >= 8


def test_the_twin_holds_each_canvas_positions_old_token_target_len_earlier(native):
    """Twin layout: the locate row's twin is the source canvas; the fill row's twin shows, at
    every canvas position minus target_len, the old token of the same line (kept lines: the
    token itself; a slot: its old line, then EOS to the slot's width)."""
    p, n, eos = native.prompt_len, native.target_len, native.tokenizer.eos_id
    assert native.twin and native.head_len == p - n
    seen = 0
    for it in native.data.items("val", tiers="micro"):
        e = native.encode(it)
        if not e.fits:
            continue
        lay = native.layout(it.before)
        flags, _ = align_lines(it.before, it.after)
        assert (e.extra["source"][p - n:p] == lay.source).all()
        twin, canvas, known = e.tokens[p - n:p], e.tokens[p:], e.cond[p:]
        assert (twin[known] == canvas[known]).all()
        pos = 0
        for line, f in zip(lay.line_ids, flags, strict=True):
            w = len(line) + native.slack if f else len(line)
            assert twin[pos:pos + len(line)].tolist() == line
            assert (twin[pos + len(line):pos + w] == eos).all()
            assert known[pos:pos + w].all() != f  # a slot is unknown, a kept line known
            pos += w
        seen += any(flags)
    assert seen >= 8


def test_the_twin_needs_room_for_the_instruction(sandbox_cache):
    task = EditsTask(source=SOURCE, format="native", tiers=("micro",), prompt_len=321, target_len=320)
    with pytest.raises(UserError, match="data.prompt_len=321 must exceed data.target_len=320") as e:
        task.batch_source(ByteTokenizer(), sandbox_cache, progress=False)
    assert "\n" not in str(e.value)


def test_a_native_run_saved_before_the_twin_loads_with_the_first_layout():
    from omegaconf import OmegaConf

    from sandbox.core.runs import upgrade_config

    old = OmegaConf.create({"data": {"format": "native", "native_slack": 16}})
    assert upgrade_config(old).data.native_twin is False
    whole = OmegaConf.create({"data": {"format": "whole", "native_slack": 16}})
    assert "native_twin" not in upgrade_config(whole).data  # no effect there: left as saved
    new = OmegaConf.create({"data": {"format": "native", "native_twin": True}})
    assert upgrade_config(new).data.native_twin is True


def test_a_slot_that_overflows_does_not_fit(sandbox_cache):
    task = EditsTask(source=SOURCE, format="native", tiers=("micro",), prompt_len=576, target_len=320,
                     native_slack=2)
    tight = task.batch_source(ByteTokenizer(), sandbox_cache, progress=False)
    it = next(it for it in tight.data.items("val", "insert_stmt", "micro"))
    assert not tight.encode(it).fits  # an inserted statement is longer than 2 extra bytes


def test_edit_mdlm_loss_scores_slots_and_the_locate_answer(native):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sandbox.models.transformer import Transformer
    from sandbox.objectives import EditMDLM

    tok = native.tokenizer
    obj = EditMDLM().bind(tok)
    model = Transformer(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                        max_len=native.seq_len, rngs=nnx.Rngs(0))
    batch = native.train_batch(seed=0, step=1, batch_size=2)
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    loss, m = obj.loss(model, b["tokens"], jax.random.PRNGKey(0), cond=b["cond"], source=b["source"],
                       source_cond=b["source_cond"], rewrite=b["rewrite"])
    assert np.isfinite(float(loss)) and float(m["locate"]) > 0 and float(m["nelbo"]) > 0
    np.testing.assert_allclose(float(loss), float(m["nelbo"]) + float(m["locate"]), rtol=1e-6)
    # the locate loss is the cross-entropy toward [MASK] on rewritten positions, the token elsewhere
    logits = model(b["source"], mask_kind=obj.mask_kind)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    target = np.where(batch["rewrite"], tok.mask_id, batch["source"])
    ce = -np.take_along_axis(np.asarray(logp), target[..., None], -1)[..., 0]
    scored = ~batch["source_cond"]
    want = np.mean((ce * scored).sum(-1) / scored.sum(-1))
    np.testing.assert_allclose(float(m["locate"]), want, rtol=1e-5)
    # the held-out bound reads the fill rows only
    nll = obj.nll(model, b["tokens"], jax.random.PRNGKey(1), 2, cond=b["cond"], source=b["source"])
    assert nll.shape == (2, 2) and np.isfinite(np.asarray(nll)).all()


@pytest.mark.parametrize("pair", [("mdlm", "native"), ("ar", "native"), ("edit_mdlm", "whole")])
def test_trainer_refuses_an_objective_that_cannot_read_the_format(pair, tmp_path, sandbox_cache):
    from test_edits_task import EDIT_RUN

    from sandbox.train import run

    obj, fmt = pair
    d = tmp_path / "run"
    with pytest.raises(UserError, match=f"objective={obj} (cannot read|needs) the batch fields") as e:
        run(compose([*EDIT_RUN, f"objective={obj}", f"data.format={fmt}", f"cache_dir={sandbox_cache}"]), d)
    assert "\n" not in str(e.value) and "edit_mdlm" in str(e.value)
    assert not d.exists()


@pytest.mark.slow  # over 30 s on the 2-core CPU: `make test-all`
@pytest.mark.parametrize("denoiser", [[], ["objective.mask_kind=causal", "+model.logit_shift=true"]],
                         ids=["bidirectional", "causal-shifted"])
def test_a_model_that_memorised_edits_decodes_them_natively(denoiser, tmp_path, sandbox_cache, monkeypatch):
    """End to end, no oracle: train on fixed edits (an insertion, a deletion, an in-line change)
    until memorised; the locate forward must flag the right lines and the fill must write them
    (a causal denoiser with the logit shift, the SmolLM2 recipe's, decodes through its prompt
    cache)."""
    from sandbox.core.runs import load_run
    from sandbox.tasks.edits.evaluate import build_sampler, run_variant
    from sandbox.train import run

    items = []

    def fixed(self, seed):
        if not items:
            by = {}  # the shortest item of each kind that fits
            for it in sorted(self.data.items("val", tiers="micro"), key=lambda it: (len(it.before), it.id)):
                if it.kind in ("insert_stmt", "delete_stmt", "swap_op") and it.kind not in by \
                        and self.encode(it).fits:
                    by[it.kind] = it
            items.extend(by[k] for k in sorted(by))
        return _Cycle(items)

    monkeypatch.setattr(NativeBatches, "_sampler", fixed)
    d = tmp_path / "native"
    run(compose([*EDIT_DATA, "data.format=native", "objective=edit_mdlm", "data.prompt_len=416",
                 "data.target_len=192", "train.seq_len=608", "model.max_len=608", "data.em_items=0",
                 "data.native_slack=48",
                 "model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
                 "train.batch_size=6", "train.steps=250", "train.eval_every=1000", "train.ckpt_every=1000",
                 "train.log_every=50", "train.eval_batches=1", "train.eval_draws=1", "train.progress=false",
                 "optim.lr=0.003", "optim.warmup_steps=10", "train.ema_decay=0.9",
                 f"cache_dir={sandbox_cache}", *denoiser]), d)
    assert sorted(it.kind for it in items) == ["delete_stmt", "insert_stmt", "swap_op"]
    r = load_run(d)
    # both terms of the loss are logged, and they add up to train_loss
    trains = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    trains = [rec for rec in trains if rec["kind"] == "train"]
    assert len(trains) == 5
    w = r.objective.locate_weight
    for rec in trains:
        assert rec["loss_nelbo"] + w * rec["loss_locate"] == pytest.approx(rec["train_loss"], rel=1e-5)
    sampler = build_sampler(compose([f"run_dir={d}", "eval=edits"], config_name="evaluate"), r)
    out = run_variant(r, sampler, items, "native", seed=0, progress=False)
    assert [p["output"] for p in out["preds"]] == [it.after for it in items]
    # one locate forward plus a fill that touches only the rewritten lines
    assert all(p["nfe"] >= 2 for p in out["preds"])
