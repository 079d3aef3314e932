"""An independent numpy forward of a llama GGUF's first layers: the check on the loader.

Written from llama.cpp's definition of the architecture, not from the sandbox's backbone:
it reads the file's tensors as stored (``GGUF.raw_arrays``: Q and K rows in llama.cpp's
order, no permutation) and rotates *adjacent* pairs ``(2i, 2i+1)`` of each head, as
llama.cpp's ``rope`` (normal mode) does, where the backbone rotates halves of rows that
``sandbox.core.pretrained._unpermute`` reordered. If the two agree, the loader's pairing,
transposes, head grouping, norms and tied head are right. float64 throughout, one
sequence at a time: it is a reference, not a fast path.

``logits(g, raw, tokens[L], n_layers) -> [L, V]``: the first ``n_layers`` blocks, then the
final RMSNorm and the output head (tied to the embedding unless the file has ``output``).
"""

from __future__ import annotations

import numpy as np


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope_pairs(x, pos, base):
    """x[L, H, Dh]: rotate pairs (x[2i], x[2i+1]) by pos * base^(-2i/Dh)."""
    dh = x.shape[-1]
    inv = base ** (-np.arange(0, dh, 2, dtype=np.float64) / dh)
    ang = pos[:, None, None] * inv[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def logits(g, raw: dict, tokens, n_layers: int) -> np.ndarray:
    """Causal forward of ``tokens`` [L] through the first ``n_layers`` blocks (module doc)."""
    hp = g.hparams
    h, kh, eps, base = hp["n_heads"], hp["n_kv_heads"], hp["norm_eps"], hp["rope_base"]
    f = {k: np.asarray(v, np.float64) for k, v in raw.items()}
    tokens = np.asarray(tokens)
    l = len(tokens)
    x = f["token_embd.weight"][tokens]  # [L, D]
    pos = np.arange(l, dtype=np.float64)
    causal = np.tril(np.ones((l, l), bool))
    for i in range(n_layers):
        p = f"blk.{i}."
        a = _rms(x, f[p + "attn_norm.weight"], eps)
        q = (a @ f[p + "attn_q.weight"].T).reshape(l, h, -1)
        k = (a @ f[p + "attn_k.weight"].T).reshape(l, kh, -1)
        v = (a @ f[p + "attn_v.weight"].T).reshape(l, kh, -1)
        q, k = _rope_pairs(q, pos, base), _rope_pairs(k, pos, base)
        dh = q.shape[-1]
        out = np.empty_like(q)
        for head in range(h):
            kv = head // (h // kh)  # query head -> its key/value group
            s = q[:, head] @ k[:, kv].T / np.sqrt(dh)
            s = np.where(causal, s, -np.inf)
            e = np.exp(s - s.max(axis=-1, keepdims=True))
            out[:, head] = (e / e.sum(axis=-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(l, -1) @ f[p + "attn_output.weight"].T
        m = _rms(x, f[p + "ffn_norm.weight"], eps)
        gate, up = m @ f[p + "ffn_gate.weight"].T, m @ f[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ f[p + "ffn_down.weight"].T
    x = _rms(x, f["output_norm.weight"], eps)
    head_w = f.get("output.weight", f["token_embd.weight"])
    return x @ head_w.T
