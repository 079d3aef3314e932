"""Edit-native diffusion: the canvas starts from the old function, the model picks the lines to
rewrite, then fills only those in parallel (``data.format=native`` with ``objective=edit_mdlm``).

The ``whole`` canvas makes a diffusion model regenerate every token of the function, so its
number of forwards follows the function's length; the ``oracle_positions`` canvas shows what
knowing the edit's location is worth, but it reads the gold answer. This format removes the
oracle: the model decides the location itself.

**Representation: line slots with an expand/delete reading of padding.** The unit of
rewriting is a source line (code edits are line-shaped: the six edit kinds change, insert or
delete whole lines; a rename rewrites every line that names the symbol). The old function's
lines are laid out on the canvas, each tokenised on its own (so line ``k`` owns a contiguous
run of tokens and concatenating the lines' texts gives the function back)::

    [PAD.., instruction "\\n" before, BOS][line_1][line_2] .. [line_n][EOS ..]       (source)
    [PAD.., instruction "\\n" before, BOS][line_1][slot for 2][line_3] .. [EOS ..]   (edit canvas)

A rewritten line becomes a *slot* of ``len(line) + slack`` positions that the masked
diffusion fills with the replacement text followed by ``[EOS]`` (read as "nothing here", as
after the target of a ``whole`` canvas; the samplers never draw ``[PAD]``); a slot may hold several lines
(an insertion: the new lines are attached to the line above them, or below at the very top)
or none (a deletion: all ``[EOS]``). So insertions and deletions of any number of lines and
in-line changes of any length up to ``slack`` extra tokens are representable with one binary
decision per line, in the spirit of DreamOn's expand/delete states (Wu et al. 2025,
arXiv 2602.01326), where a masked span grows or shrinks, and EdiT5's keep/rewrite tagging
before generation (Mallinson et al., EMNLP 2022). The line alignment is difflib's
line-level matching of before and after (the same one the ``search_replace`` format uses).

**Twin: the old function beside the canvas, in the canvas's geometry** (``data.native_twin``,
default on). A masked slot has to reproduce most of its old line (a renamed variable, a
swapped operator, a new argument change a few tokens of it). With the old function only in
the instruction's text, a fill position must *find* its old token by content at a distance
that differs for every line and item, which a small model learns slowly (the first recipe's
fill got 16% exact match even with the gold line flags). With the twin, the prompt ends with
the old lines laid out exactly like the canvas that follows (each flagged line padded with
``[EOS]`` to its slot's width), so every canvas position's old token sits exactly
``target_len`` positions earlier: a copy at one fixed relative offset, which rotary
attention represents directly. This is the layout form of position coupling (Cho et al.
2024, arXiv 2405.20671: give an output token the position of the input token it copies)::

    [PAD.., instruction, BOS][line_1][line_2 EOS..][line_3]..[EOS..][line_1][slot 2][line_3]..[EOS..]
     <prompt_len - target_len><------ twin: target_len -------------><---- canvas: target_len --->

The locate row's twin is the source canvas itself (no slots yet). ``native_twin=false`` keeps
the first layout (the prompt is ``instruction "\n" before``, BOS), for runs saved before it.

**Decoding (two phases, no oracle).** (1) *Locate*: one forward over the source canvas; the
model predicts ``[MASK]`` ("not final, rewrite me") or the token itself at each position, and a
line is rewritten when its mean probability of ``[MASK]`` exceeds 1/2. (2) *Fill*: the flagged
lines become all-``[MASK]`` slots and the run's masked-diffusion sampler fills them with
``infill`` (compiled once; the kept lines and the prompt are clean context). NFE = 1 + the
sampler's steps; an edit that the model thinks changes nothing costs one forward. The
``native_oracle_lines`` variant takes the gold line flags instead of phase 1: the upper bound
on what locating the edit is worth, beside the token-level oracles of a ``whole`` run.

**Training** (``sandbox.objectives.edit_mdlm``): the fill canvas is a masked-diffusion
example (the slots are the canvas, everything else is clean context) and the source canvas a
locate example (target ``[MASK]`` on the flagged lines' tokens, the token elsewhere): a
corruption of the old function toward the new one. Batches carry ``tokens``/``cond`` (the
fill example), ``source`` / ``source_cond`` / ``rewrite`` (the locate example).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from sandbox.core.errors import UserError
from sandbox.tasks.edits.dataset import EditItem
from sandbox.tasks.edits.task import EditBatches, Encoded


def split_lines(text: str) -> list[str]:
    """Lines with their newline kept: ``"".join(split_lines(t)) == t``."""
    return text.splitlines(keepends=True)


def align_lines(before: str, after: str) -> tuple[list[bool], list[str]]:
    """(rewrite[n], content[n]) over the ``n`` lines of ``before`` (module doc): which lines are
    rewritten and the text each rewritten line's slot holds (``""``: deleted). Keeping the
    unflagged lines and putting each flagged line's content in its place gives ``after``."""
    a, b = split_lines(before), split_lines(after)
    flags = [False] * len(a)
    content: list[list[str]] = [[] for _ in a]
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            continue
        new = b[j1:j2]
        if tag in ("replace", "delete"):
            n = i2 - i1
            for k in range(n):
                flags[i1 + k] = True
                content[i1 + k] = new[k:k + 1] if k < n - 1 else new[k:]
        else:  # insert: attach the new lines to the line above (below at the very top)
            if not a:
                raise ValueError("align_lines: the old function has no lines")
            host = i1 - 1 if i1 > 0 else 0
            own = content[host] if flags[host] else [a[host]]
            content[host] = own + new if host < i1 else new + own
            flags[host] = True
    return flags, ["".join(c) for c in content]


