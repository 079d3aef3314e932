"""The exact prompt cache of conditional masked diffusion (``objective.prompt_attention=self``).

The prompt attends only to itself and the canvas to everything (``attention.PromptMask``),
so the prompt's keys/values can be computed once and every diffusion step read only the
canvas against them (``sandbox.samplers.mdm``). These tests pin that the cached path is the
uncached one: logits, whole decodes, the mask itself, training with it, and its config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compose
from flax import nnx
from omegaconf import OmegaConf

from sandbox.core.cli import instantiate
from sandbox.core.errors import UserError
from sandbox.data import ByteTokenizer
from sandbox.models.attention import PromptMask, attend
from sandbox.models.gla import GatedLinearAttention
from sandbox.models.logits import suppress
from sandbox.models.mla import MultiHeadLatentAttention
from sandbox.models.transformer import Transformer
from sandbox.objectives import MDLM
from sandbox.samplers import Ancestral, Threshold
from sandbox.samplers.mdm import prompt_kv

TOK = ByteTokenizer()
P, T = 12, 10          # prompt and canvas lengths of the small tests


def _model(**kw):
    args = dict(vocab_size=TOK.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=64,
                attention="chunked", attn_chunk=8)
    args.update(kw)
    return Transformer(**args, rngs=nnx.Rngs(0))


def _seq(b=2, seed=0, masked=0.5):
    """A conditional batch: a left-padded prompt of P tokens, a canvas of T tokens partly masked."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (b, P + T)).astype(np.int32)
    x[:, :3] = TOK.pad_id
    x[:, P - 1] = TOK.bos_id
    z = x.copy()
    z[:, P:][rng.random((b, T)) < masked] = TOK.mask_id
    cond = np.broadcast_to(np.arange(P + T) < P, (b, P + T))
    return jnp.asarray(x), jnp.asarray(z), jnp.asarray(cond)


def _split(model):
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


# -- (1) cached logits equal the uncached prompt-mask forward ------------------------------------
def _mla(cfg, rngs):
    return MultiHeadLatentAttention(cfg, rngs=rngs, kv_rank=16, rope_dim=8)


@pytest.mark.parametrize("kw", [dict(attention="chunked"), dict(attention="xla", window=5), dict(mixer=_mla)],
                         ids=["chunked", "xla-window", "mla"])
def test_cached_canvas_logits_equal_the_prompt_mask_forward(kw):
    model = _model(**kw)
    _, z, cond = _seq()
    obj = MDLM(prompt_attention="self").bind(TOK)

    @jax.jit
    def run(z):
        full = obj.logits(model, z, cond=cond)[:, P:]
        kv = prompt_kv(model, z[:, :P])
        cached = suppress(model.decode_block(z[:, P:], kv, P)[0], (TOK.mask_id,))
        return full, cached, MDLM().bind(TOK).logits(model, z)[:, P:]

    full, cached, other = (np.asarray(a)[..., :256] for a in run(z))
    np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)
    assert np.abs(other - full).max() > 1e-3    # the option matters: full attention differs


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_prompt_mask_attention_matches_a_dense_reference_per_row(impl):
    """Rows with different prompt lengths: the per-row mask reaches both kernels (GQA)."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 12, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 12, 2, 8)), jnp.float32) for _ in range(2))
    cond = jnp.asarray(np.arange(12)[None, :] < np.array([[5], [8]]))
    out = attend(q, k, v, PromptMask(cond), impl, chunk=4)
    kk, vv = np.repeat(np.asarray(k), 2, axis=2), np.repeat(np.asarray(v), 2, axis=2)
    s = np.einsum("blhd,bshd->bhls", np.asarray(q), kk) / np.sqrt(8)
    c = np.asarray(cond)
    allowed = ~c[:, :, None] | c[:, None, :]
    s = np.where(allowed[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out), np.einsum("bhls,bshd->blhd", p, vv), atol=1e-5)


# -- (2) whole decodes: cached and uncached give the same tokens ---------------------------------
MODEL = _model()
_FNS: dict = {}


def _infill(sampler, z, key=0):
    """sampler.infill from P on MODEL, one compiled function per sampler."""
    graphdef, params = _split(MODEL)
    if sampler not in _FNS:
        _FNS[sampler] = jax.jit(lambda p, k, z: sampler.infill(nnx.merge(graphdef, p), k, z, P))
    tokens, nfe = _FNS[sampler](params, jax.random.PRNGKey(key), z)
    return np.asarray(tokens), int(nfe)


@pytest.mark.parametrize("sampler", [Threshold(tau=0.5, precision="greedy"),
                                     Ancestral(steps=4, block_size=4)], ids=lambda s: s.name)
def test_cached_and_uncached_decodes_are_identical(sampler):
    """The edit evaluation's path (greedy threshold infill) and a sampled one (same keys)."""
    s = sampler.bind(TOK).for_checkpoint(MDLM(prompt_attention="self"))
    assert s.prompt_attention == "self" and s.prompt_cache
    s.check(family="mdm", length=P + T, prompt_len=P)
    x, z, _ = _seq(masked=0.7)
    z = z.at[0, P + 2].set(TOK.mask_id)              # row 0 has at least one mask
    cached, nfe_c = _infill(s, z)
    plain, nfe_u = _infill(s.replace(prompt_cache=False), z)
    np.testing.assert_array_equal(cached, plain)
    assert nfe_c == nfe_u + 1 and nfe_u > 0         # the one prompt pass
    zz = np.asarray(z)
    known = zz != TOK.mask_id
    np.testing.assert_array_equal(cached[known], zz[known])                    # prompt, known tokens kept
    assert not (cached == TOK.mask_id).any()
    if s.precision == "greedy":                      # nothing masked: no call at all (same compiled fn)
        tokens, nfe = _infill(s, x)
        np.testing.assert_array_equal(tokens, np.asarray(x))
        assert nfe == 0


