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
