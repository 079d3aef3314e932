"""Llama GGUF weights into the sandbox's Transformer (``model=llama``), and its build options.

``llama_options(g)`` gives the Transformer keyword arguments a GGUF file declares (width,
depth, heads, key/value heads, FFN width, RoPE base, RMSNorm epsilon, tied output head
without rescaling), and ``llama_params(model, arrays, source)`` the model's parameter
state with the file's tensors in place (``arrays``: ``sandbox.core.pretrained.GGUF.arrays``,
float32 [out, in], Q/K rows already in rotate-half order). The tensor names are
llama.cpp's (``token_embd``, ``blk.N.attn_q`` ...); the mapping is the whole of the
"Llama compatibility": the block is the sandbox's pre-norm block, which is Llama's.

Design choices:
- Every shape is checked before anything is assigned: a file of another size than the
  configured model is one line naming the tensor, both shapes and what to do.
- The vocabulary: the file's tokens keep their ids and embedding rows; the sandbox's
  extra special tokens (``sandbox.data.tokenizers.GGUFTokenizer``: PAD, MASK, BOS after the
  file's ids) and the rows padding the table to a multiple of 128 start at the mean
  pretrained embedding (the usual start for added tokens: a plausible input, and, tied,
  an output logit near the average).
"""

from __future__ import annotations

import math

import numpy as np
from flax import nnx

from sandbox.core.errors import UserError


def llama_options(g) -> dict:
    """Transformer keyword arguments declared by a llama GGUF (``sandbox.core.pretrained.GGUF``)."""
    hp = g.hparams
    return {"d_model": hp["d_model"], "n_layers": hp["n_layers"], "n_heads": hp["n_heads"],
            "n_kv_heads": hp["n_kv_heads"], "d_ff": hp["d_ff"], "rope_base": hp["rope_base"],
            "norm_eps": hp["norm_eps"], "tie_embeddings": hp["tie_embeddings"], "tie_rescale": False}


def check_llama_options(model, g, where: str) -> None:
    """Refuse a model whose options that hold no weights (RoPE base, RMSNorm epsilon, the tied
    head's rescaling) differ from the file's: its weights would load and compute nonsense."""
    want = llama_options(g)
    have = {"rope_base": model.cfg["rope_base"], "norm_eps": model.cfg["norm_eps"],
            "tie_rescale": model.tie_rescale if model.tie else False}
    for key, value in have.items():
        w = want[key]
        same = math.isclose(float(value), float(w), rel_tol=1e-6) if key != "tie_rescale" else value == w
        if not same:
            raise UserError(f"{where}: the file declares {key}={w} but the model has model.{key}={value}; "
                            f"set model.{key}={w}")


def _assign(target, value, name: str, source: str) -> None:
    shape = tuple(target.get_value().shape)
    if tuple(value.shape) != shape:
        raise UserError(f"{source}: tensor {name} has shape {tuple(value.shape)} but the model's parameter "
                        f"has {shape}; configure the model like the file (model=llama with its sizes)")
    target.set_value(np.asarray(value, np.float32))


