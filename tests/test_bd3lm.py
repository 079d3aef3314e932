"""Block diffusion (BD3LM): the mask, the two limits (block 1 = the network's AR NLL, block L =
MDLM), FLOPs, bad settings, and that it trains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sandbox.core import flops
from sandbox.core.errors import UserError
from sandbox.data import ByteTokenizer
from sandbox.models.attention import BlockDiffusionMask, attend
from sandbox.models.transformer import Transformer
from sandbox.objectives import BD3LM, MDLM
from sandbox.objectives.base import token_nll

TOK = ByteTokenizer()


def _model(**kw):
    return Transformer(vocab_size=TOK.vocab_size, d_model=32, n_layers=2, n_heads=2, max_len=64,
                       attention="chunked", attn_chunk=8, rngs=nnx.Rngs(0), **kw)


def _tokens(b=2, l=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, l)), jnp.int32)


def test_mask_matches_the_hand_written_pattern():
    # n = 4 tokens, blocks of 2: rows/cols are [z0 z1 z2 z3 | x0 x1 x2 x3]
    m = np.asarray(BlockDiffusionMask(2).array(8, 8)).astype(int)
    want = np.array([
        [1, 1, 0, 0, 0, 0, 0, 0],   # z0: own block only
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],   # z2: own block + clean block 0
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],   # x0: clean blocks <= 0
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],   # x2: clean blocks <= 1, never a noised token
        [0, 0, 0, 0, 1, 1, 1, 1],
    ])
    np.testing.assert_array_equal(m, want)


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_attention_with_the_block_mask_matches_a_dense_reference(impl):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 12, 4, 8)), jnp.float32) for _ in range(3))
    k, v = k[:, :, :2], v[:, :, :2]                     # grouped-query: 2 kv heads
    spec = BlockDiffusionMask(3)
    out = attend(q, k, v, spec, impl, chunk=4)
    kk, vv = np.repeat(np.asarray(k), 2, axis=2), np.repeat(np.asarray(v), 2, axis=2)
    s = np.einsum("blhd,bshd->bhls", np.asarray(q), kk) / np.sqrt(8)
    s = np.where(np.asarray(spec.array(12, 12))[None, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out), np.einsum("bhls,bshd->blhd", p, vv), atol=1e-5)


@pytest.mark.slow  # ~9 s: an identity of the two losses, checked in the slow set
def test_block_size_equal_to_the_length_is_mdlm():
    model, x, key = _model(), _tokens(), jax.random.PRNGKey(3)
    bd, md = BD3LM(block_size=16).bind(TOK), MDLM().bind(TOK)
    np.testing.assert_allclose(np.asarray(bd.nll(model, x, key, draws=4)),
                               np.asarray(md.nll(model, x, key, draws=4)), rtol=1e-5)
    np.testing.assert_allclose(float(bd.loss(model, x, key)[0]), float(md.loss(model, x, key)[0]),
                               rtol=1e-5)


@pytest.mark.slow  # over 30 s on the 2-core CPU: `make test-all`
def test_block_size_one_is_the_networks_autoregressive_nll():
    """Reference: L separate causal forwards, token i predicted at a MASK in position i from
    the clean prefix x_<i."""
    model, x = _model(), _tokens(l=8)
    bd = BD3LM(block_size=1).bind(TOK)
    got = np.asarray(bd.nll(model, x, jax.random.PRNGKey(0), draws=3))      # [3, B]
    ref = []
    for i in range(8):
        inp = jnp.concatenate([x[:, :i], jnp.full((2, 1), TOK.mask_id, jnp.int32)], axis=1)
        logits = model(inp, mask_kind="causal")[:, -1].at[..., TOK.mask_id].set(-jnp.inf)
        ref.append(token_nll(logits, x[:, i]))
    ref = np.asarray(jnp.stack(ref, 1).mean(1))
    np.testing.assert_allclose(got, np.broadcast_to(ref, got.shape), rtol=1e-5)
    # the bound depends on the blocks: block 8 (one MDLM-like block) gives other numbers
    other = np.asarray(BD3LM(block_size=8).bind(TOK).nll(model, x, jax.random.PRNGKey(0), draws=3))
    assert np.abs(other - got).max() > 1e-3


def test_training_loss_uses_the_clean_prefix_and_the_window():
    """t clipped to ~0.5 masks each token with probability 1/2 (weight 2); noised blocks read
    only the clean blocks before them."""
    model = _model()
    bd = BD3LM(block_size=4, t_min=0.5 - 1e-6, t_max=0.5).bind(TOK)
    x = _tokens(b=64, l=8)
    loss, _ = bd.loss(model, x, jax.random.PRNGKey(0))
    z = jnp.where(jax.random.uniform(jax.random.split(jax.random.PRNGKey(0))[1], x.shape) < 0.5,
                  TOK.mask_id, x)
    ce = token_nll(bd.logits(model, z, x), x)
    want = jnp.mean(jnp.where(z == TOK.mask_id, 2.0 * ce, 0.0))
    assert float(loss) == pytest.approx(float(want), rel=1e-4)
    # over blocks: noised block 1 reads clean block 0; noised block 0 reads no clean token
    x2 = x.at[:, :4].set((x[:, :4] + 1) % 256)
    a, b = (np.asarray(bd.logits(model, z, y))[..., :256] for y in (x, x2))
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-5)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-4


def test_flops_count_the_doubled_input():
    model = _model()
    base = flops.train_flops_per_token(model, 16, MDLM())
    bd = flops.train_flops_per_token(model, 16, BD3LM(block_size=4))
    n = 6 * flops.matmul_params(model)
    attn = 12 * 2 * 16 * 32
    assert base == n + attn
    assert bd == 2 * n + 4 * attn


@pytest.mark.parametrize("kw,field", [({"block_size": 0}, "objective.block_size"),
                                      ({"t_min": 0.5, "t_max": 0.4}, "objective.t_min")])
def test_bad_settings_are_one_line_errors(kw, field):
    with pytest.raises(UserError, match=field):
        BD3LM(**kw)


def test_a_block_size_that_does_not_divide_the_window_is_refused():
    with pytest.raises(UserError, match="objective.block_size"):
        BD3LM(block_size=5).bind(TOK).loss(_model(), _tokens(), jax.random.PRNGKey(0))


def test_block_decoding_with_the_exact_cache_matches_the_training_forward():
    """decode_block on each noised block, then commit the clean block's keys/values: the
    logits equal the one-pass [z_t ; x] forward's noised half (the sampler's exact cache)."""
    model, x = _model(n_kv_heads=1), _tokens(l=12)
    bd = BD3LM(block_size=4).bind(TOK)
    z = jnp.where(jax.random.uniform(jax.random.PRNGKey(1), x.shape) < 0.5, TOK.mask_id, x)
    want = np.asarray(bd.logits(model, z, x))[..., :256]
    cache, got = model.init_cache(2, 12), []
    for s in range(0, 12, 4):
        logits, _ = model.decode_block(z[:, s:s + 4], cache, s)
        got.append(np.asarray(logits)[..., :256])
        _, kv = model.decode_block(x[:, s:s + 4], cache, s)
        cache = model.commit(cache, kv, s)
    np.testing.assert_allclose(np.concatenate(got, 1), want, atol=1e-4)


# ----------------------------------------------------------------------------- the sampler
from sandbox.samplers import BD3LMSampler, FirstHitting, Threshold, TopKConfidence  # noqa: E402
from sandbox.samplers.base import compile_sampler  # noqa: E402
from sandbox.samplers.mdm import Ancestral  # noqa: E402


class _FullForward:
    """The decode protocol built from the one-pass training forward: the 'cache' is the
    clean token canvas, and a block's logits come from model([z ; x], BlockDiffusionMask).
    A reference for the sampler's use of decode_block / commit with real keys/values."""

    def __init__(self, model, bs):
        self.model, self.bs, self.vocab_size = model, bs, model.vocab_size

    def init_cache(self, b, total):
        return jnp.zeros((b, total), jnp.int32)

    def decode_block(self, tokens, cache, start):
        b, n = cache.shape
        z = jax.lax.dynamic_update_slice_in_dim(cache, tokens, start, axis=1)
        pos = jnp.broadcast_to(jnp.concatenate([jnp.arange(n), jnp.arange(n)]), (b, 2 * n))
        out = self.model(jnp.concatenate([z, cache], 1), mask_kind=BlockDiffusionMask(self.bs),
                         positions=pos)
        return jax.lax.dynamic_slice_in_dim(out, start, tokens.shape[1], axis=1), tokens

    def commit(self, cache, kv, start):
        return jax.lax.dynamic_update_slice_in_dim(cache, kv, start, axis=1)


