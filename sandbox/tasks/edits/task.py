"""``data=stdlib_edits``: conditional (instruction, before) -> target sequences for training.

:class:`EditsTask` is the Hydra target of ``conf/data/stdlib_edits.yaml``. Where a corpus is
prepared into flat token arrays (``sandbox.data.prepare``), this task prepares into an
:class:`EditBatches` source that the trainer asks for batches of *conditional* sequences
(``sandbox.train`` uses any data object with a ``batch_source`` method this way).

Layout of one sequence, ``L = prompt_len + target_len`` tokens::

    [PAD ... PAD, instruction "\\n" before, BOS][target, EOS, EOS ... EOS]
     <------------- prompt_len (cond) ------------><------- target_len (canvas) ------->

* **Left-padded prompt of fixed length.** Every item's canvas starts at the same position
  ``P = prompt_len``, so one compiled sampler serves every item (an AR prompt of varying
  length would need one compilation per length) and a batch of items shares one layout.
  BOS ends the prompt (it never occurs in text, so it cannot be confused with code).
* **cond** ``[B, L]`` bool marks the prompt: the objectives never corrupt or score it
  (``cond=`` of ``AR`` / ``MDLM`` ``loss`` and ``nll``). AR: cross-entropy on the canvas only,
  the target given the prompt; masked diffusion: a clean prefix and a masked canvas
  (Sahoo et al. 2024's MDLM loss restricted to the canvas, the conditional form used for
  infilling / instruction following, e.g. LLaDA's SFT, Nie et al. 2025 eq. 5).
* **The canvas is the target padded with EOS.** Diffusion has to choose the length: it
  predicts EOS at every position after the target, so the canvas positions after the target
  are scored for both objectives (AR learns the trivial EOS -> EOS continuation; samplers
  with ``stop_at_eos`` stop at the first EOS).
* **Target formats** (``sandbox.tasks.edits.formats``): ``whole`` (the edited function),
  ``udiff`` (unified diff hunks relative to the function) and ``search_replace`` (old lines
  and their replacement, no line numbers: output that grows with the diff). Diffusion's
  ``inplace`` evaluation reads a ``whole`` run (``sandbox.tasks.edits.evaluate``).
* **Items that do not fit** (prompt longer than ``prompt_len`` - 1 or target longer than
  ``target_len`` - 1 tokens) are skipped in training (the next index of the stream is
  drawn, deterministically) and counted as failures in evaluation.
* **Batches are pure functions of (seed, step, row)**: row ``r`` of step ``s`` is item
  ``(s * B + r) * 16 + attempt`` of the run's :class:`~.dataset.EditSampler` stream, so a
  resumed or sharded run reads the same items.
* **Held-out loss.** ``eval_batches`` reads the frozen ``val`` items of the trained kinds
  and tiers that fit, in a fixed order; ``val_bpb`` is then nats per canvas token scaled to
  bits per byte of the target text (EOS padding included in the nats, not in the bytes).
* **Exact match during training.** ``make_eval_extra`` (the trainer's hook) decodes
  ``data.em_items`` fixed val items greedily at every evaluation and logs ``val_edit_em``
  (``sandbox.tasks.edits.learning``).
* **Tokenizer.** A trainable tokenizer (``tokenizer=bpe``) is trained on the train split's
  function sources and cached by their hash; bytes need nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sandbox.core.errors import UserError
from sandbox.tasks.edits.dataset import (
    EditItem,
    EditsData,
    StdlibEdits,
    check_augment_renames,
    check_kind_weights,
)
from sandbox.tasks.edits.extract import check_tiers
from sandbox.tasks.edits.formats import FORMATS, render
from sandbox.tasks.edits.kinds import SINGLE_KINDS, check_kinds

_TRIES = 16  # stream indices tried per batch row before an item fits
NATIVE = "native"  # the edit-native diffusion canvas (sandbox.tasks.edits.native): not a text format


def target_text(item: EditItem, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"data.format: unknown value '{fmt}' (choose one of {', '.join(FORMATS)})")
    return item.diff_text() if fmt == "udiff" else render(item.before, item.after, fmt)


def prompt_text(item: EditItem) -> str:
    return f"{item.instruction}\n{item.before}"


@dataclass
class Encoded:
    """One item laid out (module doc): tokens[L] int32, cond[L] bool, or why it does not fit."""

    tokens: np.ndarray | None
    cond: np.ndarray | None
    prompt_tokens: int
    target_tokens: int
    extra: dict = field(default_factory=dict)  # further batch fields of the row (a format's own)

    @property
    def fits(self) -> bool:
        return self.tokens is not None


class EditBatches:
    """The trainer's batch source for ``data=stdlib_edits`` (module doc). ``tokenizer`` and
    ``manifest`` make it stand in for a prepared corpus wherever a run is loaded."""

    conditional = True
    fields = ("cond",)  # the batch's keys besides "tokens" (an objective must accept them)

    def __init__(self, data: EditsData, tokenizer, fmt: str, kinds: tuple[str, ...], tiers: tuple[str, ...],
                 prompt_len: int, target_len: int, em_items: int = 0, augment_renames: int = 0,
                 kind_weights: dict[str, float] | None = None):
        self.data, self.tokenizer, self.format = data, tokenizer, fmt
        self.augment_renames = augment_renames  # renames of a training function before its edit
        self.kind_weights = dict(kind_weights) if kind_weights else None  # the training kind mix
        self.em_items = int(em_items)  # val items of the exact match at each evaluation (0: off)
        self.kinds, self.tiers = kinds, tiers
        self.prompt_len, self.target_len = prompt_len, target_len
        self.seq_len = prompt_len + target_len
        self.manifest = {"corpus": "stdlib_edits", "tokenizer": tokenizer.describe(), "edits": data.manifest,
                         "format": fmt, "kinds": list(kinds), "tiers": list(tiers)}
        self._samplers: dict[int, object] = {}
        val = [(e, self.target_bytes(it)) for it in data.items("val", kinds, tiers)
               if (e := self.encode(it)).fits]
        if not val:
            raise UserError(f"data: no val item of kinds {'/'.join(kinds)} and tiers {'/'.join(tiers)} "
                            f"fits prompt_len={prompt_len} and target_len={target_len}; raise them")
        self._val = [e for e, _ in val]
        self._val_bytes = [n for _, n in val]  # target bytes, for bits per byte

    @property
    def score_format(self) -> str:
        """The format the decoded text is scored in (``metrics.score``)."""
        return self.format

    def target_bytes(self, item: EditItem) -> int:
        """Bytes of an item's target text (bits per byte of the held-out loss)."""
        return len(target_text(item, self.format).encode())

    # -- layout ------------------------------------------------------------------------------
    def encode(self, item: EditItem, target: bool = True) -> Encoded:
        """The item's sequence (``target=False``: the prompt only, an all-EOS canvas)."""
        tok = self.tokenizer
        p = self.prompt_ids(item)
        t = tok.encode(target_text(item, self.format)) + [tok.eos_id] if target else []
        if len(p) > self.prompt_len or len(t) > self.target_len:
            return Encoded(None, None, len(p), len(t))
        tokens = np.full(self.seq_len, tok.eos_id, np.int32)
        tokens[:self.prompt_len] = tok.pad_id
        tokens[self.prompt_len - len(p):self.prompt_len] = p
        tokens[self.prompt_len:self.prompt_len + len(t)] = t
        cond = np.zeros(self.seq_len, bool)
        cond[:self.prompt_len] = True
        return Encoded(tokens, cond, len(p), len(t))

    def prompt_ids(self, item: EditItem) -> list[int]:
        """The prompt's tokens: ``instruction "\n" before`` and BOS (module doc)."""
        return self.tokenizer.encode(prompt_text(item)) + [self.tokenizer.bos_id]

    def prompt(self, item: EditItem) -> np.ndarray | None:
        """The left-padded prompt [prompt_len] of an item, or None when it does not fit."""
        e = self.encode(item, target=False)
        return None if e.tokens is None else e.tokens[:self.prompt_len]

    def decode_target(self, canvas) -> str:
        """Generated canvas tokens [target_len] -> the target text (up to the first EOS)."""
        ids = np.asarray(canvas)
        stop = np.flatnonzero(ids == self.tokenizer.eos_id)
        return self.tokenizer.decode(ids[:stop[0]] if len(stop) else ids)

    # -- the trainer's protocol --------------------------------------------------------------
    def check(self, seq_len: int, field: str = "train.seq_len") -> None:
        if seq_len != self.seq_len:
            raise UserError(f"{field}={seq_len} must equal data.prompt_len + data.target_len = "
                            f"{self.seq_len} for data=stdlib_edits; set {field}={self.seq_len} or change "
                            "the lengths")

    def _sampler(self, seed: int):
        if seed not in self._samplers:
            self._samplers[seed] = self.data.sampler(seed, self.kinds, self.tiers, self.kind_weights,
                                                     augment_renames=self.augment_renames)
        return self._samplers[seed]

    def train_batch(self, *, seed: int, step: int, batch_size: int, process_index: int = 0,
                    process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's rows of the global batch of ``step``: {"tokens": int32 [b, L],
        "cond": bool [b, L]}, b = batch_size // process_count."""
        b = batch_size // process_count
        stream = self._sampler(seed)
        rows = []
        for r in range(process_index * b, (process_index + 1) * b):
            for attempt in range(_TRIES):
                e = self.encode(stream[(step * batch_size + r) * _TRIES + attempt])
                if e.fits:
                    break
            else:
                raise UserError(f"data: {_TRIES} training items in a row do not fit prompt_len="
                                f"{self.prompt_len} / target_len={self.target_len}; raise them")
            rows.append(e)
        return _stack(rows)

    def _eval_rows(self, batch_size: int, max_batches: int | None) -> list[int]:
        n = len(self._val) if max_batches is None else min(len(self._val), batch_size * max_batches)
        return [i * len(self._val) // n for i in range(n)]  # evenly spaced over the kinds

    def eval_batches(self, *, batch_size: int, max_batches: int | None) -> Iterator[dict]:
        rows = self._eval_rows(batch_size, max_batches)
        for i in range(0, len(rows), batch_size):
            yield _stack([self._val[j] for j in rows[i:i + batch_size]])

    def eval_tokens_per_byte(self, *, batch_size: int, max_batches: int | None) -> float:
        """Canvas tokens per target byte over the items ``eval_batches`` reads."""
        rows = self._eval_rows(batch_size, max_batches)
        return len(rows) * self.target_len / sum(self._val_bytes[j] for j in rows)

    def describe(self) -> dict:
        return {"format": self.format, "prompt_len": self.prompt_len, "target_len": self.target_len,
                "kinds": list(self.kinds), "tiers": list(self.tiers), "val_items": len(self._val)}

    def make_eval_extra(self, *, graphdef, objective, layout):
        """The trainer's optional hook: exact match of greedy decoding on ``em_items`` fixed val
        items at every evaluation (``sandbox.tasks.edits.learning``); None when ``em_items`` is 0
        or the format is not one of the text formats (``NativeBatches`` has its own)."""
        if not self.em_items or self.format not in FORMATS:
            return None
        from sandbox.tasks.edits.learning import ExactMatchEval  # it imports this module

        return ExactMatchEval(self, graphdef, objective, layout, self.em_items)


def _stack(rows: Sequence[Encoded]) -> dict[str, np.ndarray]:
    """A batch {"tokens", "cond", *extra fields} of encoded rows."""
    out = {"tokens": np.stack([e.tokens for e in rows]), "cond": np.stack([e.cond for e in rows])}
    for k in rows[0].extra:
        out[k] = np.stack([e.extra[k] for e in rows])
    return out


@dataclass
class EditsTask:
    """``data=stdlib_edits`` (module doc). ``source`` builds the items (frozen sets, splits,
    the training stream); the other fields say what a run trains on. ``kinds: null`` means
    the six single edit kinds (compositions are evaluated, not trained, by default)."""

    source: StdlibEdits = field(default_factory=StdlibEdits)
    format: str = "whole"
    kinds: Sequence[str] | None = None
    tiers: Sequence[str] | None = ("micro",)
    prompt_len: int = 128
    target_len: int = 128
    native_slack: int = 16  # format=native: extra positions of a rewritten line's slot
    native_twin: bool = True  # format=native: the prompt ends with the old lines in the canvas's geometry
    em_items: int = 32  # val items whose exact match each evaluation logs (0: none)
    augment_renames: int = 0  # renames of a training function before its edit (EditSampler)
    kind_weights: dict | None = None  # kind -> relative weight in the training stream (None: uniform)
    name = "stdlib_edits"
    conditional = True

    def _check(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if self.format not in (*FORMATS, NATIVE):
            raise UserError(f"data.format: unknown value '{self.format}' (choose one of "
                            f"{', '.join((*FORMATS, NATIVE))}; diffusion's inplace variants evaluate a "
                            "whole run)")
        for f in ("prompt_len", "target_len", "native_slack"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 2:
                raise UserError(f"data.{f}: must be an integer >= 2, got {v!r}")
        check_augment_renames(self.augment_renames)
        kinds = check_kinds(self.kinds if self.kinds is not None else SINGLE_KINDS)
        check_kind_weights(self.kind_weights, kinds)
        if not isinstance(self.native_twin, bool):
            raise UserError(f"data.native_twin: must be true or false, got {self.native_twin!r}")
        if not isinstance(self.em_items, int) or isinstance(self.em_items, bool) or self.em_items < 0:
            raise UserError(f"data.em_items: must be an integer >= 0 (0: no exact match during training), "
                            f"got {self.em_items!r}")
        return kinds, check_tiers(self.tiers)

    def batch_source(self, tokenizer, cache_dir, progress: bool = True) -> EditBatches:
        kinds, tiers = self._check()
        data = self.source.load(cache_dir, progress=progress)
        if getattr(tokenizer, "trainable", False):
            texts = [f.source for f in data.functions["train"]]
            digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
            tokenizer.train(texts, Path(cache_dir).expanduser(), f"stdlib_edits-{digest}")
        args = (data, tokenizer, self.format, kinds, tiers, self.prompt_len, self.target_len)
        kw = {"em_items": self.em_items, "augment_renames": self.augment_renames,
              "kind_weights": self.kind_weights}
        if self.format == NATIVE:  # the edit-native canvas has its own layout (sandbox.tasks.edits.native)
            from sandbox.tasks.edits.native import NativeBatches
            return NativeBatches(*args, slack=self.native_slack, twin=self.native_twin, **kw)
        return EditBatches(*args, **kw)
