"""Tests of the Transformer backbone: masks, attention kernels, metadata, config checks, sizes."""

from __future__ import annotations

import hydra
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose
from flax import nnx

from sandbox.core.errors import UserError
from sandbox.models.transformer import Transformer

V = 40  # small vocabulary (padded to 128 inside the model)
L = 16


def make(attention="chunked", *, seed=0, **kw):
    args = dict(vocab_size=V, d_model=32, n_layers=1, n_heads=4, n_kv_heads=None, max_len=64,
                attention=attention, attn_chunk=4)
    args.update(kw)
    return Transformer(**args, rngs=nnx.Rngs(seed))


def forward(model, x, mask_kind="causal"):
    """Jitted ``model(x, mask_kind=...)``: one compilation instead of op-by-op dispatch."""
    return forward_masks(model, x, (mask_kind,))[0]


def forward_masks(model, x, mask_kinds=("causal", "bidirectional")):
    """Logits of ``x`` under each mask kind, from one jitted call."""
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, t: [nnx.merge(graphdef, s)(t, mask_kind=k) for k in mask_kinds])
    return f(state, x)


def tokens(seed=0, b=2, length=L):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, length), 0, V)


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("attention", ["chunked", "xla"])
def test_causal_mask_hides_the_future_and_bidirectional_does_not(attention):
    model = make(attention, n_layers=2)  # two layers: information could leak through either
    x = tokens(0)
    i = 6  # positions 0..i keep their tokens, i+1.. change (chunks of 4: several on each side)
    y = x.at[:, i + 1:].set((x[:, i + 1:] + 1 + jnp.arange(L - i - 1)) % V)
    assert bool(jnp.all(x[:, i + 1:] != y[:, i + 1:]))
    causal, bidi = forward_masks(model, jnp.concatenate([x, y]))
    a, b = jnp.split(causal, 2)
    assert a.shape == (2, L, V)
    np.testing.assert_allclose(a[:, : i + 1], b[:, : i + 1], atol=1e-6, rtol=0)
    # ...and the changed tokens do matter where they are visible
    assert float(jnp.max(jnp.abs(a[:, i + 1:] - b[:, i + 1:]))) > 1e-3
    # bidirectional: every earlier position is affected by the later change
    a, b = jnp.split(bidi, 2)
    diff = jnp.max(jnp.abs(a[:, : i + 1] - b[:, : i + 1]), axis=-1)  # [B, i+1]
    assert float(jnp.min(diff)) > 1e-4


def test_unknown_mask_kind_is_a_user_error():
    with pytest.raises(UserError, match="mask kind"):
        forward(make(), tokens(), mask_kind="sideways")


def test_sequence_longer_than_max_len_is_a_user_error():
    with pytest.raises(UserError, match="max_len"):
        make(max_len=8)(tokens(length=16))


