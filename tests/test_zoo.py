"""The architecture zoo: every backbone variant (``conf/model/tiny_*.yaml``) under every
objective it supports.

Each variant is built from its own YAML with tiny dimensions (d_model 32, 2 layers, 4 heads)
and checked for: a few steps of the trainer's own train step with a falling, finite loss
(ar, mdlm, bd3lm with blocks of 4); a one-line refusal for each objective it does not
support; causality under the causal mask; cached or recurrent decoding equal to the full
forward (and block decoding equal to the block-diffusion forward where supported); and its
parameter count at the YAML's own size. A new ``tiny_*.yaml`` is picked up automatically;
declare its objectives in ``OBJECTIVES`` if it does not support all three.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CONF, compose
from flax import nnx

from sandbox.core.build import init_state, split_model
from sandbox.core.cli import instantiate
from sandbox.core.errors import UserError
from sandbox.core.mesh import build_layout
from sandbox.core.step import make_train_step
from sandbox.data import ByteTokenizer
from sandbox.models import aux
from sandbox.models.attention import BlockDiffusionMask, attend
from sandbox.models.moe import MoE
from sandbox.objectives import AR, BD3LM, MDLM
from sandbox.samplers.ar import ARSampler

TOK = ByteTokenizer()
L = 16          # training window
STEPS = 6       # train steps per (variant, objective)
# XLA:CPU backend optimisation off and the plain (non-MLIR) fusion emitters: together they
# cut the compile time, which is what these tiny shapes cost, about 4x (measured)
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}

VARIANTS = sorted(p.stem for p in (CONF / "model").glob("tiny_*.yaml"))
ALL = ("ar", "mdlm", "bd3lm")
# objectives each variant supports (default: all three)
OBJECTIVES = {"tiny_gla": ("ar", "mdlm")}

# tiny dims for every variant, then what each variant's own options need at that size
DIMS = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.attn_chunk=8",
        "model.max_len=64"]
OPTIONS = {
    "tiny_swa": ["model.window=4"],
    "tiny_moe": ["model.mlp.d_expert=32"],
    "tiny_mla": ["model.mixer.kv_rank=16", "model.mixer.rope_dim=4"],
    "tiny_gla": ["model.mixer.chunk=4"],
    "tiny_relu2": ["model.mlp.d_ff=64"],
}


def make_objective(name):
    return {"ar": AR(), "mdlm": MDLM(), "bd3lm": BD3LM(block_size=4)}[name].bind(TOK)


@functools.cache
def _config(variant, extra=()):
    return compose([f"model={variant}", *DIMS, *OPTIONS.get(variant, []), *extra])


def _maker(variant, *extra):
    """() -> the variant at tiny dims (``extra``: more overrides). Parameters are drawn with
    the rbg PRNG: far fewer ops to compile than threefry's (these tests are compile-bound)."""
    cfg = _config(variant, tuple(extra))
    return lambda: instantiate(cfg.model, "model", vocab_size=TOK.vocab_size,
                               rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))


@functools.cache
def spec(variant, *extra):
    """The variant at tiny dims, abstract (shapes only): for checks that need no weights."""
    return nnx.eval_shape(_maker(variant, *extra))


def graph(variant, *extra):
    """``nnx.merge`` for the variant's parameters: settings that change no parameter shape
    (a capacity factor, a window) share ``weights(variant)``."""
    graphdef, _ = split_model(spec(variant, *extra))
    return lambda params: nnx.merge(graphdef, params)


@functools.cache
def weights(variant, perturb=False, *extra):
    """The variant's parameters (drawn once; eager). ``perturb``: zero-initialised ones (the
    adaLN modulations) get small random values, so conditioning paths are exercised."""
    _, params = split_model(_maker(variant, *extra)())
    rng = np.random.default_rng(1)
    fill = lambda x: x if np.any(x) or not perturb else (  # noqa: E731
        0.1 * rng.standard_normal(x.shape)).astype(np.float32)
    return jax.tree.map(lambda x: jnp.asarray(fill(np.asarray(x))), params)


def compiled(fn, *args):
    """jit(fn)(*args) with XLA's backend optimisation off, as numpy."""
    return jax.tree.map(np.asarray, jax.jit(fn, compiler_options=FAST)(*args))