def apply_lines(before: str, flags, content) -> str:
    a = split_lines(before)
    return "".join(c if f else line for line, f, c in zip(a, flags, content, strict=True))


@dataclass
class Layout:
    """One item on the canvas (module doc). ``spans[k]`` = (start, end) of line ``k`` in the
    source canvas (relative to the canvas start)."""

    line_ids: list[list[int]]
    spans: list[tuple[int, int]]
    source: np.ndarray        # [target_len] int32: the old lines, then EOS


class NativeBatches(EditBatches):
    """The trainer's batch source for ``data.format=native`` (module doc). Rows carry the fill
    example (``tokens``, ``cond``) and the locate example (``source``, ``source_cond``,
    ``rewrite``); scoring reads the decoded function as a ``whole`` target."""

    fields = ("cond", "source", "source_cond", "rewrite")
    score_format = "whole"

    def __init__(self, data, tokenizer, fmt, kinds, tiers, prompt_len: int, target_len: int, *,
                 slack: int = 16, twin: bool = True, **kw):
        self.slack, self.twin = int(slack), bool(twin)
        # the instruction's share of the prompt: all of it, or what the twin leaves
        self.head_len = prompt_len - target_len if self.twin else prompt_len
        if self.head_len < 2:
            raise UserError(f"data.prompt_len={prompt_len} must exceed data.target_len={target_len} by at "
                            "least 2 with data.native_twin=true (the prompt holds the instruction and a "
                            "target_len copy of the old function); raise data.prompt_len")
        super().__init__(data, tokenizer, fmt, kinds, tiers, prompt_len, target_len, **kw)
        self.manifest["native_slack"] = self.slack
        self.manifest["native_twin"] = self.twin

    # -- layout ------------------------------------------------------------------------------
    def layout(self, before: str) -> Layout | None:
        """The source canvas of a function, or None when its lines do not fit the canvas."""
        tok = self.tokenizer
        ids = [tok.encode(line) for line in split_lines(before)]
        spans, pos = [], 0
        for line in ids:
            spans.append((pos, pos + len(line)))
            pos += len(line)
        if pos > self.target_len:
            return None
        source = np.full(self.target_len, tok.eos_id, np.int32)
        source[:pos] = [t for line in ids for t in line]
        return Layout(ids, spans, source)

    def slot_width(self, line: list[int]) -> int:
        return len(line) + self.slack

    def edit_canvas(self, lay: Layout, flags, content: list[str] | None = None, fill_id: int | None = None):
        """(canvas[target_len], known[target_len]) with the flagged lines as slots: filled with
        ``content`` and ``[EOS]`` (the gold fill example), or with ``fill_id`` (``[MASK]``, for
        decoding). None when the slots or a content do not fit."""
        tok = self.tokenizer
        parts, known = [], []
        for k, line in enumerate(lay.line_ids):
            if not flags[k]:
                parts.append(line)
                known.append(np.ones(len(line), bool))
                continue
            w = self.slot_width(line)
            if content is None:
                slot = [fill_id] * w
            else:
                new = tok.encode(content[k]) if content[k] else []
                if len(new) > w:
                    return None
                slot = new + [tok.eos_id] * (w - len(new))
            parts.append(slot)
            known.append(np.zeros(w, bool))
        n = sum(len(p) for p in parts)
        if n > self.target_len:
            return None
        canvas = np.full(self.target_len, tok.eos_id, np.int32)
        canvas[:n] = [t for p in parts for t in p]
        kn = np.ones(self.target_len, bool)
        kn[:n] = np.concatenate(known) if known else []
        return canvas, kn

    def flag_positions(self, lay: Layout, flags) -> np.ndarray:
        """bool [target_len]: the source-canvas positions of the flagged lines."""
        out = np.zeros(self.target_len, bool)
        for (s, e), f in zip(lay.spans, flags, strict=True):
            out[s:e] = f
        return out

    def line_flags(self, lay: Layout, p_rewrite: np.ndarray, threshold: float = 0.5) -> list[bool]:
        """Phase 1's decision: a line is rewritten when the mean of ``p_rewrite`` (the
        probability of ``[MASK]`` at each source-canvas position) over its tokens > threshold."""
        return [bool(e > s and float(np.mean(p_rewrite[s:e])) > threshold) for s, e in lay.spans]

    def twin_canvas(self, lay: Layout, flags=None) -> np.ndarray:
        """[target_len] the old lines in the geometry of the canvas they sit beside (module doc,
        "Twin"): each flagged line padded with ``[EOS]`` to its slot's width, so canvas position
        ``c`` and twin position ``c`` hold the same line's ``j``-th token; ``flags=None``: the
        source canvas itself. Only called when the slots fit (``edit_canvas`` checked them)."""
        if flags is None or not any(flags):
            return lay.source
        eos = self.tokenizer.eos_id
        ids = [t for line, f in zip(lay.line_ids, flags, strict=True)
               for t in (line + [eos] * self.slack if f else line)]
        out = np.full(self.target_len, eos, np.int32)
        out[:len(ids)] = ids
        return out

    def prompt_of(self, head: np.ndarray, lay: Layout, flags=None) -> np.ndarray:
        """The whole prompt [prompt_len]: the instruction head, then (``twin``) the old function
        in the geometry of the canvas that follows (``flags=None``: the source canvas's)."""
        return np.concatenate([head, self.twin_canvas(lay, flags)]) if self.twin else head

    def decode_canvas(self, canvas) -> str:
        """A filled edit canvas -> the edited function (every special id dropped: the slots'
        EOS padding and the tail alike)."""
        return self.tokenizer.decode(np.asarray(canvas))  # decode drops every special id

    def prompt_ids(self, item: EditItem) -> list[int]:
        """The head's tokens: ``instruction`` and BOS with the twin (the old function follows in
        the twin), else ``instruction "\n" before`` and BOS as for the text formats."""
        if not self.twin:
            return super().prompt_ids(item)
        return self.tokenizer.encode(item.instruction) + [self.tokenizer.bos_id]

    def source_row(self, item: EditItem):
        """(left-padded head [head_len], source Layout) of an item, or the head's token count
        when the head or the old lines do not fit (the prompt is :meth:`prompt_of` the two)."""
        p = self.prompt_ids(item)
        lay = self.layout(item.before) if len(p) <= self.head_len else None
        if lay is None:
            return len(p)
        head = np.full(self.head_len, self.tokenizer.pad_id, np.int32)
        head[self.head_len - len(p):] = p
        return head, lay

    # -- the trainer's protocol --------------------------------------------------------------
    def encode(self, item: EditItem, target: bool = True) -> Encoded:
        """The fill and locate rows of an item (``target=False``: the prompt only)."""
        row = self.source_row(item)
        if isinstance(row, int):
            return Encoded(None, None, row, 0)
        head, lay = row
        n_prompt = int((head != self.tokenizer.pad_id).sum())  # the head never holds [PAD]
        source = np.concatenate([self.prompt_of(head, lay), lay.source])  # the locate row
        if not target:
            return Encoded(source, None, n_prompt, 0)
        flags, content = align_lines(item.before, item.after)
        ec = self.edit_canvas(lay, flags, content)
        if ec is None:
            return Encoded(None, None, n_prompt, self.target_len + 1)
        canvas, known = ec
        clean = np.ones(self.prompt_len, bool)
        enc = Encoded(np.concatenate([self.prompt_of(head, lay, flags), canvas]),
                      np.concatenate([clean, known]), n_prompt, int((~known).sum()))
        canvas_start = np.zeros(self.prompt_len, bool)
        enc.extra = {"source": source,
                     "source_cond": np.concatenate([clean, np.zeros(self.target_len, bool)]),
                     "rewrite": np.concatenate([canvas_start, self.flag_positions(lay, flags)])}
        return enc

    def target_bytes(self, item: EditItem) -> int:
        """Bytes of the rewritten lines' new text (what the fill's bound is about)."""
        _, content = align_lines(item.before, item.after)
        return max(1, sum(len(c.encode()) for c in content))

    def decode_target(self, canvas) -> str:
        return self.decode_canvas(canvas)

    def eval_tokens_per_byte(self, *, batch_size: int, max_batches: int | None) -> float:
        """Slot positions per byte of the rewritten lines' new text: the held-out bound is
        about the fill given the gold location (the locate decision has no likelihood)."""
        rows = self._eval_rows(batch_size, max_batches)
        return sum(self._val[j].target_tokens for j in rows) / sum(self._val_bytes[j] for j in rows)

    def describe(self) -> dict:
        return {**super().describe(), "native_slack": self.slack, "native_twin": self.twin}

    def make_eval_extra(self, *, graphdef, objective, layout):
        """``val_edit_em`` at every evaluation, decoded natively (:class:`NativeExactMatch`)."""
        return NativeExactMatch(self, graphdef, objective, self.em_items) if self.em_items else None


