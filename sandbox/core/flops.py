"""FLOP accounting for compute-matched comparisons.

Training FLOPs per token follow Kaplan et al. (2020) / Chinchilla (Hoffmann et al.
2022, App. F): ``6 N`` for the matmul parameters (forward 2N, backward 4N) plus the
attention scores and weighted sum, ``12 n_layers L d`` per token (full L x L matrix, as
those papers count it, whatever mask is used). ``N`` counts every matmul parameter,
including the output projection but not the embedding lookup. The objective's
``flops_factor`` is the backbone's input length per window token (block diffusion reads
``[z_t ; x]``, twice the window).
"""

from __future__ import annotations


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: non-embedding + output head."""
    n = model.n_params(non_embedding=True)
    d = model.cfg["d_model"]
    return n + d * model.padded_vocab  # output projection (tied or not)


def train_flops_per_token(model, seq_len: int, objective=None) -> float:
    """Training FLOPs per window token. The backbone reads ``flops_factor`` x seq_len tokens
    per window (2 for block diffusion), so the matmul term scales by the factor and the
    attention term, quadratic in the input length, by its square."""
    n_layers, d = model.cfg["n_layers"], model.cfg["d_model"]
    f = float(getattr(objective, "flops_factor", 1.0))
    return f * (6 * matmul_params(model) + 12 * n_layers * (f * seq_len) * d)


# --- decoding: the work of one forward pass ---------------------------------------------------
def forward_work(model, batch: int, q: float, kv: float, dtype_bytes: int | None = None) -> dict:
    """FLOPs and bytes moved by one forward of ``batch`` rows that compute ``q`` token positions
    each, every position attending to ``kv`` key positions (its own included): the inputs of
    the roofline latency model (``analysis.roofline``).

    - **FLOPs**: ``2 N`` per computed position for the matmul parameters (:func:`matmul_params`)
      plus ``4 n_layers d kv`` for the attention scores and weighted sum.
    - **Bytes**: every parameter read once (``weights``: the embedding table too, an upper
      bound when it is not tied to the head); the keys and values of ``kv`` positions per row,
      read from a cache or written by the pass (``kv``: ``2 n_layers n_kv_heads head_dim``
      values per position); and the activations each computed position writes and reads
      again (``activations``: per layer the residual stream, norms, q/k/v, attention output
      and the MLP's ``3 d_ff``, each written once and read once, plus the logits over the
      padded vocabulary in float32). Caches between the layers of a real chip (L2, SRAM) make
      the activation traffic an upper bound; weights and KV dominate where it matters
      (decoding a few positions per pass).

    Shapes are read from ``model.cfg`` (``d_model``, ``n_layers``, ``n_kv_heads``, ``head_dim``,
    ``d_ff``; a backbone without them counts attention as multi-head and the MLP as 4 d)."""
    cfg = model.cfg
    n_layers, d = int(cfg["n_layers"]), int(cfg["d_model"])
    n_kv = int(cfg.get("n_kv_heads") or cfg.get("n_heads") or 1)
    head_dim = int(cfg.get("head_dim") or d // max(1, int(cfg.get("n_heads") or 1)))
    d_ff = int(cfg.get("d_ff") or 4 * d)
    size = int(dtype_bytes or getattr(getattr(model, "dtype", None), "itemsize", 4) or 4)
    positions = float(batch) * float(q)
    flops = 2.0 * positions * matmul_params(model) + 4.0 * n_layers * d * positions * float(kv)
    weights = float(model.n_params(non_embedding=False)) * size
    kv_bytes = 2.0 * n_layers * n_kv * head_dim * float(batch) * float(kv) * size
    acts = positions * (2.0 * n_layers * (8 * d + 3 * d_ff) * size + 2.0 * model.padded_vocab * 4)
    return {"flops": flops, "bytes": weights + kv_bytes + acts, "weight_bytes": weights,
            "kv_bytes": kv_bytes, "activation_bytes": acts}


def call_work(sampler, model, batch: int, length: int, prompt_len: int, nfe: float,
              computed: float | None = None) -> dict:
    """The forwards one sampler call made (its ``forward_plan``) with each pass's FLOPs and bytes
    (:func:`forward_work`): ``{passes: [{count, batch, q, kv, flops, bytes, logits}], n_layers,
    flops, bytes}``, what ``analysis.roofline`` predicts a call's latency from on named hardware
    (``batch x q`` is the row count of the pass's matmuls, which sets their efficiency on a CPU).
    ``logits`` is the logit values the sampler draws from after the pass (``batch x drawn
    positions x vocab``: the exact categorical draw costs per value, and on a CPU a whole-canvas
    draw costs ~10-15% of the tiny model's forward)."""
    passes = []
    for count, b, q, kv, *drawn in sampler.forward_plan(batch, length, prompt_len, nfe, computed):
        w = forward_work(model, b, q, kv)
        drawn = float(drawn[0]) if drawn else float(q)   # positions whose logits the sampler draws from
        passes.append({"count": count, "batch": b, "q": q, "kv": kv, "flops": w["flops"],
                       "bytes": w["bytes"], "logits": float(b) * drawn * int(model.vocab_size)})
    return {"passes": passes, "n_layers": int(model.cfg["n_layers"]),
            "flops": sum(x["count"] * x["flops"] for x in passes),
            "bytes": sum(x["count"] * x["bytes"] for x in passes)}