def tokens(b=2, length=L, seed=0):
    return np.random.default_rng(seed).integers(0, TOK.n_text, (b, length)).astype(np.int32)


def _ar_decode(model, toks, p=3, c=2):
    """Logits of toks[B, L] from cached decoding (prefill, a full chunk of steps, a commit,
    a partial chunk) or recurrent decoding (prefill, then steps)."""
    b, n = toks.shape
    if model.recurrent:
        logits, state = model.prefill(toks[:, :p])
        outs = [logits]
        for i in range(p, n):
            logits, state = model.step(toks[:, i:i + 1], state, i)
            outs.append(logits)
        return jnp.concatenate(outs, 1)
    cache = model.init_cache(b, n + c)
    logits, cache = model.decode(toks[:, :p], cache, 0)
    outs = [logits]
    for start in range(p, n, c):
        buf = model.init_cache(b, c)
        for i in range(min(c, n - start)):
            logits, buf = model.decode_step(toks[:, start + i:start + i + 1], cache, buf, start, i)
            outs.append(logits)
        cache = model.commit(cache, buf, start)
    return jnp.concatenate(outs, 1)


def _block_decode(model, z, x, bs=4):
    """Block diffusion's decoding: each noised block against the cache of the clean ones."""
    cache, outs = model.init_cache(x.shape[0], x.shape[1]), []
    for s in range(0, x.shape[1], bs):
        logits, _ = model.decode_block(z[:, s:s + bs], cache, s)
        outs.append(logits)
        _, kv = model.decode_block(x[:, s:s + bs], cache, s)
        cache = model.commit(cache, kv, s)
    return jnp.concatenate(outs, 1)


# ----------------------------------------------------------------------------- one call per variant
CUT = 4  # causality: positions <= CUT keep their tokens, later ones change
_results = {}


def results(variant):
    """Everything the matrix checks for one variant, from one compiled call (the tests are
    compile-bound: one compilation per variant instead of one per check):

    - ``train/<objective>``: metrics of STEPS steps of ``sandbox.train``'s own train step
      (the trainer's ``split_model``, merge inside the jitted step, Adam, EMA) on one fixed
      batch and key, for every objective the variant supports;
    - ``x`` / ``y``: causal logits of a sequence and of the same with the tokens after CUT
      changed (MoE: also ``x_capped`` / ``y_capped`` with tokens dropped for capacity);
    - ``decoded``: the logits of ``x`` from cached or recurrent decoding;
    - ``block_full`` / ``block_decoded`` (bd3lm variants): the block-diffusion forward over
      ``[z ; x]`` and block-by-block decoding against the cache of clean blocks.

    The checks use perturbed weights (adaLN modulations non-zero) and, for the MoE, a
    capacity at which the full forward drops nothing (decoding never drops)."""
    if variant in _results:
        return _results[variant]
    objectives = OBJECTIVES.get(variant, ALL)
    moe = variant == "tiny_moe"
    checked = graph(variant, *(["model.mlp.capacity_factor=2.0"] if moe else []))
    capped = graph(variant, "model.mlp.capacity_factor=0.5") if moe else None
    graphdef, abstract = split_model(spec(variant))
    tx = optax.adam(3e-3)
    layout = build_layout(None)  # mesh=single: the trainer's step
    example = jax.eval_shape(lambda p: init_state(p, tx), abstract)
    objs = {o: make_objective(o) for o in objectives}
    for obj in objs.values():
        obj.check(spec(variant), TOK)
    steps = {o: make_train_step(graphdef, obj, tx, 0.99, layout, example) for o, obj in objs.items()}
    bd = make_objective("bd3lm")
    x = tokens(length=8, seed=2)   # decoding: prefill 3, a chunk of 2, a commit, 2, a commit, 1
    y = x.copy()
    y[:, CUT + 1:] = (x[:, CUT + 1:] + 1 + np.arange(8 - CUT - 1)) % TOK.n_text
    xb = tokens(length=8, seed=4)  # block diffusion: clean x and noised z, blocks of 4
    z = np.where(np.random.default_rng(3).random(xb.shape) < 0.5, TOK.mask_id, xb).astype(np.int32)

    def run(params, perturbed, batch, key, x, y, z, xb):
        out = {}
        for o, step in steps.items():
            out[f"train/{o}"] = jax.lax.scan(lambda st, _, step=step: step(st, batch, key),
                                             init_state(params, tx), None, length=STEPS)[1]
        m = checked(perturbed)
        out.update(x=m(x, mask_kind="causal"), y=m(y, mask_kind="causal"), decoded=_ar_decode(m, x))
        if "bd3lm" in objectives:
            out.update(block_full=bd.logits(m, z, xb), block_decoded=_block_decode(m, z, xb))
        if moe:
            m = capped(perturbed)
            out.update(x_capped=m(x, mask_kind="causal"), y_capped=m(y, mask_kind="causal"))
        return out

    out = compiled(run, weights(variant), weights(variant, True), tokens(4, seed=1),
                   jax.random.PRNGKey(1), x, y, z, xb)
    for o in objectives:
        ms = out.pop(f"train/{o}")
        out[f"train/{o}"] = [{k: float(v[i]) for k, v in ms.items()} for i in range(STEPS)]
    _results[variant] = out
    return out


