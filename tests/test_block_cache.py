"""Approximate block caches of the masked-diffusion samplers (``sampler.cache=prefix|dual``).

What must hold: with one block there is nothing before the block to cache, so ``prefix`` is
``none`` token for token (unconditional, and with a prompt that attends only to itself); with
several blocks both caches keep the prompt, leave no mask, count their refresh forwards in the
NFE and recompute fewer token positions than ``none``; the dual cache's attention reads the
cache on both sides of the block and never the block's own stale keys; bad settings are one line.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sandbox.core.errors import UserError
from sandbox.models.attention import block_masks
from sandbox.models.transformer import Transformer
from sandbox.samplers import Ancestral, BD3LMSampler, FirstHitting, Threshold, TopKConfidence


class Tok:
    mask_id, bos_id, pad_id, eos_id = 15, 14, 13, 12


def _model():
    return Transformer(vocab_size=16, d_model=32, n_layers=2, n_heads=2, rngs=nnx.Rngs(0))


MODEL = _model()
SAMPLERS = [Ancestral(steps=8), TopKConfidence(steps=8), Threshold(tau=0.9), FirstHitting()]


def _run(s, prompt, length, key=3):
    return jax.jit(lambda k, p: s.generate_cost(MODEL, k, p, length))(jax.random.PRNGKey(key), prompt)


@pytest.mark.parametrize("s", SAMPLERS[::2], ids=lambda s: s.name)
def test_prefix_with_one_block_is_the_uncached_sampler(s):
    s = s.bind(Tok)
    prompt = jnp.zeros((2, 0), jnp.int32)
    ref = _run(s.replace(block_size=16), prompt, 16)
    got = _run(s.replace(block_size=16, cache="prefix"), prompt, 16)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(ref[0]))
    assert int(got[1]) == int(ref[1]) and int(got[2]) == int(ref[2]) == 16 * int(ref[1])


@pytest.mark.parametrize("s", SAMPLERS[1:3], ids=lambda s: s.name)
def test_prefix_with_one_block_and_a_self_attending_prompt_is_exact(s):
    s = s.bind(Tok).replace(prompt_attention="self", block_size=12)
    prompt = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32)
    ref = _run(s, prompt, 16)
    got = _run(s.replace(cache="prefix"), prompt, 16)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(ref[0]))
    assert int(got[1]) == int(ref[1])


@pytest.mark.parametrize("inner,prompt_len", [(Threshold(tau=0.6), 4),
                                              pytest.param(Ancestral(steps=4), 0, marks=pytest.mark.slow)],
                         ids=["threshold-prompt", "ancestral"])
def test_prefix_under_the_block_causal_mask_is_the_exact_block_diffusion_cache(inner, prompt_len):
    """On a model read block-causally (a BD3LM run's attention) the prefix cache is exact: the
    masked-diffusion loop with ``cache=causal`` gives block diffusion's tokens, EOS stop included."""
    bs, length = 4, 16
    prompt = jnp.asarray(np.arange(1, 1 + 3 * prompt_len).reshape(3, prompt_len) % 12, jnp.int32)
    ref = BD3LMSampler(block_size=bs, inner=inner, stop_at_eos=True).bind(Tok)
    per_block = inner.steps if getattr(inner, "uses_steps", False) else 1
    s = inner.replace(block_size=bs, cache="causal", stop_at_eos=True,
                      steps=per_block * (length - prompt_len) // bs).bind(Tok)
    s.check(family="mdm", length=length, prompt_len=prompt_len)
    want = jax.jit(lambda k: ref.generate(MODEL, k, prompt, length))(jax.random.PRNGKey(2))
    got = _run(s, prompt, length, key=2)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    assert int(got[1]) == int(want[1]) - 1  # block diffusion also commits its last block
    assert (np.asarray(got[0]) == Tok.eos_id).any()  # the EOS rule was exercised
    with pytest.raises(UserError, match="whole blocks"):
        Threshold(block_size=bs, cache="causal").check(family="mdm", length=16, prompt_len=3)


@pytest.mark.parametrize("s,cache", [(TopKConfidence(steps=8), "prefix"), (Threshold(tau=0.9), "dual")],
                         ids=["topk-prefix", "threshold-dual"])
def test_cached_blocks_fill_the_canvas_and_recompute_less(s, cache):
    # 2 blocks of 6 with >= 4 calls each: enough steps per block for a refresh to pay
    s = s.bind(Tok).replace(block_size=6)
    prompt = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32)
    s.replace(cache=cache).check(family="mdm", length=16, prompt_len=4)
    none = _run(s, prompt, 16)
    toks, nfe, recomputed = _run(s.replace(cache=cache), prompt, 16)
    toks = np.asarray(toks)
    assert (toks[:, :4] == np.asarray(prompt)).all() and not (toks == Tok.mask_id).any()
    blocks = 2
    # every block is masked at its start, so each pays one refresh over the whole canvas
    if cache == "dual":
        assert int(recomputed) == blocks * 16 + (int(nfe) - blocks) * 6
    else:  # block 0 reads [4, 16) and block 1 [10, 16) after their refreshes
        assert int(recomputed) > blocks * 16
    assert int(recomputed) < int(none[2]) == 16 * int(none[1])
    assert int(nfe) >= blocks + 1


def test_a_full_canvas_costs_no_call():
    s = Threshold().bind(Tok).replace(block_size=4, cache="dual")
    z = jnp.ones((1, 12), jnp.int32)
    toks, nfe, recomputed = s.infill_cost(MODEL, jax.random.PRNGKey(0), z, 4)
    assert int(nfe) == 0 and int(recomputed) == 0 and (np.asarray(toks) == 1).all()


def test_dual_block_logits_match_a_forward_that_sees_the_refreshed_context():
    """decode_block(around=True) over block [4, 8) of a 12-token canvas equals the block rows
    of a full bidirectional forward when the canvas has not changed since the refresh."""
    z = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 12)
    _, kv = MODEL.decode_block(z, MODEL.init_cache(2, 0), 0)
    got = MODEL.decode_block(z[:, 4:8], kv, 4, around=True)[0]
    ref = MODEL(z, mask_kind="bidirectional")[:, 4:8]
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=2e-5, atol=2e-5)
    cache, own = block_masks(4, 12, 4, around=True)
    assert np.asarray(cache)[:, 4:8].sum() == 0 and np.asarray(cache).sum() == 4 * 8
    assert np.asarray(own).all()


@pytest.mark.parametrize("kw,words", [
    ({"cache": "both"}, "sampler.cache"),
    ({"cache": "prefix"}, "sampler.block_size"),
    ({"cache": "dual", "block_size": 5}, "divisor"),
])
def test_bad_cache_settings_are_one_line(kw, words):
    s = Ancestral(steps=4).replace(**kw)
    with pytest.raises(UserError) as e:
        s.check(family="mdm", length=16, prompt_len=0)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_cache_on_a_backbone_without_decode_block_is_refused_not_ignored():
    class NoCache:  # a full forward only
        vocab_size = 16

        def __call__(self, z, **kw):
            return jnp.zeros(z.shape + (16,))

    s = Threshold(cache="dual", block_size=4).bind(Tok)
    with pytest.raises(UserError, match="decode_block"):
        s.generate(NoCache(), jax.random.PRNGKey(0), jnp.zeros((1, 0), jnp.int32), 8)


def test_labels_of_uncached_samplers_are_unchanged():
    assert "cache" not in Threshold().settings()
    assert Threshold(cache="dual", block_size=4).settings()["cache"] == "dual"