# --- decoding ---------------------------------------------------------------------------------
def native_decoder(run, sampler, oracle: bool = False):
    """(decode, compile_s) for a native run (module doc: locate, then fill). ``run`` needs
    ``data`` (a :class:`NativeBatches`), ``graphdef``, ``objective`` and ``params`` (the
    default weights). ``decode(item, key, params=None) -> (function text | None, nfe,
    seconds)``; ``oracle`` takes the gold line flags instead of the locate forward (NFE then
    counts only the fill). Both phases are compiled here, before any timed call."""
    import time

    import jax
    import jax.numpy as jnp
    from flax import nnx

    src: NativeBatches = run.data
    p_len, graphdef = src.prompt_len, run.graphdef
    mask_id, kind = int(sampler.mask_id), run.objective.mask_kind

    def locate(params, x):  # x[1, L] -> P([MASK]) at each canvas position [target_len]
        logits = nnx.merge(graphdef, params)(x, mask_kind=kind)[0, p_len:].astype(jnp.float32)
        return jax.nn.softmax(logits, axis=-1)[:, mask_id]

    def fill(params, key, z):
        return sampler.infill(nnx.merge(graphdef, params), key, z, p_len)

    t0 = time.perf_counter()
    x0 = jnp.zeros((1, src.seq_len), jnp.int32)
    locate_c = jax.jit(locate).lower(run.params, x0).compile()
    fill_c = jax.jit(fill).lower(run.params, jax.random.PRNGKey(0), x0).compile()
    compile_s = time.perf_counter() - t0

    def decode(item, key, params=None):
        params = run.params if params is None else params
        row = src.source_row(item)
        if isinstance(row, int):
            return None, 0, 0.0
        head, lay = row
        t0 = time.perf_counter()
        nfe = 0
        if oracle:
            flags = align_lines(item.before, item.after)[0]
        else:
            x = jnp.asarray(np.concatenate([src.prompt_of(head, lay), lay.source])[None, :])
            flags = src.line_flags(lay, np.asarray(locate_c(params, x)))
            nfe = 1
        if not any(flags):
            return item.before, nfe, time.perf_counter() - t0
        ec = src.edit_canvas(lay, flags, fill_id=mask_id)
        if ec is None:  # the slots overflow the canvas: a failed edit, decided without a forward
            return "", nfe, time.perf_counter() - t0
        z = jnp.asarray(np.concatenate([src.prompt_of(head, lay, flags), ec[0]])[None, :])
        tokens, n = jax.block_until_ready(fill_c(params, key, z))
        out = src.decode_canvas(np.asarray(tokens)[0, p_len:])
        return out, nfe + int(n), time.perf_counter() - t0

    return decode, lambda: compile_s