def train(variant, objective):
    return results(variant)[f"train/{objective}"]


MATRIX = [(v, o) for v in VARIANTS for o in ALL]


@pytest.mark.parametrize("variant,objective", MATRIX, ids=[f"{v}-{o}" for v, o in MATRIX])
def test_every_variant_trains_under_every_objective_it_supports(variant, objective):
    if objective not in OBJECTIVES.get(variant, ALL):
        with pytest.raises(UserError) as err:
            make_objective(objective).check(spec(variant), TOK)
        msg = str(err.value)
        assert "\n" not in msg and f"objective={objective}" in msg, msg
        return
    losses = [m["loss"] for m in train(variant, objective)]
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0] - 0.05, losses


def test_supported_masks_match_the_declared_objectives():
    need = {"ar": "causal", "mdlm": "bidirectional", "bd3lm": "block_diffusion"}
    for v in VARIANTS:
        model = spec(v)
        got = tuple(o for o in ALL if need[o] in model.supported_masks)
        assert got == OBJECTIVES.get(v, ALL), (v, model.supported_masks)


def test_moe_load_balancing_loss_is_positive_and_in_the_loss():
    for objective in ALL:
        m = train("tiny_moe", objective)[0]
        base = m.get("nll", m.get("nelbo"))
        assert m["aux_loss"] > 0.5, m          # ~1 per layer when balanced
        assert m["loss"] == pytest.approx(base + 0.01 * m["aux_loss"], rel=1e-5), m
    m = train("tiny_gqa", "ar")[0]
    assert "aux_loss" not in m and m["loss"] == pytest.approx(m["nll"])  # dense: unchanged


def test_moe_capacity_drops_tokens_to_the_residual():
    cfg = dict(d_model=16, d_ff=32, out_std=0.1, dtype=jnp.float32)
    make = lambda: MoE(cfg, rngs=nnx.Rngs(0), n_experts=4, top_k=2, capacity_factor=0.5)  # noqa: E731
    assert nnx.eval_shape(make).capacity(12) == 3

    def run(x):
        m = make()
        idx, _, _ = m.route(x)
        onehot = jax.nn.one_hot(idx, 4, dtype=jnp.int32)
        pos = jnp.cumsum(onehot.reshape(2, -1, 4), axis=1).reshape(onehot.shape) - 1
        with aux.collect() as tape:
            y = m(x)
        return {"all_dropped": jnp.all(jnp.sum(pos * onehot, -1) >= 3, axis=-1),   # [B, L]
                "y": y, "decoded": m.decode(x), "dropped": m.dropped(x), "aux": tape.raw(),
                "recorded": len(tape.entries)}

    out = compiled(run, np.random.default_rng(0).standard_normal((2, 12, 16)).astype(np.float32))
    gone = out["all_dropped"]
    assert out["dropped"] > 0.2 and gone.any() and out["recorded"] == 1 and out["aux"] > 0
    np.testing.assert_array_equal(out["y"][gone], 0.0)      # nothing added: the residual passes
    assert np.abs(out["decoded"]).sum(-1).min() > 0         # decoding routes without capacity
    assert not gone[:, 0].any()     # priority is token order (what keeps the layer causal)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_mask_hides_the_future(variant):
    out = results(variant)
    pairs = [(out["x"], out["y"])] + ([(out["x_capped"], out["y_capped"])] if "x_capped" in out else [])
    for a, b in pairs:
        np.testing.assert_allclose(a[:, : CUT + 1], b[:, : CUT + 1], atol=1e-5, rtol=0)
        assert np.abs(a[:, CUT + 1:] - b[:, CUT + 1:]).max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_or_recurrent_decoding_equals_the_full_forward(variant):
    out = results(variant)
    np.testing.assert_allclose(out["decoded"], out["x"], atol=2e-4, rtol=1e-4)
    if "block_full" in out:
        v = TOK.n_text  # the objective's view sets the MASK logit to -inf
        np.testing.assert_allclose(out["block_decoded"][..., :v], out["block_full"][..., :v],
                                   atol=2e-4, rtol=1e-4)


