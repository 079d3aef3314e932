"""Batches from a flat token array: random windows for training, fixed ones for eval.

Design choices:

* **Pure function of (seed, step, process index).** :func:`get_batch` draws the
  *global* batch's window starts from ``np.random.default_rng([seed, step])`` and
  returns this process's contiguous block of rows. A resumed run, or a run on any
  number of hosts, therefore reads exactly the rows an uninterrupted single-process
  run reads, with no iterator state to checkpoint.
* **Windows may cross document boundaries.** Documents are joined by EOS, as in
  nanoGPT; a window is any ``seq_len`` consecutive tokens (uniform over all
  ``len - seq_len + 1`` starts).
* **Evaluation is deterministic and unbiased in position.** :func:`eval_batches` tiles
  the split into non-overlapping windows and, when capped, takes windows evenly spaced
  over the whole split rather than its beginning.

Shapes: ``get_batch -> int32 [batch_size // process_count, seq_len]``,
``eval_batches -> int32 [<= batch_size, seq_len]`` per batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sandbox.core.errors import UserError


def check_seq_len(tokens: np.ndarray, seq_len: int, split: str,
                  field: str = "train.seq_len") -> None:
    """UserError unless ``tokens`` holds at least ``seq_len + 1`` tokens."""
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise UserError(f"{field}: must be a positive integer, got {seq_len!r}")
    if len(tokens) < seq_len + 1:
        raise UserError(
            f"{field}={seq_len} is too long for the {split} split, which has only "
            f"{len(tokens)} tokens (lower {field} or add data)"
        )


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    out = np.empty((len(starts), seq_len), dtype=np.int32)
    for i, s in enumerate(starts):  # row slices of a memmap: contiguous reads, no index array
        out[i] = tokens[s:s + seq_len]
    return out


def get_batch(tokens: np.ndarray, *, seed: int, step: int, batch_size: int, seq_len: int,
              process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Rows ``[p * b, (p + 1) * b)`` of the global batch of ``step``, ``b = batch_size // P``.

    Returns int32 ``[batch_size // process_count, seq_len]``.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size < 1 or batch_size % process_count:
        raise UserError(
            f"train.batch_size={batch_size} must be a positive multiple of the number of "
            f"processes ({process_count}); change train.batch_size"
        )
    check_seq_len(tokens, seq_len, "training")
    if seed < 0 or step < 0:
        raise UserError(f"seed ({seed}) and step ({step}) must be non-negative")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len + 1, size=batch_size)
    b = batch_size // process_count
    return _gather(tokens, starts[process_index * b:(process_index + 1) * b], seq_len)


def eval_windows(n_tokens: int, seq_len: int, n_windows: int | None) -> np.ndarray:
    """Start offsets of ``n_windows`` non-overlapping windows spread evenly (all if None)."""
    total = n_tokens // seq_len
    k = total if n_windows is None else min(n_windows, total)
    return (np.arange(k, dtype=np.int64) * total // max(k, 1)) * seq_len


def eval_batches(tokens: np.ndarray, *, batch_size: int, seq_len: int,
                 max_batches: int | None) -> Iterator[np.ndarray]:
    """Deterministic int32 ``[<= batch_size, seq_len]`` batches of non-overlapping windows.

    Without ``max_batches`` every window of the tiling is used once (the tail shorter
    than ``seq_len`` is dropped); with it, ``max_batches * batch_size`` windows evenly
    spaced over the split. The last batch may be smaller.
    """
    if batch_size < 1:
        raise UserError(f"eval batch_size must be positive, got {batch_size}")
    check_seq_len(tokens, seq_len, "evaluation", field="seq_len")
    starts = eval_windows(len(tokens), seq_len,
                          None if max_batches is None else max_batches * batch_size)
    for i in range(0, len(starts), batch_size):
        yield _gather(tokens, starts[i:i + batch_size], seq_len)


class LMBatches:
    """The trainer's batch source for a prepared corpus (``sandbox.data.prepare``): random
    windows of the training split (``get_batch``), fixed windows of ``val`` (``eval_batches``).

    A data config whose object has a ``batch_source(tokenizer, cache_dir, progress)`` method
    brings its own source instead (``sandbox.tasks.edits.task.EditBatches``: conditional
    sequences, batches as ``{"tokens", "cond"}``). Both answer the same four calls.
    ``unique_tokens`` keeps only the first N tokens of the split (the data-repetition study).
    """

    conditional = False

    def __init__(self, data, split: str, seq_len: int, unique_tokens: int | None = None):
        if split not in data.splits:
            raise UserError(f"train.train_split={split!r}: choose one of {', '.join(data.splits)}")
        check_seq_len(data.splits[split], seq_len, split)
        check_seq_len(data.splits["val"], seq_len, "val")
        tokens = data.splits[split]
        if unique_tokens is not None:
            if unique_tokens > len(tokens):
                raise UserError(f"train.unique_tokens={unique_tokens} exceeds the {len(tokens)} tokens of "
                                f"the {split} split; lower it or leave it null (the whole split)")
            tokens = tokens[:unique_tokens]
        self.data, self.tokens, self.seq_len = data, tokens, seq_len
        self.unique_tokens = int(len(tokens))

    def train_batch(self, *, seed: int, step: int, batch_size: int, process_index: int = 0,
                    process_count: int = 1) -> np.ndarray:
        return get_batch(self.tokens, seed=seed, step=step, batch_size=batch_size, seq_len=self.seq_len,
                         process_index=process_index, process_count=process_count)

    def eval_batches(self, *, batch_size: int, max_batches: int | None) -> Iterator[np.ndarray]:
        return eval_batches(self.data.splits["val"], batch_size=batch_size, seq_len=self.seq_len,
                            max_batches=max_batches)

    def eval_tokens_per_byte(self, **_) -> float:
        return self.data.tokens_per_byte("val")
