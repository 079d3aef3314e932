"""FLOP accounting for compute-matched comparisons.

Training FLOPs per token follow Kaplan et al. (2020) / Chinchilla (Hoffmann et al.
2022, App. F): ``6 N`` for the matmul parameters (forward 2N, backward 4N) plus the
attention scores and weighted sum, ``12 n_layers L d`` per token (full L x L matrix, as
those papers count it, whatever mask is used). ``N`` counts every matmul parameter,
including the output projection but not the embedding lookup. The objective's
``flops_factor`` scales the backbone cost (block diffusion runs on a doubled input).
"""

from __future__ import annotations


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: non-embedding + output head."""
    n = model.n_params(non_embedding=True)
    d = model.cfg["d_model"]
    return n + d * model.padded_vocab  # output projection (tied or not)


def train_flops_per_token(model, seq_len: int, objective=None) -> float:
    n_layers, d = model.cfg["n_layers"], model.cfg["d_model"]
    per_tok = 6 * matmul_params(model) + 12 * n_layers * seq_len * d
    return float(per_tok) * float(getattr(objective, "flops_factor", 1.0))


def forward_flops_per_token(model, seq_len: int) -> float:
    n_layers, d = model.cfg["n_layers"], model.cfg["d_model"]
    return float(2 * matmul_params(model) + 4 * n_layers * seq_len * d)
