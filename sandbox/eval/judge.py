"""A pretrained judge no model in the comparison trained: text scored in bits per byte.

``TextJudge("smollm2_135m")`` loads a llama GGUF (``sandbox.core.pretrained``) into the
sandbox's own Transformer (``sandbox.models.pretrained``) with the file's tokenizer
(``sandbox.data.tokenizers.GGUFTokenizer``) and scores *text*, so samples of any sandbox
tokenizer (bytes, a local BPE) are judged on one scale:

    judge bits per byte = sum over texts of -log2 p_judge(text) / sum of UTF-8 bytes

with each text read after the judge's document separator (``<|endoftext|>``), as its
pretraining documents start. The ratio is pooled over texts (long texts weigh more, as in
a per-byte rate); ``bits_per_byte`` also returns its standard error over texts (the delta
method on the ratio estimator, texts as the units, as ``gen_perplexity`` does). Lower is
better; read it beside the same judge's figure for held-out text of the same length.

Speed: texts are sorted by length and batched in rows padded to a multiple of
``bucket`` tokens, so the jitted scorer compiles once per bucket length; the NLL is
computed inside the compiled function (no [B, L, V] array leaves it). A text longer than
``window`` tokens is scored in consecutive windows, each after the separator.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from sandbox.core.errors import UserError


def bits_per_byte_ratio(bits: np.ndarray, nbytes: np.ndarray) -> tuple[float, float]:
    """Pooled bits per byte sum(bits) / sum(bytes) over texts, and its standard error (delta
    method on the ratio; NaN with fewer than two texts). Texts of zero bytes are ignored."""
    bits, nbytes = np.asarray(bits, np.float64), np.asarray(nbytes, np.float64)
    keep = nbytes > 0
    bits, nbytes = bits[keep], nbytes[keep]
    if not len(bits):
        return float("nan"), float("nan")
    r = bits.sum() / nbytes.sum()
    n = len(bits)
    if n < 2:
        return float(r), float("nan")
    resid = bits - r * nbytes
    return float(r), float(math.sqrt(n / (n - 1) * float(np.sum(resid ** 2))) / nbytes.sum())


class TextJudge:
    """A pretrained causal LM from a GGUF file, scoring texts (module doc).

    ``weights``: ``gguf:PATH`` or a ``conf/pretrained`` name; ``cache_dir``: where the converted
    weights are cached; ``batch_size`` rows per call; ``window``: longest scored span in
    judge tokens; ``bucket``: row lengths are padded to a multiple of it."""

    def __init__(self, weights: str = "smollm2_135m", *, cache_dir=".cache/sandbox", batch_size: int = 32,
                 window: int = 1024, bucket: int = 32, dtype: str = "float32", progress: bool = False):
        from sandbox.core.pretrained import open_gguf
        from sandbox.data.tokenizers import GGUFTokenizer
        from sandbox.models.pretrained import build_llama

        if batch_size < 1 or window < 2 or bucket < 1:
            raise UserError(f"judge: batch_size={batch_size}, window={window}, bucket={bucket} must be "
                            "positive (window at least 2)")
        t0 = time.perf_counter()
        self.weights = str(weights)
        self.g = open_gguf(self.weights, "judge")
        self.tokenizer = GGUFTokenizer.from_gguf(self.g)  # the file is read once
        self.window = min(int(window), int(self.g.hparams["max_len"]) - 1)
        model, _ = build_llama(self.g, max_len=self.window + 1, dtype=dtype, cache_dir=cache_dir)
        self.graphdef, self.params = nnx.split(model, nnx.Param)
        self.n_params = model.n_params(non_embedding=False)
        self.batch_size, self.bucket, self.progress = int(batch_size), int(bucket), progress
        self.sep = self.tokenizer.eos_id
        self.load_s = time.perf_counter() - t0
        self._score = jax.jit(self._nll_rows)

    def describe(self) -> dict:
        return {"weights": self.weights, "file": Path(self.g.path).name, "arch": self.g.arch,
                "params": self.n_params, "window": self.window}

    def _nll_rows(self, params, tokens, valid):
        """tokens[B, W+1] (separator first), valid[B, W] -> NLL nats [B] of tokens[:, 1:]."""
        model = nnx.merge(self.graphdef, params)
        logits = model(tokens[:, :-1], mask_kind="causal")
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(valid, nll, 0.0), axis=-1)

    def _rows(self, texts):
        """(row tokens list, owner index per row): each text's ids cut into windows."""
        rows, owner = [], []
        for n, ids in enumerate(self.tokenizer.encode_many(list(texts))):
            for i in range(0, len(ids), self.window):
                rows.append(np.asarray(ids[i:i + self.window], np.int32))
                owner.append(n)
        return rows, np.asarray(owner, np.int64)

    def nll_bits(self, texts) -> np.ndarray:
        """-log2 p(text) per text [N] (0 for an empty text)."""
        texts = list(texts)
        rows, owner = self._rows(texts)
        out = np.zeros(len(rows), np.float64)
        order = np.argsort([len(r) for r in rows], kind="stable")
        b = self.batch_size
        bar = tqdm(total=len(rows), disable=not self.progress, desc="judge", unit="text")
        for i in range(0, len(order), b):
            idx = order[i:i + b]
            longest = max(len(rows[j]) for j in idx)
            w = max(self.bucket, self.bucket * math.ceil(longest / self.bucket))
            tok = np.full((b, w + 1), self.sep, np.int32)
            valid = np.zeros((b, w), bool)
            for r, j in enumerate(idx):
                tok[r, 1:1 + len(rows[j])] = rows[j]
                valid[r, :len(rows[j])] = True
            nll = np.asarray(self._score(self.params, jnp.asarray(tok), jnp.asarray(valid)), np.float64)
            out[idx] = nll[:len(idx)] / math.log(2)
            bar.update(len(idx))
        bar.close()
        return np.bincount(owner, out, minlength=len(texts)) if len(rows) else np.zeros(len(texts))

    def bits_per_byte(self, texts) -> tuple[float, float]:
        """Pooled judge bits per UTF-8 byte of ``texts`` and its standard error (module doc)."""
        texts = list(texts)
        return bits_per_byte_ratio(self.nll_bits(texts), [len(t.encode("utf-8")) for t in texts])