_SLOW = pytest.mark.slow  # one compile per case: two of the four inner samplers run with -m slow


@pytest.mark.parametrize("inner", [Ancestral(steps=4), pytest.param(TopKConfidence(steps=2), marks=_SLOW),
                                   Threshold(tau=0.5), pytest.param(FirstHitting(), marks=_SLOW)],
                         ids=lambda s: s.name)
def test_sampler_with_the_kv_cache_matches_the_training_forward(inner):
    model = _model()
    s = BD3LMSampler(block_size=4, inner=inner, stop_at_eos=False).bind(TOK)
    s.check(family="bd3lm", length=12, prompt_len=2)
    prompt = jnp.array([[65, 66], [67, 68]], jnp.int32)
    key = jax.random.PRNGKey(7)
    got, nfe = jax.jit(lambda k: s.generate(model, k, prompt, 12))(key)
    ref, nfe_ref = jax.jit(lambda k: s.generate(_FullForward(model, 4), k, prompt, 12))(key)
    got = np.asarray(got)
    assert (got[:, :2] == np.asarray(prompt)).all()
    assert not (got == TOK.mask_id).any()
    assert np.mean(got == np.asarray(ref)) > 0.95
    assert int(nfe) == int(nfe_ref) >= 3 + 3   # at least one call per block plus 3 commits


