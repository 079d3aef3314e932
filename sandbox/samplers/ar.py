"""Autoregressive sampling with a preallocated static KV cache.

The model reads ``[BOS, x_0, x_1, ...]`` (the training convention of ``objective=ar``).
With ``use_cache`` the prompt (with BOS) is prefilled in one ``model.decode`` call; the
remaining tokens are decoded one per ``model.decode_step`` call, in chunks of ``chunk``
tokens. Inside a chunk the static KV cache is read-only and the chunk's own keys go to a
``chunk``-slot buffer; ``model.commit`` writes the buffer into the cache once per chunk.
A cache that is both read and updated every step is copied whole by XLA:CPU each step
(measured: per-token time grew 3-4x from length 64 to 512); this layout avoids the copy.
Chunks are grouped into runs that read a static power-of-two prefix of the cache, so a
step reads about as many slots as there are tokens before it (``_segments``).
``use_cache=false`` is the reference for the speed benchmark: every step reruns the full
causal forward over the whole static buffer. A recurrent backbone (``model.recurrent``:
gated linear attention) decodes with its fixed-size state instead of a KV cache:
``model.prefill`` once, then ``model.step`` per token in one ``lax.scan``.

Temperature, top-k and top-p act on the logits before the exact categorical draw
(``categorical.sample``). BOS, PAD and MASK never occur as targets in the training data, so
their logits are suppressed (an undertrained model would otherwise emit them); EOS stays.
NFE = number of generated tokens (prefill included).

``stop_at_eos`` (off by default: the speed benchmark times fixed-length decoding) stops as
soon as every row has produced EOS, so a short answer (a code edit) costs only its own
tokens; every position after a row's first EOS is set to EOS and the output keeps its shape
[B, length]. The token loop becomes a ``lax.while_loop`` whose condition also asks
``~all(done)``: with the KV cache one iteration per chunk (the step loop inside a chunk
still runs all ``chunk`` steps, so the stop is chunk-granular); on the recurrent and the
no-cache paths one iteration per token. NFE then counts the calls actually made: the
prefill (1) plus the decode steps run, at most the length without early stop. Tokens up to
each row's first EOS are those of ``stop_at_eos=false`` with the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from sandbox.core.errors import UserError
from sandbox.models.logits import suppress
from sandbox.samplers.base import Sampler
from sandbox.samplers.categorical import filter_logits, sample


def _segments(p1: int, c: int, nfull: int):
    """Group the full chunks j = 0..nfull-1 (chunk j starts at p1 + j*c) into runs that read
    the same static cache prefix: the smallest power of two (>= 64) covering the chunk's
    start, capped at the cache length. One scan per run, so a step reads about as many
    cache slots as there are tokens before it rather than the whole cache.
    -> [(j0, j1, view)]."""
    size = p1 + nfull * c
    out = []
    for j in range(nfull):
        view = min(size, max(64, 1 << max(0, p1 + j * c - 1).bit_length()))
        if out and out[-1][2] == view:
            out[-1] = (out[-1][0], j + 1, view)
        else:
            out.append((j, j + 1, view))
    return out


@dataclass(frozen=True)
class ARSampler(Sampler):
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    use_cache: bool = True
    chunk: int = 16
    precision: str = "exact"
    stop_at_eos: bool = False  # stop once every row has produced EOS (module doc)
    bos_id: int = -1
    eos_id: int = -1
    banned_ids: tuple = ()
    name: str = "ar"
    family: str = "ar"

    def bind(self, tokenizer):
        banned = tuple(int(getattr(tokenizer, f)) for f in ("bos_id", "pad_id", "mask_id")
                       if getattr(tokenizer, f, None) is not None)
        return self.replace(bos_id=int(tokenizer.bos_id), eos_id=int(tokenizer.eos_id), banned_ids=banned)

    def check(self, **kw):
        super().check(**kw)
        if not self.temperature > 0:
            raise UserError(f"sampler.temperature={self.temperature} must be positive")
        if not 0 < self.top_p <= 1:
            raise UserError(f"sampler.top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise UserError(f"sampler.top_k={self.top_k} must be >= 0 (0: off)")
        if self.chunk < 1:
            raise UserError(f"sampler.chunk={self.chunk} must be >= 1 (tokens per decode chunk)")
        if self.stop_at_eos and self.eos_id < 0:
            raise UserError("sampler.stop_at_eos needs the tokenizer's EOS id: bind the sampler to "
                            "the tokenizer first")

    def forward_plan(self, batch, length, prompt_len, nfe, computed=None):
        """Without the cache: ``nfe`` causal forwards over the static buffer (BOS + length).
        With it: the prefill of BOS + prompt, then ``nfe - 1`` one-token steps, each reading the
        static cache view of its chunk plus the chunk's own slots (``_segments``; the
        remainder and an early stop read the whole cache), averaged over the steps. Every
        forward draws one token per row (from the last position's logits)."""
        nfe = float(nfe)
        if not self.use_cache:
            return [(nfe, batch, float(length + 1), float(length + 1), 1.0)]
        p1, n = prompt_len + 1, length - prompt_len - 1
        steps = max(0.0, min(nfe - 1, float(n)))
        if steps == 0:
            return [(1.0, batch, float(p1), float(p1), 1.0)]
        c = max(1, min(self.chunk, n))
        nfull, rem = divmod(n, c)
        reads = sum((j1 - j0) * c * (view + c) for j0, j1, view in _segments(p1, c, nfull))
        reads += rem * (p1 + nfull * c + c)
        return [(1.0, batch, float(p1), float(p1), 1.0), (steps, batch, 1.0, reads / max(n, 1), 1.0)]

    def _draw(self, key, logits):
        if self.banned_ids:
            logits = suppress(logits, self.banned_ids)
        return sample(key, filter_logits(logits, self.temperature, self.top_k, self.top_p),
                      self.precision)

    def _decode_cached(self, model, keys, seq, g):
        """Prefill seq[B, P+1] in one call, then g-1 one-token steps in chunks of ``chunk``:
        an inner scan over a chunk reads the cache (frozen) and a C-slot buffer; the outer
        scan commits the buffer to the cache once per chunk. -> (tokens[B, g], nfe)."""
        b, p1 = seq.shape
        n = g - 1
        c = max(1, min(self.chunk, n))
        nfull, rem = divmod(n, c)
        cache = model.init_cache(b, p1 + nfull * c)
        logits, cache = model.decode(seq, cache, 0)
        first = self._draw(keys[0], logits[:, -1])

        def run_chunk(tok, cache, start, ks):
            def step(carry, xs):
                tok, buf = carry
                i, k = xs
                logits, buf = model.decode_step(tok[:, None], cache, buf, start, i)
                nxt = self._draw(k, logits[:, 0])
                return (nxt, buf), nxt

            m = ks.shape[0]
            (tok, buf), toks = jax.lax.scan(step, (tok, model.init_cache(b, m)), (jnp.arange(m), ks))
            return tok, buf, toks                                          # toks[m, B]

        def chunk(carry, xs, view):
            tok, cache = carry
            j, ks = xs
            start = p1 + j * c
            frozen = [(k[:, :, :view], v[:, :, :view]) for k, v in cache]  # static prefix
            tok, buf, toks = run_chunk(tok, frozen, start, ks)
            return (tok, model.commit(cache, buf, start)), toks

        if self.stop_at_eos:
            return self._decode_cached_stop(keys, first, cache, g, c, nfull, rem, p1, run_chunk, chunk)
        parts = [first[:, None]]
        tok = first
        for j0, j1, view in _segments(p1, c, nfull):
            ks = keys[1 + j0 * c:1 + j1 * c].reshape(j1 - j0, c, *keys.shape[1:])
            (tok, cache), toks = jax.lax.scan(partial(chunk, view=view), (tok, cache),
                                              (jnp.arange(j0, j1), ks))
            parts.append(toks.reshape((j1 - j0) * c, b).T)
        if rem:
            _, _, toks = run_chunk(tok, cache, p1 + nfull * c, keys[1 + nfull * c:])
            parts.append(toks.T)
        return jnp.concatenate(parts, axis=1), jnp.int32(g)

    def _decode_cached_stop(self, keys, first, cache, g, c, nfull, rem, p1, run_chunk, chunk):
        """``_decode_cached`` with ``stop_at_eos``: the chunks of each static-view segment
        run in a lax.while_loop that also stops once every row is done, writing into a
        preallocated out[B, g] (EOS where never written); the remainder chunk is skipped
        (lax.cond) when all rows are done. -> (tokens[B, g], nfe)."""
        b = first.shape[0]
        out = jnp.full((b, g), self.eos_id, jnp.int32).at[:, 0].set(first)
        done = first == self.eos_id
        tok, nfe = first, jnp.int32(1)
        for j0, j1, view in _segments(p1, c, nfull):
            def cond(carry, j1=j1):
                j, done = carry[4], carry[3]
                return (j < j1) & ~jnp.all(done)

            def body(carry, view=view):
                tok, cache, out, done, j, nfe = carry
                ks = jax.lax.dynamic_slice_in_dim(keys, 1 + j * c, c)
                (tok, cache), toks = chunk((tok, cache), (j, ks), view)          # toks[c, B]
                out = jax.lax.dynamic_update_slice(out, toks.T, (0, 1 + j * c))
                done = done | jnp.any(toks == self.eos_id, axis=0)
                return tok, cache, out, done, j + 1, nfe + c

            tok, cache, out, done, _, nfe = jax.lax.while_loop(
                cond, body, (tok, cache, out, done, jnp.int32(j0), nfe))
        if rem:
            def last(out, nfe):
                _, _, toks = run_chunk(tok, cache, p1 + nfull * c, keys[1 + nfull * c:])
                return out.at[:, 1 + nfull * c:].set(toks.T), nfe + rem

            out, nfe = jax.lax.cond(jnp.all(done), lambda o, n: (o, n), last, out, nfe)
        return out, nfe

    def _decode_recurrent(self, model, keys, seq, g):
        """Recurrent backbones (``model.recurrent``, e.g. gated linear attention): one
        ``model.prefill`` of seq[B, P+1] gives the logits and the fixed-size state, then g-1
        ``model.step`` calls in one lax.scan (``stop_at_eos``: a lax.while_loop per token that
        stops once every row is done). -> (tokens[B, g], nfe)."""
        p1 = seq.shape[1]
        logits, state = model.prefill(seq)
        first = self._draw(keys[0], logits[:, -1])

        def step(carry, xs):
            tok, state = carry
            i, k = xs
            logits, state = model.step(tok[:, None], state, p1 + i)
            nxt = self._draw(k, logits[:, 0])
            return (nxt, state), nxt

        if self.stop_at_eos:  # one while_loop iteration per token, until every row is done
            def body(carry):
                tok, state, out, done, i, nfe = carry
                (tok, state), _ = step((tok, state), (i, keys[1 + i]))
                out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, 1 + i))
                return tok, state, out, done | (tok == self.eos_id), i + 1, nfe + 1

            out = jnp.full((first.shape[0], g), self.eos_id, jnp.int32).at[:, 0].set(first)
            init = (first, state, out, first == self.eos_id, jnp.int32(0), jnp.int32(1))
            _, _, out, _, _, nfe = jax.lax.while_loop(
                lambda c: (c[4] < g - 1) & ~jnp.all(c[3]), body, init)
            return out, nfe
        _, toks = jax.lax.scan(step, (first, state), (jnp.arange(g - 1), keys[1:]))
        return jnp.concatenate([first[:, None], toks.T], axis=1), jnp.int32(g)

    def generate(self, model, key, prompt, length: int):
        b, p = prompt.shape
        g = length - p
        bos = jnp.full((b, 1), self.bos_id, jnp.int32)
        seq = jnp.concatenate([bos, prompt.astype(jnp.int32)], axis=1)  # [B, P + 1]
        keys = jax.random.split(key, g)
        if self.use_cache and getattr(model, "recurrent", False):
            gen, nfe = self._decode_recurrent(model, keys, seq, g)
        elif self.use_cache and hasattr(model, "decode_step"):
            gen, nfe = self._decode_cached(model, keys, seq, g)
        else:
            buf = jnp.zeros((b, length + 1), jnp.int32).at[:, : p + 1].set(seq)

            def step(buf, xs):
                i, k = xs
                logits = model(buf, mask_kind="causal")                    # full forward
                nxt = self._draw(k, jax.lax.dynamic_index_in_dim(logits, p + i, 1, keepdims=False))
                return jax.lax.dynamic_update_slice(buf, nxt[:, None], (0, p + 1 + i)), None

            if self.stop_at_eos:  # one while_loop iteration per token, until every row is done
                def body(carry):
                    buf, done, i = carry
                    buf, _ = step(buf, (i, keys[i]))
                    nxt = jax.lax.dynamic_index_in_dim(buf, p + 1 + i, 1, keepdims=False)
                    return buf, done | (nxt == self.eos_id), i + 1

                buf, _, nfe = jax.lax.while_loop(lambda c: (c[2] < g) & ~jnp.all(c[1]), body,
                                                 (buf, jnp.zeros((b,), bool), jnp.int32(0)))
            else:
                buf, _ = jax.lax.scan(step, buf, (jnp.arange(g), keys))
                nfe = jnp.int32(g)
            gen = buf[:, p + 1:]
        if self.stop_at_eos:  # after a row's first EOS: EOS (tokens drawn past it are dropped)
            gen = jnp.where(jnp.cumsum(gen == self.eos_id, axis=1) > 0, self.eos_id, gen)
        return jnp.concatenate([prompt.astype(jnp.int32), gen], axis=1), nfe
