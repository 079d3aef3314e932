"""Sample-quality statistics (sandbox.eval.metrics) against hand-computed values, and the judge.

The judge is a tiny AR model trained in-process for 40 steps on the fixture text: enough
to prefer that text to random bytes, which is all gen-perplexity needs to show.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TINY, compose

from sandbox.core.errors import UserError
from sandbox.eval.metrics import (
    _windows,
    ast_parse_rate,
    ast_parse_rate_lines,
    distinct_n,
    load_judge,
    outermost_block,
    sample_quality,
    unigram_entropy,
    until_first_eos,
)
from sandbox.train import run


# --- token statistics -------------------------------------------------------------------------
def test_unigram_entropy_of_known_distributions():
    assert unigram_entropy([np.array([0, 0, 1, 1])]) == pytest.approx(1.0)
    assert unigram_entropy([np.array([0, 1, 2, 3])]) == pytest.approx(2.0)
    assert unigram_entropy([np.array([7, 7, 7])]) == 0.0
    both = np.array([[0, 0, 1, 1], [0, 1, 2, 3]])
    assert unigram_entropy(both) == pytest.approx(1.5)            # mean over samples
    pooled = -2 * (3 / 8) * math.log2(3 / 8) - 2 * (1 / 8) * math.log2(1 / 8)
    assert unigram_entropy(both, pooled=True) == pytest.approx(pooled)


def test_distinct_n_of_a_crafted_list():
    seqs = [np.array([1, 2, 1, 2]), np.array([1, 2, 3])]
    assert distinct_n(seqs, 1) == pytest.approx(3 / 7)
    assert distinct_n(seqs, 2) == pytest.approx(3 / 5)   # (1,2) x3, (2,1), (2,3)
    assert distinct_n(seqs, 4) == 1.0                    # only (1,2,1,2)
    # n-grams never cross sample boundaries: (2, 3) would be one here
    assert distinct_n([np.array([1, 2]), np.array([3, 4])], 2) == 1.0
    assert math.isnan(distinct_n([np.array([1, 2]), np.array([3, 4])], 3))


# --- code statistics --------------------------------------------------------------------------
def test_ast_parse_rate_of_valid_and_invalid_code():
    texts = ["x = 1\n", "def f(:\n", "import os\nprint(os.sep)\n", "a = 'nul\x00'"]
    assert ast_parse_rate(texts) == 0.5


def test_outermost_block_of_a_window_cut_from_a_file():
    cut = "ue)\ndef f(x):\n    return x + 1\n\ndef g():\n    pass\nclass A(ob"
    assert outermost_block(cut) == "def f(x):\n    return x + 1\n\n"
    body = "  y\n    if x:\n        y = 2\n    z = (3,\n         4)\n    w = 5\nend"
    assert outermost_block(body) == "if x:\n    y = 2\nz = (3,\n     4)\n"  # dedented
    closing = "x\n    )\nfoo()\nbar()\ny"          # a closing bracket is not a statement start
    assert outermost_block(closing) == "foo()\n"
    assert outermost_block("a\nfoo()\nb") is None   # one outermost line: no complete block
    texts = [cut, body, closing, "a\nfoo(\nbar(\nb", "a\nfoo()\nb"]
    assert ast_parse_rate_lines(texts) == pytest.approx(3 / 5)
    assert ast_parse_rate(texts) == pytest.approx(1 / 5)  # the last text parses whole


def test_sample_quality_keys_and_inputs():
    tokens = np.array([[0, 0, 1, 1], [0, 1, 2, 3]])
    q = sample_quality(["x = 1", "y ="], tokens)
    assert set(q) >= {"gen_ppl", "unigram_entropy", "distinct_1", "distinct_2", "distinct_3",
                      "distinct_4", "ast_parse_rate", "n_samples"}
    assert q["gen_ppl"] is None and q["ast_parse_rate"] is None and q["n_samples"] == 2
    assert q["unigram_entropy"] == pytest.approx(1.5)
    ragged = sample_quality(["x = 1", "y ="], [np.array([0, 0, 1, 1]), np.array([5])], code=True)
    assert ragged["ast_parse_rate"] == 0.5 and ragged["unigram_entropy"] == pytest.approx(0.5)


def test_eos_flood_counts_early_ends_and_padding():
    eos = 9
    tokens = np.array([[1, 2, 3, 4], [1, eos, eos, eos], [eos, 1, 2, 3]])
    q = sample_quality(["", "", ""], tokens, eos_id=eos)
    assert q["eos_ended"] == pytest.approx(2 / 3)
    assert q["eos_first_frac"] == pytest.approx((1.0 + 0.25 + 0.0) / 3)
    assert q["eos_share"] == pytest.approx(4 / 12)
    assert "eos_ended" not in sample_quality([""], tokens[:1])


def test_samples_padded_after_eos_are_read_up_to_it():
    from sandbox.samplers import ARSampler, BD3LMSampler, Threshold

    cut = until_first_eos(np.array([[1, 9, 9, 9], [1, 2, 3, 4], [9, 9, 1, 1]]), eos_id=9)
    assert [c.tolist() for c in cut] == [[1, 9], [1, 2, 3, 4], [9]]
    assert Threshold(block_size=4, stop_at_eos=True).pads_after_eos and not Threshold().pads_after_eos
    assert BD3LMSampler(stop_at_eos=False).pads_after_eos and not ARSampler().pads_after_eos


def test_long_samples_are_cut_into_judge_windows():
    tokens, valid, owner = _windows([np.arange(5), np.arange(2)], window=2, pad_id=0)
    assert tokens.shape == (4, 2) and owner.tolist() == [0, 0, 0, 1]
    assert valid.sum(axis=1).tolist() == [2, 2, 1, 2]
    assert tokens[valid].tolist() == [0, 1, 2, 3, 4, 0, 1]


# --- the judge --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def judge_run(tmp_path_factory, sandbox_cache):
    d = tmp_path_factory.mktemp("judge") / "ar"
    cfg = compose([*TINY, "objective=ar", f"cache_dir={sandbox_cache}", "train.steps=40",
                   "train.eval_every=40", "train.ckpt_every=40", "train.log_every=10"])
    run(cfg, d, [])
    return d


def test_gen_perplexity_prefers_the_judges_own_text_to_random_bytes(judge_run):
    from sandbox.core.runs import load_run

    judge = load_judge(judge_run, batch_size=4)
    assert judge.window == 32 and judge.objective.name == "ar"
    text = np.asarray(load_run(judge_run).data.splits["train"][:320], np.int32).reshape(5, 64)
    noise = np.random.default_rng(0).integers(0, 256, size=(5, 64))
    ppl_text, ppl_noise = judge.perplexity(text), judge.perplexity(noise)
    assert math.isfinite(ppl_text) and math.isfinite(ppl_noise)
    assert ppl_text < ppl_noise
    q = sample_quality(["" for _ in text], text, judge=judge)
    assert q["gen_ppl"] == pytest.approx(ppl_text, rel=1e-5)
    # standard error over samples: positive for different samples, zero for copies of one
    ppl, se = judge.perplexity(text, stderr=True)
    assert ppl == pytest.approx(ppl_text, rel=1e-6) and 0 < se < ppl
    assert q["gen_ppl_stderr"] == pytest.approx(se)
    assert judge.perplexity(np.tile(text[:1], (4, 1)), stderr=True)[1] == pytest.approx(0.0, abs=1e-6)


def test_a_judge_must_be_an_ar_run(tmp_path):
    (tmp_path / "config.yaml").write_text("objective:\n  _target_: sandbox.objectives.MDLM\n  name: mdlm\n")
    with pytest.raises(UserError, match="objective=mdlm"):
        load_judge(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        load_judge(tmp_path / "missing")