def llama_params(model, arrays: dict, source: str):
    """The model's ``nnx.Param`` state with the GGUF tensors ``arrays`` in place (``model`` is
    left unchanged). ``source`` names the file in error messages."""
    model = nnx.clone(model)
    if getattr(model, "time_conditioning", False):
        raise UserError(f"{source}: a Llama checkpoint has no time conditioning; set "
                        "model.time_conditioning=false")
    cfg = model.cfg
    need = ["token_embd.weight", "output_norm.weight"]
    for i in range(cfg["n_layers"]):
        need += [f"blk.{i}.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    missing = [n for n in need if n not in arrays]
    if missing:
        raise UserError(f"{source}: the file lacks {missing[0]} ({len(missing)} tensors missing); the model "
                        f"has {cfg['n_layers']} layers: set model.n_layers to the file's block count")
    extra_layers = [n for n in arrays if n.startswith(f"blk.{cfg['n_layers']}.")]
    if extra_layers:
        raise UserError(f"{source}: the file has more than model.n_layers={cfg['n_layers']} blocks; set "
                        "model.n_layers to the file's block count")
    untied = "output.weight" in arrays
    if model.tie == untied:
        raise UserError(f"{source}: the file's output head is {'untied' if untied else 'tied'}; set "
                        f"model.tie_embeddings={'false' if untied else 'true'}")

    emb = arrays["token_embd.weight"]  # [V_file, D]
    v_file, d = emb.shape
    table = model.embed.get_value()
    if d != cfg["d_model"] or v_file > table.shape[0]:
        raise UserError(f"{source}: token_embd.weight has shape {emb.shape} but the model's table is "
                        f"{tuple(table.shape)}; use the file's tokenizer (tokenizer=smollm2) and width")
    full = np.broadcast_to(emb.mean(axis=0), table.shape).copy()
    full[:v_file] = emb
    _assign(model.embed, full, "token_embd.weight", source)
    if not model.tie:
        head = np.broadcast_to(arrays["output.weight"].mean(axis=0), (table.shape[0], d)).copy()
        head[:v_file] = arrays["output.weight"]
        _assign(model.head, head.T, "output.weight", source)
    _assign(model.norm.scale, arrays["output_norm.weight"], "output_norm.weight", source)
    h, kh, dh = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    for i, blk in enumerate(model.blocks):
        p = f"blk.{i}."
        a = blk.attn
        if not all(hasattr(a, w) for w in ("wq", "wk", "wv", "wo")):
            raise UserError(f"{source}: model.mixer must be the default attention to load a Llama file")
        _assign(blk.norm1.scale, arrays[p + "attn_norm.weight"], p + "attn_norm.weight", source)
        _assign(blk.norm2.scale, arrays[p + "ffn_norm.weight"], p + "ffn_norm.weight", source)
        for w, n, heads in ((a.wq, "attn_q", h), (a.wk, "attn_k", kh), (a.wv, "attn_v", kh)):
            m = arrays[p + n + ".weight"]  # [heads * Dh, D]
            if m.shape != (heads * dh, cfg["d_model"]):
                raise UserError(f"{source}: tensor {p}{n}.weight has shape {m.shape}, expected "
                                f"{(heads * dh, cfg['d_model'])}; set model.n_heads / model.n_kv_heads "
                                "to the file's head counts")
            _assign(w, m.T.reshape(cfg["d_model"], heads, dh), p + n + ".weight", source)
        o = arrays[p + "attn_output.weight"]  # [D, H * Dh]
        _assign(a.wo, o.T.reshape(h, dh, cfg["d_model"]), p + "attn_output.weight", source)
        mlp = blk.mlp
        if not all(hasattr(mlp, w) for w in ("w_gate", "w_up", "w_down")):
            raise UserError(f"{source}: model.mlp must be the default SwiGLU to load a Llama file")
        _assign(mlp.w_gate, arrays[p + "ffn_gate.weight"].T, p + "ffn_gate.weight", source)
        _assign(mlp.w_up, arrays[p + "ffn_up.weight"].T, p + "ffn_up.weight", source)
        _assign(mlp.w_down, arrays[p + "ffn_down.weight"].T, p + "ffn_down.weight", source)
    return nnx.state(model, nnx.Param)


def build_llama(g, vocab_size: int | None = None, *, arrays: dict | None = None, n_layers: int | None = None,
                max_len: int | None = None, dtype: str = "float32", attention: str = "chunked",
                cache_dir=None):
    """The Transformer a llama GGUF declares, with its weights: (model, arrays).

    ``vocab_size``: the tokenizer's (default: the file's own tokens, what a judge needs);
    ``n_layers``: keep only the first layers (a check of the first blocks against an
    independent forward); ``arrays``: already converted tensors (else read, cached under
    ``cache_dir``)."""
    from sandbox.models.transformer import Transformer

    arrays = g.arrays(cache_dir) if arrays is None else arrays
    opts = llama_options(g)
    if n_layers is not None:
        opts["n_layers"] = int(n_layers)
        arrays = {k: v for k, v in arrays.items()
                  if not k.startswith("blk.") or int(k.split(".")[1]) < n_layers}
    model = Transformer(vocab_size=vocab_size or len(g.tokens), max_len=max_len or g.hparams["max_len"],
                        dtype=dtype, attention=attention, rngs=nnx.Rngs(0), name="llama", **opts)
    nnx.update(model, llama_params(model, arrays, str(g.path)))
    return model, arrays
