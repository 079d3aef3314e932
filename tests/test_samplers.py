"""Samplers: exact categorical sampling, prompt/NFE contracts, KV cache, bad settings."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sandbox.samplers.ar as ar_mod
import sandbox.samplers.mdm as mdm_mod
from sandbox.core.errors import UserError
from sandbox.models.transformer import Transformer
from sandbox.samplers import (
    Ancestral,
    ARSampler,
    FirstHitting,
    ReMDM,
    Threshold,
    TopKConfidence,
    compile_sampler,
)
from sandbox.samplers.categorical import filter_logits, sample


class Tok:
    vocab_size, bos_id, mask_id, eos_id, pad_id = 12, 11, 10, 9, 8


# --- exact categorical sampling ---------------------------------------------------------------
# A long-tailed distribution: one head token and four bands of 1024 tail tokens whose log
# probabilities sit 12-17.5 nats below the head. float32 Gumbel noise stops at g ~ 15.9, so
# the far bands are (nearly) never drawn by the truncating form; the exact form must draw
# every band at its true rate.
BAND = 1024
GAPS = (12.0, 14.0, 16.5, 17.5)
N_SAMPLES = 100_000
CHI2_CRIT_P001 = {3: 16.27, 4: 18.47}


def _tail_logits():
    logits = np.zeros(1 + BAND * len(GAPS), np.float32)
    for i, g in enumerate(GAPS):
        logits[1 + i * BAND: 1 + (i + 1) * BAND] = -g
    p = np.exp(logits.astype(np.float64))
    p /= p.sum()
    probs = [p[0]] + [p[1 + i * BAND: 1 + (i + 1) * BAND].sum() for i in range(len(GAPS))]
    return jnp.asarray(logits), np.array(probs)


def _band_counts(precision: str, seed: int = 0):
    logits, probs = _tail_logits()
    draw = jax.jit(lambda k: sample(k, jnp.broadcast_to(logits, (5000, logits.shape[0])), precision))
    out = np.concatenate([np.asarray(draw(jax.random.PRNGKey(seed * 1000 + i)))
                          for i in range(N_SAMPLES // 5000)])
    band = np.where(out == 0, 0, 1 + (out - 1) // BAND)
    return np.bincount(band, minlength=len(GAPS) + 1), probs * len(out)


def _tail_chi2(obs, exp):
    """Chi-square over the tail bands (the head is their complement); the two far bands
    are merged so every expected count is >= 5."""
    o = np.array([obs[1], obs[2], obs[3] + obs[4]], float)
    e = np.array([exp[1], exp[2], exp[3] + exp[4]])
    assert e.min() >= 5
    return float(((o - e) ** 2 / e).sum()), len(o)


@pytest.fixture(scope="module")
def exact_counts():
    return _band_counts("exact")


def test_exact_sampling_passes_a_chi_square_test_on_the_tail(exact_counts):
    obs, exp = exact_counts
    chi2, dof = _tail_chi2(obs, exp)
    assert chi2 < CHI2_CRIT_P001[dof], (obs, exp.round(1), chi2)
    assert obs[4] > 0  # the band 17.5 nats down is reached at all


@pytest.mark.slow  # the control of the test above (9 s): out of the default suite's 10-minute budget
def test_the_same_test_fails_for_the_float32_truncating_form(exact_counts):
    obs, exp = _band_counts("fp32_truncating")
    chi2, dof = _tail_chi2(obs, exp)
    assert chi2 > CHI2_CRIT_P001[dof], (obs, exp.round(1), chi2)
    assert obs[3] + obs[4] < exact_counts[0][3] + exact_counts[0][4]  # the far tail is cut


def test_filters_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    top1 = jax.vmap(lambda k: sample(k, filter_logits(logits, top_k=1)))(keys)
    assert set(np.unique(top1)) == {0}
    nucleus = jax.vmap(lambda k: sample(k, filter_logits(logits, top_p=0.7)))(keys)
    assert set(np.unique(nucleus)) == {0, 1}  # smallest set with mass >= 0.7
    frac0 = float(np.mean(nucleus == 0))
    assert abs(frac0 - 0.5 / 0.8) < 0.05


# --- every sampler draws through the shared categorical path ---------------------------------
SAMPLERS = [ARSampler(), ARSampler(use_cache=False), Ancestral(steps=8), FirstHitting(),
            TopKConfidence(steps=8), Threshold(tau=0.9)]


def _model(vocab=12, **kw):
    return Transformer(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, rngs=nnx.Rngs(0), **kw)


@pytest.mark.parametrize("precision", ["exact", "fp32_truncating"])
@pytest.mark.parametrize("s", SAMPLERS, ids=lambda s: f"{s.name}-{getattr(s, 'use_cache', '')}")
def test_each_sampler_uses_the_shared_categorical_with_its_precision(monkeypatch, s, precision):
    seen = []

    def spy(key, logits, prec="exact"):
        seen.append(prec)
        return sample(key, logits, prec)

    monkeypatch.setattr(ar_mod, "sample", spy)
    monkeypatch.setattr(mdm_mod, "sample", spy)
    s = s.replace(precision=precision).bind(Tok)
    model = _model()
    # tracing is enough: the spy runs when the sampler's graph is built (no XLA compile)
    toks, _ = jax.eval_shape(lambda: s.generate(model, jax.random.PRNGKey(0),
                                                jnp.zeros((2, 3), jnp.int32), 16))
    assert seen and set(seen) == {precision}
    assert toks.shape == (2, 16)


# --- output contracts ----------------------------------------------------------------------------
_SLOW = pytest.mark.slow  # one compile per case (~5 s on 2 cores): the one-block twins run with -m slow
MDM = [pytest.param(Ancestral(steps=13), marks=_SLOW), Ancestral(steps=8, block_size=5, grid="cosine"),
       pytest.param(FirstHitting(), marks=_SLOW), FirstHitting(block_size=4),
       pytest.param(TopKConfidence(steps=13), marks=_SLOW), TopKConfidence(steps=6, block_size=5),
       pytest.param(Threshold(tau=0.8), marks=_SLOW), Threshold(tau=0.95, block_size=7),
       ReMDM(steps=8, eta=0.5, t_on=1.0)]


@pytest.fixture(scope="module")
def tiny():
    g, p = nnx.split(_model(), nnx.Param)
    return g, p


@pytest.mark.parametrize("s", MDM, ids=lambda s: f"{s.name}-b{s.block_size}")
def test_diffusion_samplers_keep_the_prompt_and_leave_no_mask(tiny, s):
    g, p = tiny
    s = s.bind(Tok)
    length, prompt = 16, jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
    s.check(family="mdm", length=length, prompt_len=3)
    toks, nfe = compile_sampler(s, g, length)(p, jax.random.PRNGKey(1), prompt)
    toks = np.asarray(toks)
    assert (toks[:, :3] == np.asarray(prompt)).all()
    assert not (toks == Tok.mask_id).any()
    gen, n_blocks = 13, s.n_blocks(13)
    nfe = int(nfe)
    if isinstance(s, TopKConfidence):
        assert nfe == (s.steps // n_blocks) * n_blocks
    elif isinstance(s, Ancestral):
        assert 1 <= nfe <= (s.steps // n_blocks) * n_blocks
    elif isinstance(s, FirstHitting):
        assert nfe == gen
    else:
        assert n_blocks <= nfe <= gen


def test_unconditional_generation(tiny):
    g, p = tiny
    for s in (ARSampler().bind(Tok), Ancestral(steps=4).bind(Tok)):
        toks, nfe = compile_sampler(s, g, 10)(p, jax.random.PRNGKey(0), jnp.zeros((3, 0), jnp.int32))
        assert toks.shape == (3, 10) and int(nfe) > 0


def test_threshold_with_tiny_tau_fills_each_block_in_one_call(tiny):
    g, p = tiny
    s = Threshold(tau=1e-9, block_size=4).bind(Tok)
    _, nfe = compile_sampler(s, g, 16)(p, jax.random.PRNGKey(0), jnp.zeros((2, 0), jnp.int32))
    assert int(nfe) == 4  # 16 tokens, 4 blocks, everything above tau at once


def test_ancestral_skips_the_model_when_nothing_changes(tiny):
    g, p = tiny
    # 64 steps for 4 tokens: most steps reveal nothing, so most steps reuse the logits.
    s = Ancestral(steps=4).bind(Tok)
    _, nfe_few = compile_sampler(s, g, 68)(p, jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32))
    s = Ancestral(steps=64).bind(Tok)
    _, nfe = compile_sampler(s, g, 128)(p, jax.random.PRNGKey(0), jnp.zeros((1, 124), jnp.int32))
    # one call before the first step, then at most one after each step that revealed a token
    assert int(nfe_few) <= 5 and int(nfe) <= 5


class _Table:
    """Stub backbone whose logits depend only on the position: [L, V] table."""

    def __init__(self, table):
        self.table = table
        self.vocab_size = table.shape[-1]

    def __call__(self, tokens, mask_kind="bidirectional", **kw):
        return jnp.broadcast_to(self.table, tokens.shape + self.table.shape[-1:])


@pytest.mark.parametrize("s", [Ancestral(steps=3), FirstHitting(), Ancestral(steps=4, block_size=2),
                               ReMDM(steps=6, eta=0.5, t_on=1.0)],
                         ids=["ancestral", "first_hitting", "ancestral-blocks", "remask"])
def test_context_free_model_gives_its_marginals(s):
    """With logits independent of the canvas, ancestral, first-hitting and remasking sampling
    must draw each position from exactly the model's distribution (the SUBS mask logit aside):
    ReMDM's remasking keeps MDLM's marginals (Wang et al. 2025, eq. 6)."""
    rng = np.random.default_rng(0)
    n_real = 8  # ids 8..11 are PAD, EOS, MASK, BOS
    table = np.log(rng.dirichlet(np.ones(n_real), size=4))
    table = np.concatenate([table, np.full((4, 4), -np.inf)], axis=1).astype(np.float32)
    table[:, Tok.mask_id] = 5.0  # must be suppressed by the sampler (SUBS)
    table[:, Tok.pad_id] = 3.0   # never in the training data: suppressed too
    model = _Table(jnp.asarray(table))
    s = s.bind(Tok)
    run = jax.jit(lambda k: s.generate(model, k, jnp.zeros((4000, 0), jnp.int32), 4)[0])
    toks = np.concatenate([np.asarray(run(jax.random.PRNGKey(i))) for i in range(5)])
    probs = np.exp(table[:, :n_real].astype(np.float64))
    for pos in range(4):
        counts = np.bincount(toks[:, pos], minlength=Tok.vocab_size)
        assert counts[n_real:].sum() == 0
        exp = probs[pos] / probs[pos].sum() * len(toks)
        chi2 = float(((counts[:n_real] - exp) ** 2 / exp).sum())
        assert chi2 < 24.3, (pos, chi2)  # p = 0.001 at 7 degrees of freedom


def test_threshold_guard_keeps_the_frequent_token_at_its_rate():
    """The threshold collapse in miniature: at every position token 0 has probability 0.5 and
    seven others share the rest, no token reaches tau. Revealing the position whose drawn
    token is most probable picks a drawn 0 whenever one exists (~15 of 16 reveals); the
    uniform pick (``order=random``, what ``auto`` means for drawn tokens) keeps the 0.5."""
    row = np.full(Tok.vocab_size, -np.inf, np.float32)
    row[0], row[1:8] = np.log(0.5), np.log(0.5 / 7)
    model = _Table(jnp.asarray(np.tile(row, (16, 1))))
    prompt = jnp.zeros((64, 0), jnp.int32)
    share = {}
    for order in ("confidence", "random", "auto"):
        s = Threshold(tau=0.9, order=order).bind(Tok)
        s.check(family="mdm", length=16, prompt_len=0)
        toks, nfe = jax.jit(lambda k, s=s: s.generate(model, k, prompt, 16))(jax.random.PRNGKey(3))
        assert int(nfe) == 16 and not (np.asarray(toks) == Tok.mask_id).any()
        share[order] = float(np.mean(np.asarray(toks) == 0))
    assert share["confidence"] > 0.85, share
    assert abs(share["random"] - 0.5) < 0.06 and share["auto"] == share["random"], share
    assert Threshold(order="auto", precision="greedy").pick == "confidence"
    assert "order" not in Threshold(precision="greedy").settings()  # earlier labels unchanged
    with pytest.raises(UserError, match="sampler.order"):
        Threshold(order="mode").check(family="mdm", length=16, prompt_len=0)


# --- KV cache ------------------------------------------------------------------------------------
def test_kv_cache_decode_matches_the_full_causal_forward():
    m = _model(vocab=50, n_kv_heads=1)
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 12)), jnp.int32)
    full = m(toks, mask_kind="causal")
    cache = m.init_cache(2, 16)
    outs = []
    logits, cache = m.decode(toks[:, :5], cache, 0)
    outs.append(logits)
    for i in range(5, 12):
        logits, cache = m.decode(toks[:, i:i + 1], cache, i)
        outs.append(logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), atol=1e-4)
    bidir = m(toks, mask_kind="bidirectional")
    assert float(jnp.abs(bidir - full).max()) > 1e-3  # the comparison can fail


def test_chunked_decode_steps_match_the_full_causal_forward():
    """Prefill 5 tokens, then decode 11 one at a time in chunks of 4 (read-only cache, a
    4-slot buffer, commit per chunk; the last chunk is partial)."""
    m = _model(vocab=50, n_kv_heads=1)
    toks = jnp.asarray(np.random.default_rng(1).integers(0, 50, (2, 16)), jnp.int32)
    full = np.asarray(m(toks, mask_kind="causal"))
    cache = m.init_cache(2, 13)
    logits, cache = m.decode(toks[:, :5], cache, 0)
    outs = [logits]
    for start in range(5, 16, 4):
        buf = m.init_cache(2, 4)
        for i in range(min(4, 16 - start)):
            logits, buf = m.decode_step(toks[:, start + i:start + i + 1], cache, buf, start, i)
            outs.append(logits)
        if start + 4 <= 13:
            cache = m.commit(cache, buf, start)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), full, atol=1e-4)


def test_cache_segments_cover_every_chunk_start():
    from sandbox.samplers.ar import _segments
    for p1, c, n in [(1, 16, 31), (1, 16, 3), (100, 16, 5), (7, 4, 40), (1, 1, 200)]:
        segs = _segments(p1, c, n)
        assert segs[0][0] == 0 and segs[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))
        for _j0, j1, view in segs:
            assert p1 + (j1 - 1) * c <= view <= p1 + n * c  # reads every written slot
    assert [v for *_, v in _segments(1, 16, 31)] == [64, 128, 256, 497]


def test_ar_sampler_chunks_and_prefix_views_agree_with_no_cache(tiny):
    g, p = tiny
    prompt = jnp.array([[1, 2, 3], [3, 4, 5]], jnp.int32)
    a, _ = compile_sampler(ARSampler(chunk=4).bind(Tok), g, 90)(p, jax.random.PRNGKey(5), prompt)
    b, _ = compile_sampler(ARSampler(use_cache=False).bind(Tok), g, 90)(p, jax.random.PRNGKey(5), prompt)
    assert np.mean(np.asarray(a) == np.asarray(b)) > 0.95


def test_ar_sampler_with_and_without_cache_agree(tiny):
    g, p = tiny
    prompt = jnp.array([[1, 2], [3, 4]], jnp.int32)
    a, _ = compile_sampler(ARSampler().bind(Tok), g, 12)(p, jax.random.PRNGKey(3), prompt)
    b, _ = compile_sampler(ARSampler(use_cache=False).bind(Tok), g, 12)(p, jax.random.PRNGKey(3), prompt)
    assert np.mean(np.asarray(a) == np.asarray(b)) > 0.95
    assert (np.asarray(a)[:, :2] == np.asarray(prompt)).all()


# --- bad settings: one clear line ----------------------------------------------------------------
@pytest.mark.parametrize("s,kw,words", [
    (Ancestral(steps=0), {}, "sampler.steps"),
    (Ancestral(steps=20), {}, "sampler.steps"),
    (TopKConfidence(steps=17), {}, "sampler.steps"),
    (Threshold(tau=0.0), {}, "sampler.tau"),
    (Threshold(tau=1.5), {}, "sampler.tau"),
    (Ancestral(steps=4), {"prompt_len": 16}, "prompt"),
    (ARSampler(), {"prompt_len": 20}, "prompt"),
    (Ancestral(steps=4), {"family": "ar", "objective": "ar"}, "objective=ar"),
    (ARSampler(), {"family": "mdm", "objective": "mdlm"}, "objective=mdlm"),
    (Ancestral(steps=4, grid="log"), {}, "sampler.grid"),
    (Ancestral(steps=4, precision="fp16"), {}, "sampler.precision"),
    (Ancestral(steps=2, block_size=2), {}, "sampler.steps"),
    (ARSampler(top_p=0.0), {}, "sampler.top_p"),
    (ARSampler(chunk=0), {}, "sampler.chunk"),
])
def test_bad_settings_raise_one_line(s, kw, words):
    args = {"family": s.family, "length": 16, "prompt_len": 0, **kw}
    with pytest.raises(UserError) as e:
        s.check(**args)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_threshold_tau_one_is_allowed():
    Threshold(tau=1.0).check(family="mdm", length=16, prompt_len=0)
    assert math.isclose(Threshold().tau, 0.9)


# --- greedy decoding -----------------------------------------------------------------------------
def test_greedy_precision_is_the_argmax_and_ignores_the_key():
    from sandbox.samplers.categorical import check_precision
    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 40))
    a = sample(jax.random.PRNGKey(1), logits, "greedy")
    b = sample(jax.random.PRNGKey(2), logits, "greedy")
    assert a.dtype == jnp.int32 and (np.asarray(a) == np.asarray(jnp.argmax(logits, -1))).all()
    assert (np.asarray(a) == np.asarray(b)).all()
    assert (np.asarray(sample(jax.random.PRNGKey(1), logits, "exact")) != np.asarray(a)).any()
    assert check_precision("greedy") == "greedy"
    ARSampler(precision="greedy").check(family="ar", length=16, prompt_len=0)


# --- masked-diffusion infill from a partly known canvas ---------------------------------------
INFILL = [Ancestral(steps=8), pytest.param(FirstHitting(block_size=4), marks=_SLOW),
          pytest.param(TopKConfidence(steps=6, block_size=5), marks=_SLOW),
          Threshold(tau=0.9, block_size=7), ReMDM(steps=8, eta=1.0, t_on=1.0, block_size=5)]
INFILL_PROMPT = jnp.array([[1, 2, 3], [4, 5, 6], [7, 1, 2]], jnp.int32)
INFILL_LEN = 16


@pytest.fixture(scope="module")
def infill_fns(tiny):
    """One jitted infill(params, key, z) per sampler, shared by the infill tests."""
    g, _ = tiny
    fns = {}

    def get(s):
        if s not in fns:
            fns[s] = jax.jit(lambda params, key, z: s.infill(nnx.merge(g, params), key, z, 3))
        return fns[s]

    return get


def _blocks_of(s, gen):
    bs = s.block_size or gen
    return [(3 + i * bs, min(3 + (i + 1) * bs, 3 + gen)) for i in range(s.n_blocks(gen))]


@pytest.mark.parametrize("s", INFILL, ids=lambda s: f"{s.name}-b{s.block_size}")
def test_infill_keeps_known_tokens_and_fills_every_mask(tiny, infill_fns, s):
    """Row 0 about half known, row 1 fully known (a no-op row), row 2 a fifth known."""
    _, p = tiny
    s = s.bind(Tok)
    rng = np.random.default_rng(0)
    gen = INFILL_LEN - 3
    known = np.stack([rng.random(gen) < 0.5, np.ones(gen, bool), rng.random(gen) < 0.2])
    region = np.where(known, rng.integers(0, 8, (3, gen)), Tok.mask_id)
    z = np.concatenate([np.asarray(INFILL_PROMPT), region], 1).astype(np.int32)
    toks, nfe = infill_fns(s)(p, jax.random.PRNGKey(5), jnp.asarray(z))
    toks, nfe = np.asarray(toks), int(nfe)
    keep = z != Tok.mask_id
    assert (toks[keep] == z[keep]).all()
    assert not (toks == Tok.mask_id).any()
    # calls a block needs at most: its largest per-row count of masked positions
    per_block = [int((z[:, a:b] == Tok.mask_id).sum(1).max()) for a, b in _blocks_of(s, gen)]
    if isinstance(s, Threshold):
        assert 1 <= nfe <= sum(per_block) <= int((z == Tok.mask_id).sum())
    elif isinstance(s, FirstHitting):
        assert nfe == sum(per_block)  # one reveal per row per call, until the fullest row is done
    else:
        assert 1 <= nfe <= (s.steps // s.n_blocks(gen)) * s.n_blocks(gen)


@pytest.mark.parametrize("s", INFILL, ids=lambda s: f"{s.name}-b{s.block_size}")
def test_infill_of_a_fully_known_canvas_is_a_no_op(tiny, infill_fns, s):
    _, p = tiny
    z = jnp.asarray(np.random.default_rng(1).integers(0, 8, (3, INFILL_LEN)), jnp.int32)
    toks, nfe = infill_fns(s.bind(Tok))(p, jax.random.PRNGKey(6), z)
    assert (np.asarray(toks) == np.asarray(z)).all()
    assert int(nfe) == 0  # no block has a masked position: no model call at all


def test_remask_without_remasking_is_the_ancestral_sampler(tiny):
    """eta = 0: ReMDM's step is MDLM's ancestral step with the same random numbers."""
    g, p = tiny
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
    for kw in ({"block_size": 4},):
        a = compile_sampler(Ancestral(steps=8, **kw).bind(Tok), g, 16)(p, jax.random.PRNGKey(2), prompt)
        r = compile_sampler(ReMDM(steps=8, eta=0.0, **kw).bind(Tok), g, 16)(p, jax.random.PRNGKey(2), prompt)
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(r[0]))


def test_remasking_changes_revealed_tokens_and_schedule_is_checked(tiny):
    g, p = tiny
    prompt = jnp.zeros((64, 0), jnp.int32)
    a = compile_sampler(ReMDM(steps=12, eta=0.0).bind(Tok), g, 12)(p, jax.random.PRNGKey(4), prompt)
    r = compile_sampler(ReMDM(steps=12, eta=1.0, t_on=1.0).bind(Tok), g, 12)(p, jax.random.PRNGKey(4), prompt)
    assert (np.asarray(a[0]) != np.asarray(r[0])).any() and not (np.asarray(r[0]) == Tok.mask_id).any()
    for f in ("eta", "t_on"):
        with pytest.raises(UserError, match=f"sampler.{f}"):
            ReMDM(steps=4, **{f: 1.5}).check(family="mdm", length=16, prompt_len=0)


class _EosTable(_Table):
    """Context-free logits where EOS is certain at position ``at`` and impossible elsewhere."""

    def __init__(self, at: int, length: int):
        table = np.zeros((length, Tok.vocab_size), np.float32)
        table[:, Tok.eos_id] = -1e4
        table[at, :] = -1e4
        table[at, Tok.eos_id] = 0.0
        super().__init__(jnp.asarray(table))


@pytest.mark.parametrize("s", [Threshold(tau=0.9, block_size=4),
                               pytest.param(Ancestral(steps=8, block_size=4), marks=_SLOW),
                               Threshold(tau=0.9, block_size=4, cache="dual")],
                         ids=["threshold", "ancestral", "dual"])
def test_stop_at_eos_skips_later_blocks_and_pads_with_eos(s):
    """EOS certain at position 5 (block 1 of 4): blocks 2 and 3 are never generated, every row
    ends in EOS from position 5 on, and the NFE is that of two blocks."""
    model = _EosTable(5, 16)
    if s.cache != "none":  # the dual cache needs decode_block: a real model, EOS forced in its logits
        model = _ForcedEos(_model(), 5)
    s = s.bind(Tok)
    prompt = jnp.zeros((3, 0), jnp.int32)
    stop = s.replace(stop_at_eos=True)
    stop.check(family="mdm", length=16, prompt_len=0)
    toks, nfe = jax.jit(lambda k: stop.generate(model, k, prompt, 16))(jax.random.PRNGKey(0))
    toks = np.asarray(toks)
    assert (toks[:, 5:] == Tok.eos_id).all() and not (toks[:, :5] == Tok.eos_id).any()
    assert not (toks == Tok.mask_id).any()
    # two blocks: <= 4 calls each (threshold, + 1 refresh with the cache) or 8 steps / 4 blocks
    per_block = 2 if isinstance(s, Ancestral) else 4 + (s.cache != "none")
    assert 2 <= int(nfe) <= 2 * per_block
    with pytest.raises(UserError, match="sampler.block_size"):
        Threshold(stop_at_eos=True).check(family="mdm", length=16, prompt_len=0)


class _ForcedEos:
    """A real backbone (decode_block and all) whose EOS logit is +1e4 at position ``at`` and
    -1e4 elsewhere, on the full forward and on decode_block."""

    def __init__(self, model, at):
        self.m, self.at = model, at
        self.vocab_size = model.vocab_size
        self.init_cache = model.init_cache

    def _force(self, logits, first):
        pos = first + jnp.arange(logits.shape[1])
        return logits.at[..., Tok.eos_id].set(jnp.where(pos == self.at, 1e4, -1e4)[None, :])

    def __call__(self, tokens, **kw):
        return self._force(self.m(tokens, **kw), 0)

    def decode_block(self, tokens, cache, start, around=False):
        logits, kv = self.m.decode_block(tokens, cache, start, around=around)
        return self._force(logits, start), kv


# --- AR early stop at EOS --------------------------------------------------------------------------
class _EosAt:
    """Backbone wrapper that adds bias[b, q] to row b's EOS logit at input position q, on
    every decoding path (full forward, prefill/decode_step with the cache, prefill/step of a
    recurrent model). Input position q predicts output position q, so a bias of +1e4 at
    (b, q) and -1e4 elsewhere puts row b's only EOS exactly at output position q."""

    def __init__(self, model, bias):
        self.m, self.bias = model, bias
        self.vocab_size, self.recurrent = model.vocab_size, model.recurrent

    def _add(self, logits, q0):
        b = jax.lax.dynamic_slice_in_dim(self.bias, q0, logits.shape[1], axis=1)
        return logits.at[..., Tok.eos_id].add(b)

    def __call__(self, tokens, **kw):
        return self._add(self.m(tokens, **kw), 0)

    def init_cache(self, b, n):
        return self.m.init_cache(b, n)

    def commit(self, cache, buf, start):
        return self.m.commit(cache, buf, start)

    def decode(self, tokens, cache, pos):
        logits, cache = self.m.decode(tokens, cache, pos)
        return self._add(logits, pos), cache

    def decode_step(self, tokens, cache, buf, start, i):
        logits, buf = self.m.decode_step(tokens, cache, buf, start, i)
        return self._add(logits, start + i), buf

    def prefill(self, tokens):
        logits, state = self.m.prefill(tokens)
        return self._add(logits, 0), state

    def step(self, tokens, state, pos):
        logits, state = self.m.step(tokens, state, pos)
        return self._add(logits, pos), state


