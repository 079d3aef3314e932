"""Conditional edit training and evaluation: the sequence layout, the
conditional objectives, ``data=stdlib_edits`` in the trainer and ``eval=edits``."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose
from flax import nnx

from sandbox.core.errors import UserError
from sandbox.data.tokenizers import ByteTokenizer
from sandbox.models.transformer import Transformer
from sandbox.objectives.ar import AR
from sandbox.objectives.base import token_nll
from sandbox.objectives.mdlm import MDLM
from sandbox.tasks.edits import StdlibEdits
from sandbox.tasks.edits.task import EditsTask, target_text

# the small module set of tests/test_edits_data.py: extracts in about a second
MODULES = ["bisect", "calendar", "collections", "colorsys", "csv", "difflib", "fractions", "ftplib",
           "gettext", "glob", "heapq", "json", "queue", "sched", "shlex", "statistics", "string",
           "textwrap", "tokenize", "uuid"]
SMALL = dict(min_test_functions=60, min_val_functions=40, min_test_modules=3, min_val_modules=2)
SOURCE = StdlibEdits(seed=0, test_per_kind=6, val_per_kind=4, modules=MODULES, **SMALL)


@pytest.fixture(scope="module")
def src(sandbox_cache):
    task = EditsTask(source=SOURCE, format="whole", tiers=("micro",), prompt_len=384, target_len=320)
    return task.batch_source(ByteTokenizer(), sandbox_cache, progress=False)


def test_layout_left_pads_the_prompt_and_eos_pads_the_target(src):
    tok = src.tokenizer
    item = next(it for it in src.data.items("val", tiers="micro") if src.encode(it).fits)
    e = src.encode(item)
    p, t = src.prompt_len, src.target_len
    prompt = tok.encode(f"{item.instruction}\n{item.before}")
    target = tok.encode(item.after)
    assert e.tokens.shape == e.cond.shape == (p + t,)
    assert e.tokens[p - 1] == tok.bos_id and list(e.tokens[p - 1 - len(prompt):p - 1]) == prompt
    assert (e.tokens[:p - 1 - len(prompt)] == tok.pad_id).all()
    assert list(e.tokens[p:p + len(target)]) == target and (e.tokens[p + len(target):] == tok.eos_id).all()
    assert e.cond[:p].all() and not e.cond[p:].any()
    assert src.decode_target(e.tokens[p:]) == item.after
    np.testing.assert_array_equal(src.prompt(item), e.tokens[:p])


def test_items_that_do_not_fit_are_skipped_in_training_and_flagged(src, sandbox_cache):
    short = EditsTask(source=SOURCE, tiers=("micro",), prompt_len=300, target_len=200).batch_source(
        ByteTokenizer(), sandbox_cache, progress=False)
    items = src.data.items("val", tiers="micro")
    fits = [short.encode(it).fits for it in items]
    assert any(fits) and not all(fits)
    for it, ok in zip(items, fits):
        e = short.encode(it)
        assert ok == (e.prompt_tokens <= 300 and e.target_tokens <= 200)
    b = short.train_batch(seed=0, step=3, batch_size=8)
    assert b["tokens"].shape == (8, 500) and b["cond"].dtype == bool
    assert (b["tokens"][:, 299] == short.tokenizer.bos_id).all()  # every row laid out in full
    again = short.train_batch(seed=0, step=3, batch_size=8)
    np.testing.assert_array_equal(b["tokens"], again["tokens"])
    halves = [short.train_batch(seed=0, step=3, batch_size=8, process_index=i, process_count=2)
              for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["tokens"] for h in halves]), b["tokens"])
    assert not np.array_equal(short.train_batch(seed=0, step=4, batch_size=8)["tokens"], b["tokens"])


def test_eval_batches_and_tokens_per_byte(src):
    batches = list(src.eval_batches(batch_size=4, max_batches=2))
    assert [b["tokens"].shape[0] for b in batches] == [4, 4]
    rows = src._eval_rows(4, 2)
    nbytes = sum(src._val_bytes[j] for j in rows)
    assert src.eval_tokens_per_byte(batch_size=4, max_batches=2) == pytest.approx(8 * src.target_len / nbytes)
    with pytest.raises(UserError, match="train.seq_len=100 must equal"):
        src.check(100)


def test_udiff_format_targets_the_hunks(sandbox_cache):
    task = EditsTask(source=SOURCE, format="udiff", tiers=("micro",), prompt_len=400, target_len=500)
    s = task.batch_source(ByteTokenizer(), sandbox_cache, progress=False)
    item = s.data.items("val", tiers="micro")[0]
    e = s.encode(item)
    assert s.decode_target(e.tokens[s.prompt_len:]) == item.udiff == target_text(item, "udiff")
    with pytest.raises(UserError, match="data.format: unknown value 'diff'"):
        EditsTask(source=SOURCE, format="diff").batch_source(ByteTokenizer(), sandbox_cache)


def test_search_replace_format_targets_the_changed_lines(sandbox_cache):
    from sandbox.tasks.edits.formats import apply_search_replace

    task = EditsTask(source=SOURCE, format="search_replace", tiers=("micro",), prompt_len=400, target_len=300)
    s = task.batch_source(ByteTokenizer(), sandbox_cache, progress=False)
    items = s.data.items("val", tiers="micro")
    for item in items[:20]:
        e = s.encode(item)
        if e.tokens is None:
            continue
        target = s.decode_target(e.tokens[s.prompt_len:])
        assert target == target_text(item, "search_replace") and "<<<<<<< SEARCH" in target
        assert apply_search_replace(item.before, target) == item.after


# --------------------------------------------------------------------------- conditional objectives
def _model(vocab=260, seed=0):
    return Transformer(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, max_len=64,
                       rngs=nnx.Rngs(seed))


def _batch(b=3, p=5, l=16, seed=0):
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (b, l), 0, 256)
    cond = jnp.broadcast_to(jnp.arange(l) < p, (b, l))
    return tokens, cond


def test_ar_conditional_loss_scores_the_target_only():
    tok = ByteTokenizer()
    obj = AR().bind(tok)
    model = _model()
    tokens, cond = _batch()
    logits = model(obj.inputs(tokens), mask_kind="causal")
    ce = np.asarray(token_nll(logits, tokens))
    want = ce[:, 5:].mean()
    loss, _ = obj.loss(model, tokens, None, cond=cond)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(np.asarray(obj.nll(model, tokens, None, cond=cond))[0], ce[:, 5:].mean(1),
                               rtol=1e-5)
    assert float(obj.loss(model, tokens, None)[0]) == pytest.approx(ce.mean(), rel=1e-5)


def test_mdlm_never_masks_the_prompt_and_all_false_cond_is_unconditional():
    obj = MDLM().bind(ByteTokenizer())
    tokens, cond = _batch()
    z, masked = obj.corrupt(jax.random.PRNGKey(1), tokens, jnp.ones(3), cond)
    assert not np.asarray(masked & cond).any() and np.asarray(masked == ~cond).all()
    np.testing.assert_array_equal(np.asarray(z)[:, :5], np.asarray(tokens)[:, :5])
    model = _model()
    key = jax.random.PRNGKey(2)
    none = jnp.zeros_like(cond)
    for est in ("count", "time"):
        o = obj.replace(eval_estimator=est)
        np.testing.assert_allclose(np.asarray(o.nll(model, tokens, key, 4, cond=none)),
                                   np.asarray(o.nll(model, tokens, key, 4)), rtol=1e-5)


def test_mdlm_conditional_count_and_time_forms_estimate_the_same_bound():
    """Both estimators of the conditional NELBO per target token agree within their errors
    (a wrong normaliser, e.g. L instead of the target count, would separate them)."""
    obj = MDLM().bind(ByteTokenizer())
    model = _model()
    tokens, cond = _batch(b=2, p=10, l=16)
    est = {}
    for form in ("count", "time"):
        o = obj.replace(eval_estimator=form, eval_t_min=0.0)
        v = np.asarray(o.nll(model, tokens, jax.random.PRNGKey(3), 512, cond=cond), np.float64)  # [K, B]
        est[form] = (v.mean(0), v.std(0) / math.sqrt(v.shape[0]))
    diff = np.abs(est["count"][0] - est["time"][0])
    se = np.sqrt(est["count"][1] ** 2 + est["time"][1] ** 2)
    assert (diff < 4 * se + 1e-3).all(), (est, diff, se)


# --------------------------------------------------------------------------- trainer and eval=edits
EDIT_DATA = ["data=stdlib_edits", f"+data.source.modules=[{','.join(MODULES)}]",
             "data.source.test_per_kind=6", "data.source.val_per_kind=4",
             *(f"+data.source.{k}={v}" for k, v in SMALL.items())]
EDIT_RUN = [*EDIT_DATA,
            "data.prompt_len=384", "data.target_len=320", "train.seq_len=704", "model.max_len=704",
            "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2",
            "train.batch_size=4", "train.steps=3", "train.eval_every=3", "train.ckpt_every=3",
            "train.log_every=1", "train.eval_batches=1", "train.eval_draws=2", "train.progress=false",
            "data.em_items=0"]  # tests/test_edit_em_curve.py covers the exact-match eval


@pytest.fixture(scope="module")
def edit_runs(tmp_path_factory, sandbox_cache):
    from sandbox.train import run

    out = {}
    for obj in ("ar", "mdlm"):
        d = tmp_path_factory.mktemp(f"edits_{obj}")
        run(compose([*EDIT_RUN, f"objective={obj}", f"cache_dir={sandbox_cache}"]), d)
        out[obj] = d
    return out


def test_trainer_reads_conditional_batches(edit_runs):
    for obj, d in edit_runs.items():
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        meta = next(r for r in rows if r["kind"] == "meta")
        assert meta["conditional"]["format"] == "whole" and meta["unique_tokens"] is None
        ev = [r for r in rows if r["kind"] == "eval"]
        assert ev and math.isfinite(ev[-1]["val_bpb"])
        assert ev[-1]["bound"] == ("exact" if obj == "ar" else "upper")


def test_trainer_refuses_what_conditional_data_cannot_do(tmp_path, sandbox_cache):
    from sandbox.train import run

    for extra, msg in ((["objective=bd3lm"], "objective=bd3lm does not train on conditional data"),
                       (["train.seq_len=600"], "train.seq_len=600 must equal"),
                       (["train.unique_tokens=1000"], "not supported with conditional data")):
        d = tmp_path / extra[0].replace("=", "_")
        with pytest.raises(UserError, match=msg):
            run(compose([*EDIT_RUN, *extra, f"cache_dir={sandbox_cache}"]), d)
        assert not d.exists()


def _eval_cfg(run_dir, *extra):
    return compose([f"run_dir={run_dir}", "eval=edits", "max_per_kind=2", "progress=false", *extra],
                   config_name="evaluate")


def test_eval_edits_writes_summaries_latencies_and_predictions(edit_runs):
    from analysis.edits import load_edits
    from sandbox.tasks.edits.evaluate import edits

    ar = edits(_eval_cfg(edit_runs["ar"]))
    md = edits(_eval_cfg(edit_runs["mdlm"], "sampler=mdm_topk_confidence", "sampler.steps=8"))
    assert [x["format"] for x in ar] == ["whole"]
    assert [x["format"] for x in md] == ["whole", "inplace_oracle_length", "inplace_oracle_positions"]
    n_kinds = len({it.kind for it in _items(edit_runs["ar"])})
    for line in ar + md:
        assert line["n"] == 2 * n_kinds and line["split"] == "test" and line["precision"] == "greedy"
        assert set(line["by_kind"]) == {it.kind for it in _items(edit_runs["ar"])}
        assert sum(v["n"] for v in line["by_diff_size"].values()) == line["n"]
        assert line["baselines"]["oracle"]["exact_match"] == 1.0
        assert line["baselines"]["copy"]["exact_match"] == 0
        assert 0 <= line["metrics"]["exact_match"] <= 1 and line["latency_s_per_edit"] > 0
        preds = [json.loads(x) for x in open(line["predictions"])]
        assert len(preds) == line["n"]
    assert ar[0]["sampler_settings"]["stop_at_eos"] is True
    assert ar[0]["settings"] == {"precision": "greedy"}
    # diffusion fills the whole canvas: NFE of top-k is its step count; the oracle canvases need fewer
    assert md[0]["nfe_per_edit"] == 8 and md[2]["nfe_per_edit"] <= 8
    s, lat = load_edits([edit_runs["ar"], edit_runs["mdlm"]])
    assert len(s) == 4 and len(lat) == sum(x["n"] - x["n_too_long"] for x in ar + md)
    assert set(s["format"]) == {"whole", "inplace_oracle_length", "inplace_oracle_positions"}


def _items(run_dir):
    from sandbox.core.runs import load_run

    return [it for it in load_run(run_dir).data.data.items("test", tiers="micro")]


def test_oracle_canvases_reveal_the_length_and_the_unchanged_tokens(src):
    from sandbox.tasks.edits.evaluate import canvas

    tok, mask = src.tokenizer, src.tokenizer.mask_id
    item = next(it for it in src.data.items("val", kinds="swap_op", tiers="micro") if src.encode(it).fits)
    gold = tok.encode(item.after)
    assert (canvas(src, item, "canvas", mask) == mask).all()
    ol = canvas(src, item, "oracle_length", mask)
    assert (ol[:len(gold)] == mask).all() and (ol[len(gold):] == tok.eos_id).all()
    op = canvas(src, item, "oracle_positions", mask)
    known = op[:len(gold)] != mask
    assert (op[:len(gold)][known] == np.asarray(gold)[known]).all() and (op[len(gold):] == tok.eos_id).all()
    # a swapped operator changes a few bytes: nearly everything is given, the changed ones are masked
    assert 0 < (~known).sum() <= 8  # e.g. 'is not' -> 'is': the operator's bytes only


def test_eval_edits_refuses_a_language_model_run(tmp_path, sandbox_cache):
    from conftest import TINY

    from sandbox.tasks.edits.evaluate import edits
    from sandbox.train import run

    d = tmp_path / "lm"
    run(compose([*TINY, "objective=ar", f"cache_dir={sandbox_cache}", "train.steps=1"]), d)
    with pytest.raises(UserError, match="not data=stdlib_edits"):
        edits(_eval_cfg(d))


@pytest.mark.slow  # over 30 s on the 2-core CPU: `make test-all`
@pytest.mark.parametrize("obj", ["ar", "mdlm"])
def test_a_model_that_memorised_four_edits_reproduces_them_exactly(obj, tmp_path, sandbox_cache, monkeypatch):
    """End to end: train on four fixed edits until memorised, then greedy eval=edits decoding
    must reproduce each target exactly (layout, cond loss, sampler, decoding and scoring agree)."""
    from sandbox.core.runs import load_run
    from sandbox.tasks.edits.evaluate import build_sampler, run_variant
    from sandbox.tasks.edits.task import EditBatches
    from sandbox.train import run

    items = []

    def fixed(self, seed):  # the training stream cycles over four short items
        if not items:
            pool = [it for it in self.data.items("val", tiers="micro") if self.encode(it).fits]
            items.extend(sorted(pool, key=lambda it: it.id)[:4])
        return _Cycle(items)

    monkeypatch.setattr(EditBatches, "_sampler", fixed)
    d = tmp_path / obj
    run(compose([*EDIT_DATA, "data.prompt_len=160", "data.target_len=112", "train.seq_len=272",
                 "model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
                 "train.batch_size=8", "train.steps=150" if obj == "ar" else "train.steps=300",
                 "train.eval_every=1000", "train.ckpt_every=1000", "train.log_every=50",
                 "train.eval_batches=1", "train.eval_draws=1", "train.progress=false", "optim.lr=0.003",
                 "optim.warmup_steps=10", "train.ema_decay=0.9", f"objective={obj}",
                 f"cache_dir={sandbox_cache}"]), d)
    r = load_run(d)
    sampler = build_sampler(compose([f"run_dir={d}", "eval=edits"], config_name="evaluate"), r)
    out = run_variant(r, sampler, items, "canvas", seed=0, progress=False)
    assert [p["output"] for p in out["preds"]] == [it.after for it in items]
    assert all(s["exact"] == 1.0 for s in out["scores"])


class _Cycle:
    """A training stream over a few items: row r of step s asks for index (s B + r) * _TRIES
    (+ a retry count), so the item is chosen by index // _TRIES."""

    def __init__(self, items):
        self.items = items

    def __getitem__(self, i):
        from sandbox.tasks.edits.task import _TRIES

        return self.items[(i // _TRIES) % len(self.items)]
