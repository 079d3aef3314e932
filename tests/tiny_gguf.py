"""A tiny llama GGUF file written by the tests with the ``gguf`` package (no download).

``write(path, ...)`` writes random weights (or all zeros: a judge whose every next token is
uniform) with Q and K stored as llama.cpp stores them, a byte-level BPE vocabulary (the 256
byte symbols, a few merges, control tokens first, as SmolLM2 has them) and the metadata
the loader reads. ``q8`` stores the FFN matrices as Q8_0 (dequantised by the loader);
``bad_quant`` stores one tensor in a type the ``gguf`` package cannot dequantise (Q8_1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r"]


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merged = [m.replace(" ", "") for m in MERGES]
    tokens = CONTROL + alphabet + merged
    types = [3] * len(CONTROL) + [1] * (len(tokens) - len(CONTROL))
    return tokens, types, list(MERGES)


def write(path, *, n_layers: int = 2, d: int = 32, heads: int = 4, kv_heads: int = 2, ff: int = 64,
          arch: str = "llama", zero: bool = False, q8: bool = False, bad_quant: bool = False,
          tied: bool = True, seed: int = 0, std: float = 0.3) -> Path:
    import gguf
    from gguf.quants import quantize

    path = Path(path)
    tokens, types, merges = vocabulary()
    v, dh = len(tokens), d // heads
    rng = np.random.default_rng(seed)

    def w(*shape, scale=std):
        if zero:
            return np.zeros(shape, np.float32)
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_block_count(n_layers)
    wr.add_context_length(256)
    wr.add_embedding_length(d)
    wr.add_feed_forward_length(ff)
    wr.add_head_count(heads)
    wr.add_head_count_kv(kv_heads)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("smollm")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(merges)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)

    def add(name, a, qtype=None):
        if qtype is None:
            wr.add_tensor(name, a)
        else:
            wr.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)

    add("token_embd.weight", w(v, d, scale=1.0))
    add("output_norm.weight", 1.0 + w(d, scale=0.1))
    if not tied:
        add("output.weight", w(v, d))
    q8t = gguf.GGMLQuantizationType.Q8_0 if q8 else None
    for i in range(n_layers):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", 1.0 + w(d, scale=0.1))
        add(p + "ffn_norm.weight", 1.0 + w(d, scale=0.1))
        add(p + "attn_q.weight", w(heads * dh, d))
        add(p + "attn_k.weight", w(kv_heads * dh, d))
        add(p + "attn_v.weight", w(kv_heads * dh, d))
        add(p + "attn_output.weight", w(d, heads * dh))
        add(p + "ffn_gate.weight", w(ff, d), q8t)
        add(p + "ffn_up.weight", w(ff, d), q8t)
        if bad_quant and i == 0:  # raw Q8_1 blocks, which gguf.quants cannot dequantise
            q81 = gguf.GGMLQuantizationType.Q8_1
            block, size = gguf.GGML_QUANT_SIZES[q81]
            wr.add_tensor(p + "ffn_down.weight", np.zeros((d, ff // block * size), np.uint8), raw_dtype=q81)
        else:
            add(p + "ffn_down.weight", w(d, ff), q8t)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path