def test_sampler_stops_after_the_block_where_every_sequence_ended():
    class EOSModel(_FullForward):
        def decode_block(self, tokens, cache, start):
            logits = jnp.zeros((*tokens.shape, self.vocab_size)).at[..., TOK.eos_id].set(30.0)
            return logits, tokens

    s = BD3LMSampler(block_size=4, inner=Ancestral(steps=2)).bind(TOK)
    out, nfe = s.generate(EOSModel(_model(), 4), jax.random.PRNGKey(0), jnp.zeros((2, 0), jnp.int32), 16)
    assert (np.asarray(out) == TOK.eos_id).all()              # never-generated blocks: EOS, no mask
    assert int(nfe) <= 2 + 1                                    # one block only
    s2 = s.replace(stop_at_eos=False)
    _, nfe2 = s2.generate(EOSModel(_model(), 4), jax.random.PRNGKey(0), jnp.zeros((2, 0), jnp.int32), 16)
    assert int(nfe2) > int(nfe)


def test_compiled_sampler_on_a_real_backbone_and_default_block_size():
    g, params = nnx.split(_model(), nnx.Param)
    s = BD3LMSampler().bind(TOK).for_objective(BD3LM(block_size=8))
    assert s.block_size == 8 and s.inner.steps == 8
    out, nfe = compile_sampler(s, g, 24)(params, jax.random.PRNGKey(0), jnp.zeros((3, 0), jnp.int32))
    assert out.shape == (3, 24) and not (np.asarray(out) == TOK.mask_id).any() and int(nfe) > 0


@pytest.mark.parametrize("s,kw,words", [
    (BD3LMSampler(), {"family": "mdm", "objective": "mdlm"}, "objective=mdlm"),
    (BD3LMSampler(block_size=40), {}, "sampler.block_size"),
    (BD3LMSampler(block_size=4, inner=Ancestral(steps=8)), {}, "sampler.inner.steps"),
    (BD3LMSampler(inner=Ancestral(steps=4, block_size=2)), {}, "sampler.inner.block_size"),
    (BD3LMSampler(inner=Threshold(tau=1.5)), {}, "sampler.tau"),
])
def test_sampler_bad_settings_are_one_line_errors(s, kw, words):
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        s.bind(TOK).check(**{"family": "bd3lm", "length": 32, "prompt_len": 0, **kw})