SHIFTED = _model(logit_shift=True)


@pytest.mark.parametrize("shift", [False, True], ids=["own", "shifted"])
@pytest.mark.parametrize("sampler", [Threshold(tau=0.5, precision="greedy"),
                                     Ancestral(steps=4, block_size=4)], ids=lambda s: s.name)
def test_a_causal_denoisers_cached_and_uncached_decodes_are_identical(sampler, shift):
    """objective.mask_kind=causal: the prompt never reads the canvas, so its cache is exact,
    with and without model.logit_shift (the first canvas logits come from the prompt pass)."""
    model = SHIFTED if shift else MODEL
    graphdef, params = _split(model)
    s = sampler.bind(TOK).for_checkpoint(MDLM(mask_kind="causal"))
    assert s.mask_kind == "causal" and s.prompt_cache
    _, z, _ = _seq(masked=0.7)
    z = z.at[:, P].set(TOK.mask_id)                  # the first canvas position: the shifted logits' edge
    outs = []
    for v in (s, s.replace(prompt_cache=False)):
        f = jax.jit(lambda p, k, z, v=v: v.infill_cost(nnx.merge(graphdef, p), k, z, P))
        tokens, nfe, computed = f(params, jax.random.PRNGKey(3), z)
        outs.append((np.asarray(tokens), int(nfe), int(computed)))
    (cached, nfe_c, comp_c), (plain, nfe_u, comp_u) = outs
    np.testing.assert_array_equal(cached, plain)
    # the prompt pass: P positions, P - 1 with the shift (the last one leads each canvas forward)
    assert nfe_c == nfe_u + 1 and comp_c == P - shift + nfe_u * T and comp_u == nfe_u * (P + T)
    assert not (cached == TOK.mask_id).any()


def test_the_full_setting_keeps_labels_and_the_objective_default():
    s = Threshold().bind(TOK)
    assert "prompt_attention" not in s.settings() and "prompt_cache" not in s.settings()
    assert s.for_checkpoint(MDLM()).prompt_attention == "full"
    assert s.for_checkpoint(object()).prompt_attention == "full"     # objectives without the option
    on = s.for_checkpoint(MDLM(prompt_attention="self")).settings()
    assert on["prompt_attention"] == "self" and on["prompt_cache"] is True
    assert MDLM(prompt_attention="self").label == "mdlm(prompt=self)" and MDLM().label == "mdlm"


# -- (3) the prompt cannot see the canvas ------------------------------------------------------------
def test_prompt_hidden_states_do_not_depend_on_the_canvas():
    _, z, cond = _seq()
    z2 = z.at[:, P:].set(jnp.asarray(np.random.default_rng(5).integers(0, 256, (2, T)), jnp.int32))

    @jax.jit
    def hidden(z):
        return MODEL.hidden(z, mask_kind=PromptMask(cond)), MODEL.hidden(z, mask_kind="bidirectional")

    (a, fa), (b, fb) = (tuple(np.asarray(h) for h in hidden(x)) for x in (z, z2))
    np.testing.assert_array_equal(a[:, :P], b[:, :P])
    assert np.abs(a[:, P:] - b[:, P:]).max() > 1e-3      # the canvas does change
    assert np.abs(fa[:, :P] - fb[:, :P]).max() > 1e-3    # under full attention the prompt sees it


