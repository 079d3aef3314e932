"""Optimizer recipe shared by every objective: AdamW, linear warmup, cosine decay, clipping.

``make_optimizer(cfg, total_steps) -> (optax.GradientTransformation, schedule)``.
Weight decay skips vectors (norm scales): decaying them only hurts.
"""

from __future__ import annotations

import jax
import optax

from sandbox.core.errors import UserError


def make_optimizer(cfg, total_steps: int):
    lr = float(cfg.lr)
    if not lr > 0:
        raise UserError(f"optim.lr={cfg.lr} must be positive")
    warmup = max(1, min(int(cfg.warmup_steps), max(1, total_steps // 5)))
    sched = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=lr * float(cfg.min_lr_ratio))
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(float(cfg.grad_clip)) if cfg.grad_clip else optax.identity(),
        optax.adamw(sched, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps),
                    weight_decay=float(cfg.weight_decay), mask=decay_mask),
    )
    return tx, sched