# length 80, prompt 2: g = 78; chunk 8 -> 9 full chunks in two cache-view segments
# (64, then the whole 75-slot cache) and a 5-token remainder.
EOS_LEN, EOS_P, EOS_CHUNK = 80, 2, 8


@pytest.fixture(scope="module")
def eos_models():
    from functools import partial as _partial

    from sandbox.models.gla import GatedLinearAttention
    out = {}
    for name, m in (("attn", _model()), ("gla", _model(mixer=_partial(GatedLinearAttention, chunk=4)))):
        assert m.recurrent == (name == "gla")
        out[name] = nnx.split(m, nnx.Param)
    return out


def _eos_bias(ends):
    """EOS only at output positions ends[b] (None: never)."""
    bias = np.full((len(ends), EOS_LEN + 1), -1e4, np.float32)
    for r, e in enumerate(ends):
        if e is not None:
            bias[r, e] = 1e4
    return jnp.asarray(bias)


@pytest.mark.parametrize("precision", ["exact", "greedy"])
@pytest.mark.parametrize("path", ["cached", "recurrent", "no_cache"])
def test_ar_stop_at_eos_stops_early_and_matches_full_decoding(eos_models, path, precision):
    g_def, params = eos_models["gla" if path == "recurrent" else "attn"]
    base = ARSampler(chunk=EOS_CHUNK, use_cache=path != "no_cache", precision=precision).bind(Tok)
    stop = base.replace(stop_at_eos=True)
    stop.check(family="ar", length=EOS_LEN, prompt_len=EOS_P)

    @jax.jit
    def both(params, key, prompt, bias):
        model = _EosAt(nnx.merge(g_def, params), bias)
        return [s.generate(model, key, prompt, EOS_LEN) for s in (base, stop)]

    g = EOS_LEN - EOS_P
    prompt = jnp.array([[1, 2], [3, 4]], jnp.int32)
    cases = [(EOS_P + 5, EOS_P + 70),   # stops in the second cache segment
             (EOS_P + 12, EOS_P + 3),   # stops in the first: the second and the remainder skipped
             (EOS_P + 76, EOS_P + 2),   # last EOS in the remainder chunk
             (EOS_P, EOS_P + 1),        # EOS from the prefill in row 0
             (None, None)]              # no EOS: the full length
    for ends in cases:
        (full, nfe_full), (short, nfe) = both(params, jax.random.PRNGKey(8), prompt, _eos_bias(ends))
        full, short, nfe = np.asarray(full), np.asarray(short), int(nfe)
        assert int(nfe_full) == g and short.shape == (2, EOS_LEN)
        if ends[0] is None:
            assert (short == full).all() and nfe == g and not (full == Tok.eos_id).any()
            continue
        for r, e in enumerate(ends):
            assert full[r, e] == Tok.eos_id and not (full[r, EOS_P:e] == Tok.eos_id).any()
            assert (short[r, :e + 1] == full[r, :e + 1]).all(), (ends, r)
            assert (short[r, e + 1:] == Tok.eos_id).all(), (ends, r)
        m = max(ends) - EOS_P                    # generated index at which the last row is done
        want = min(g, 1 + EOS_CHUNK * -(-m // EOS_CHUNK)) if path == "cached" else m + 1
        assert nfe == want, (ends, nfe, want)
        assert nfe < g or max(ends) - EOS_P > 9 * EOS_CHUNK


def test_ar_stop_at_eos_needs_a_bound_tokenizer():
    with pytest.raises(UserError) as e:
        ARSampler(stop_at_eos=True).check(family="ar", length=16, prompt_len=0)
    assert "stop_at_eos" in str(e.value) and "\n" not in str(e.value)
    assert ARSampler(stop_at_eos=True).bind(Tok).eos_id == Tok.eos_id