# -- (4) the loss runs and trains with the option ----------------------------------------------------
def test_loss_and_bound_train_with_prompt_attention_self():
    obj = MDLM(prompt_attention="self").bind(TOK)
    x, _, cond = _seq(b=4)
    graphdef, params = _split(MODEL)
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt, key):
        def loss_fn(p):
            return obj.loss(nnx.merge(graphdef, p), x, key, cond=cond)[0]
        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    opt, losses = tx.init(params), []
    for i in range(10):
        params, opt, loss = step(params, opt, jax.random.PRNGKey(i % 2))
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses
    nll = jax.jit(lambda p: obj.nll(nnx.merge(graphdef, p), x, jax.random.PRNGKey(0), 2, cond=cond))(params)
    assert nll.shape == (2, 4) and np.isfinite(np.asarray(nll)).all()


# -- (5) configuration -------------------------------------------------------------------------------
def test_config_option_default_unknown_value_and_bad_pairings():
    assert instantiate(compose(["objective=mdlm"]).objective, "objective").prompt_attention == "full"
    cfg = compose(["objective=mdlm", "objective.prompt_attention=self"])
    assert instantiate(cfg.objective, "objective").prompt_attention == "self"
    old = OmegaConf.to_container(compose(["objective=mdlm"]).objective)   # a saved config without it
    del old["prompt_attention"]
    old = OmegaConf.create(old)
    assert instantiate(old, "objective").prompt_attention == "full"
    errors = []
    with pytest.raises(UserError) as e:
        instantiate(compose(["objective=mdlm", "objective.prompt_attention=prefix"]).objective, "objective")
    errors.append(str(e.value))
    assert "objective.prompt_attention" in errors[0] and "prefix" in errors[0]
    obj = MDLM(prompt_attention="self").bind(TOK)
    for model in (_model(time_conditioning=True),
                  _model(mixer=lambda cfg, rngs: GatedLinearAttention(cfg, rngs=rngs))):
        with pytest.raises(UserError) as e:
            obj.check(model, TOK)
        errors.append(str(e.value))
    with pytest.raises(UserError) as e:
        Threshold().bind(TOK).replace(prompt_attention="x").check(family="mdm", length=20, prompt_len=4)
    errors.append(str(e.value))
    assert all("\n" not in m and "prompt_attention" in m for m in errors), errors


def test_an_ar_model_read_as_a_causal_shifted_denoiser_decodes_as_ar_left_to_right():
    """The same weights: greedy masked-diffusion infill with semi-AR blocks of one token, a
    causal mask and the logit shift (through the causal prompt cache) writes exactly greedy
    next-token decoding (each token the argmax of the unshifted model's logits at the position
    before it): the shift puts each prediction where the AR head makes it."""
    graphdef, params = _split(MODEL)
    prompt = np.asarray(_seq(b=2, seed=4)[0][:, :P])
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x, mask_kind="causal"))
    x = np.concatenate([prompt, np.zeros((2, T), np.int32)], axis=1)
    for j in range(P, P + T):                         # the reference: plain greedy AR, full forwards
        logits = np.array(forward(params, jnp.asarray(x))[:, j - 1])
        logits[:, [TOK.mask_id, TOK.bos_id, TOK.pad_id]] = -np.inf
        x[:, j] = logits.argmax(-1)
    mdm = Ancestral(steps=T, block_size=1, precision="greedy").bind(TOK)
    mdm = mdm.for_checkpoint(MDLM(mask_kind="causal"))
    z = jnp.concatenate([jnp.asarray(prompt), jnp.full((2, T), TOK.mask_id, jnp.int32)], axis=1)
    sg = _split(SHIFTED)[0]                           # the AR weights under logit_shift=True
    tokens, nfe = jax.jit(lambda p, k: mdm.infill(nnx.merge(sg, p), k, z, P))(params, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(tokens), x)
    assert int(nfe) == T + 1                          # one prompt pass, then one token per forward