def test_ar_sampler_recurrent_branch_agrees_with_no_cache():
    assert spec("tiny_gla").recurrent and not spec("tiny_gqa").recurrent
    model = graph("tiny_gla")
    prompt = np.array([[65, 66], [67, 68]], np.int32)
    cached, plain = ARSampler().bind(TOK), ARSampler(use_cache=False).bind(TOK)
    (a, nfe), (b, _) = compiled(lambda p, key, prompt: [s.generate(model(p), key, prompt, 12)
                                                        for s in (cached, plain)],
                                weights("tiny_gla", True), jax.random.PRNGKey(3), prompt)
    assert int(nfe) == 10 and (a[:, :2] == prompt).all()
    assert np.mean(a == b) > 0.95


# ----------------------------------------------------------------------------- sliding window
def test_sliding_window_kernels_match_a_dense_reference():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 12, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(1, 12, 2, 8)), jnp.float32) for _ in range(2))
    w = 3
    i = np.arange(12)
    pos = i % 6  # the block-diffusion mask's positions: two halves of 6
    refs = {"causal": (i[None] <= i[:, None]) & (i[None] > i[:, None] - w),
            "bidirectional": np.abs(i[:, None] - i[None]) < w,
            "block": np.asarray(BlockDiffusionMask(2).array(12, 12)) & (np.abs(pos[:, None] - pos[None]) < w)}
    kinds = {"causal": "causal", "bidirectional": "bidirectional", "block": BlockDiffusionMask(2)}
    got = compiled(lambda q, k, v: {(n, impl): attend(q, k, v, kind, impl, chunk=4, window=w)
                                    for n, kind in kinds.items() for impl in ("chunked", "xla")}, q, k, v)
    kk, vv = np.repeat(np.asarray(k), 2, axis=2), np.repeat(np.asarray(v), 2, axis=2)
    for (name, impl), out in got.items():
        s = np.einsum("blhd,bshd->bhls", np.asarray(q), kk) / np.sqrt(8)
        s = np.where(refs[name][None, None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        ref = np.einsum("bhls,bshd->blhd", p / p.sum(-1, keepdims=True), vv)
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, err_msg=f"{name}/{impl}")


def test_a_one_layer_window_limits_what_a_token_changes():
    x = tokens()
    y = x.copy()
    y[:, 5] = (x[:, 5] + 1) % TOK.n_text
    model = graph("tiny_swa", "model.n_layers=1")  # window 4
    ca, ba, cb, bb = compiled(lambda p, x, y: [model(p)(t, mask_kind=k) for t in (x, y)
                                               for k in ("causal", "bidirectional")],
                              weights("tiny_swa", False, "model.n_layers=1"), x, y)
    changed = lambda a, b: np.abs(a - b).max(axis=(0, 2)) > 1e-5  # noqa: E731
    np.testing.assert_array_equal(changed(ca, cb), (np.arange(L) >= 5) & (np.arange(L) < 9))
    np.testing.assert_array_equal(changed(ba, bb), np.abs(np.arange(L) - 5) < 4)


# ----------------------------------------------------------------------------- time conditioning
def test_time_conditioning_starts_as_the_plain_model_and_reads_the_mask_fraction():
    x = tokens(seed=4)
    z = np.where(np.random.default_rng(0).random(x.shape) < 0.3, TOK.mask_id, x).astype(np.int32)
    frac = np.mean(z == TOK.mask_id, axis=1).astype(np.float32)
    kw = dict(mask_kind="bidirectional")
    cond, plain = graph("tiny_adaln"), graph("tiny_adaln", "model.time_conditioning=false")

    def run(p, p_plain, perturbed, z, t):
        m = cond(perturbed)  # modulations non-zero: the time matters
        return (cond(p)(z, **kw), plain(p_plain)(z, **kw), m(z, **kw), m(z, t=t, **kw),
                m(z, t=t + 0.5, **kw))

    # the same seed draws the same weights for both (the conditioning's own are drawn last)
    fresh, unconditioned, est, given, other = compiled(
        run, weights("tiny_adaln"), weights("tiny_adaln", False, "model.time_conditioning=false"),
        weights("tiny_adaln", True), z, frac)
    np.testing.assert_allclose(fresh, unconditioned, atol=1e-5)   # zero modulations: the plain model
    np.testing.assert_allclose(est, given, atol=1e-5)
    assert np.abs(est - other).max() > 1e-3


# ----------------------------------------------------------------------------- refusals
def test_unsupported_settings_are_one_line_user_errors():
    x = jnp.zeros((2, 8), jnp.int32)
    cases = [
        (lambda: spec("tiny_gla", "+model.window=4"), "model.window"),
        (lambda: spec("tiny_moe", "model.mlp.top_k=5"), "top_k"),
        (lambda: spec("tiny_mla", "model.mixer.rope_dim=3"), "rope_dim"),
        (lambda: spec("tiny_gla").init_cache(1, 8), "no KV cache"),
        (lambda: spec("tiny_gqa").prefill(x), "no recurrent form"),
        (lambda: jax.eval_shape(lambda: _maker("tiny_gla")()(x, mask_kind=BlockDiffusionMask(2))),
         "block_diffusion"),
    ]
    for fn, words in cases:
        with pytest.raises(UserError, match=words) as err:
            fn()
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- sizes
def _expected_params(name, d=256, n=4, h=4, ff=704):
    """Non-embedding parameters of conf/model/<name>.yaml (tiny: d 256, 4 layers, 4 heads)."""
    dh = d // h
    attn = lambda kv: 2 * d * h * dh + 2 * d * kv * dh  # noqa: E731  q, o + k, v
    swiglu, norms = 3 * d * ff, 2 * d
    block = {
        "tiny": attn(h) + swiglu,
        "tiny_mqa": attn(1) + swiglu,
        "tiny_gqa": attn(2) + swiglu,
        "tiny_swa": attn(h) + swiglu,
        "tiny_moe": attn(h) + d * 4 + 3 * 4 * d * 352,                # router + 4 experts
        # q (nope + rope), W_dkv, latent norm, W_kr, W_uk, W_uv, W_o; SwiGLU
        "tiny_mla": d * h * (dh + 32) + d * 64 + 64 + d * 32 + 2 * 64 * h * dh + h * dh * d + swiglu,
        "tiny_gla": 4 * d * h * dh + d * h + h + dh + h * dh * d + swiglu,  # q k v gate, decay, norm, o
        "tiny_adaln": attn(h) + swiglu + 6 * d * d + 6 * d,             # + adaLN modulation
        "tiny_relu2": attn(h) + 2 * d * 1024,
    }[name]
    extra = 2 * (d * d + d) + 2 * d * d + 2 * d if name == "tiny_adaln" else 0  # time MLP, final adaLN
    return n * (block + norms) + d + extra


@pytest.mark.parametrize("name", ["tiny", *VARIANTS])
def test_parameter_counts_of_each_yaml(name):
    cfg = compose([f"model={name}"])
    model = nnx.eval_shape(lambda: instantiate(cfg.model, "model", vocab_size=TOK.vocab_size,
                                               rngs=nnx.Rngs(0)))
    assert model.n_params() == _expected_params(name)