# ----------------------------------------------------------------------------- kernels agree


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_chunked_and_xla_attention_agree(n_heads, n_kv_heads):
    """Same logits for causal and bidirectional masks, with multi-, grouped- and multi-query heads."""
    chunked = make("chunked", n_heads=n_heads, n_kv_heads=n_kv_heads)
    xla = make("xla", n_heads=n_heads, n_kv_heads=n_kv_heads)
    # same seed, same parameters: only the kernel differs
    pc, px = nnx.state(chunked, nnx.Param), nnx.state(xla, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, pc, px)
    x = tokens(2)
    for a, b in zip(forward_masks(chunked, x), forward_masks(xla, x), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_chunk_size_does_not_change_causal_logits():
    x = tokens(3)
    ref = forward(make("chunked", attn_chunk=L), x)
    for c in (3, 5):  # chunks that do not divide L
        np.testing.assert_allclose(forward(make("chunked", attn_chunk=c), x), ref, atol=1e-5, rtol=1e-5)


def test_grouped_query_heads_have_fewer_kv_parameters():
    gqa = make(n_heads=4, n_kv_heads=2)
    attn = gqa.blocks[0].attn
    assert attn.wq[...].shape == (32, 4, 8)
    assert attn.wk[...].shape == (32, 2, 8)
    assert attn.wv[...].shape == (32, 2, 8)


# ----------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("tie", [False, True])
def test_every_param_has_logical_axes_of_its_rank(tie):
    model = make(n_heads=4, n_kv_heads=2, tie_embeddings=tie)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(leaves) == 1 + 9 + 1 + (0 if tie else 1)  # embed, 1 block, final norm, head
    names = set()
    for v in leaves:
        assert isinstance(v, nnx.Param)
        axes = v.get_metadata()["logical_axes"]
        assert len(axes) == v[...].ndim, (axes, v[...].shape)
        assert all(isinstance(a, str) for a in axes)
        names.update(axes)
    assert {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp"} <= names


def test_logits_shape_and_padded_vocab_removed():
    model = make(vocab_size=130)  # pads to 256 inside
    out = forward(model, jax.random.randint(jax.random.PRNGKey(0), (3, 8), 0, 130))
    assert out.shape == (3, 8, 130)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(d_model=32, n_heads=3), "n_heads"),
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
        (dict(attention="bogus"), "attention"),
        (dict(dtype="float33"), "dtype"),
    ],
    ids=["heads-not-dividing-d_model", "kv-not-dividing-heads", "unknown-attention", "bad-dtype"],
)
def test_bad_config_values_are_user_errors(kw, field):
    with pytest.raises(UserError, match=field):
        make(**kw)


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name,expected", [("small", 20e6), ("base", 85e6)])
def test_config_parameter_counts(name, expected):
    cfg = compose([f"model={name}"])
    model = hydra.utils.instantiate(cfg.model, vocab_size=260, rngs=nnx.Rngs(0))
    n = model.n_params()
    assert abs(n - expected) / expected < 0.10, n
    # n_params(non_embedding=False) adds exactly the embedding and head tables
    extra = model.n_params(non_embedding=False) - n
    d = cfg.model.d_model
    assert extra == d * model.padded_vocab * (1 if cfg.model.tie_embeddings else 2)


def test_logit_shift_reads_each_position_from_the_one_before():
    """model.logit_shift: logits at i are the unshifted model's at i-1 (position 0 keeps its
    own), under any mask; the same weights, so a pretrained head is reused as it is."""
    plain, shifted = make(), make(logit_shift=True)
    nnx.update(shifted, nnx.state(plain))
    x = tokens(3)
    for kind in ("causal", "bidirectional"):
        a, b = np.asarray(forward(plain, x, kind)), np.asarray(forward(shifted, x, kind))
        np.testing.assert_allclose(b[:, 1:], a[:, :-1], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b[:, 0], a[:, 0], rtol=1e-6, atol=1e-6)
    # causal + shift: token i's logits never read token i itself (nor anything after it)
    y = x.at[:, 5].set((x[:, 5] + 1) % V)
    diff = np.abs(np.asarray(forward(shifted, y, "causal")) - np.asarray(forward(shifted, x, "causal")))
    assert diff[:, :6].max() == 0 and diff[:, 6:].max() > 0


def test_rope_is_the_rotate_half_rotation():
    """The rolled form with signed full-width tables is RoPE's rotate-half definition
    ``[x1 cos - x2 sin, x2 cos + x1 sin]`` (Su et al. 2021) and a rotation (norms kept)."""
    from sandbox.models.transformer import rope, rope_tables

    b, l, h, d = 2, 9, 3, 8
    x = jax.random.normal(jax.random.key(3), (b, l, h, d))
    pos = jnp.broadcast_to(jnp.arange(l) + 5, (b, l))
    cos, sin = rope_tables(pos, d, 10000.0)
    assert cos.shape == sin.shape == (b, l, 1, d)
    inv = 1.0 / (10000.0 ** (np.arange(0, d, 2) / d))
    ang = np.asarray(pos)[..., None, None] * inv  # [B, L, 1, D/2]
    x1, x2 = np.split(np.asarray(x, np.float64), 2, axis=-1)
    want = np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1)
    got = np.asarray(rope(x, (cos, sin)))
    np.testing.assert_allclose(got, want, atol=2e-5)
    norm = np.linalg.norm
    np.testing.assert_allclose(norm(got, axis=-1), norm(np.asarray(x), axis=-1), rtol=1e-5)
    # position 0 is the identity
    c0, s0 = rope_tables(jnp.zeros((1, 1), jnp.int32), d, 10000.0)
    np.testing.assert_array_equal(np.asarray(rope(x[:1, :1], (c0, s0))), np.asarray(x[:1, :1]))