class NativeExactMatch:
    """The trainer's ``val_edit_em`` for a native run (``sandbox.tasks.edits.learning`` for the
    record; here the items are decoded one at a time by :func:`native_decoder`, whose canvas
    depends on the locate answer, compiled at the first evaluation)."""

    def __init__(self, src: NativeBatches, graphdef, objective, n_items: int, seed: int = 0):
        from types import SimpleNamespace

        from sandbox.tasks.edits.evaluate import build_sampler
        from sandbox.tasks.edits.learning import em_items

        self.items = em_items(src, n_items)
        self.view = SimpleNamespace(data=src, graphdef=graphdef, objective=objective, params=None,
                                    tokenizer=src.tokenizer)
        self.sampler = build_sampler({}, self.view)  # the objective's edit_sampler, greedy
        self.seed, self.decode = seed, None

    def __call__(self, params, *, step: int | None = None) -> dict:
        import time

        import jax

        from sandbox.tasks.edits.learning import em_record

        compile_s = 0.0
        if self.decode is None:
            self.view.params = params
            self.decode, compiled = native_decoder(self.view, self.sampler)
            compile_s = compiled()
        t0 = time.perf_counter()
        key = jax.random.PRNGKey(self.seed)
        outs = [self.decode(it, jax.random.fold_in(key, i), params)[0] for i, it in enumerate(self.items)]
        return em_record(self.items, outs, self.view.data.score_format, time.perf_counter() - t0, compile_s)
