"""Scoring code-edit predictions against gold edits.

A prediction is the model's output in one target format, turned into the edited function:

- ``whole``: the output is the edited function itself;
- ``udiff`` / ``search_replace``: the output is an edit of the function, applied strictly
  (``sandbox.tasks.edits.formats.apply``: a patch that does not apply leaves no function,
  and every function-level metric counts it as wrong).

Per item (``score``):

- ``exact``: the function equals the gold text (trailing whitespace at the end ignored);
  the primary metric.
- ``ast``: both parse and their ``ast.dump`` agree (formatting and comments ignored).
- ``parses``: the predicted function parses.
- ``applies``: the patch applied (``udiff`` and ``search_replace``; ``None`` for ``whole``).
- ``no_op``: the predicted function equals the input (nothing was edited).
- changed lines: the ``-``/``+`` lines of a line diff from the input, as multisets, for
  the prediction and for the gold edit; ``line_precision`` = shared / predicted (``None``
  when the prediction changes no line), ``line_recall`` = shared / gold.

``aggregate`` averages each metric over the items where it is defined, overall, by edit
kind and by diff-size bin (``1``, ``2-4``, ``5-16``, ``17+`` changed tokens), with counts.
``baseline`` gives the copy-the-input and oracle predictions of an item.
"""

from __future__ import annotations

import ast
import difflib
from collections import Counter, defaultdict

from sandbox.tasks.edits.formats import apply, render
from sandbox.tasks.edits.source import DIFF_BINS, diff_size_bin, n_changed_tokens

METRICS = ("exact", "ast", "parses", "applies", "no_op", "line_precision", "line_recall")


def _norm(text: str) -> str:
    return text.rstrip()


def _dump(src: str | None):
    if src is None:
        return None
    try:
        return ast.dump(ast.parse(src))
    except (SyntaxError, ValueError):
        return None


def changed_lines(before: str, after: str) -> Counter:
    """Multiset of ('-', line) and ('+', line) of a line diff before -> after."""
    out = Counter()
    a, b = before.splitlines(), after.splitlines()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out.update(("-", x) for x in a[i1:i2])
            out.update(("+", x) for x in b[j1:j2])
    return out


def to_function(before: str, output: str, fmt: str) -> tuple[str | None, bool | None]:
    """(edited function or None, patch applied or None) for a model output in ``fmt``
    (``sandbox.tasks.edits.formats``)."""
    return apply(before, output, fmt)


def score(before: str, gold: str, output: str | None, fmt: str = "whole") -> dict:
    """Metrics of one prediction (module doc). ``gold`` is the gold edited function;
    ``output=None`` (no prediction, e.g. the item did not fit the model) fails every metric."""
    pred, applies = (None, None) if output is None else to_function(before, output, fmt)
    gold_dump = _dump(gold)
    pred_dump = _dump(pred)
    gold_lines = changed_lines(before, gold)
    if pred is None:
        return {"exact": 0.0, "ast": 0.0, "parses": 0.0, "applies": None if fmt == "whole" else 0.0,
                "no_op": 0.0, "line_precision": None, "line_recall": 0.0 if gold_lines else None}
    pred_lines = changed_lines(before, pred)
    shared = sum((pred_lines & gold_lines).values())
    n_pred, n_gold = sum(pred_lines.values()), sum(gold_lines.values())
    return {
        "exact": float(_norm(pred) == _norm(gold)),
        "ast": float(pred_dump is not None and pred_dump == gold_dump),
        "parses": float(pred_dump is not None),
        "applies": None if applies is None else float(applies),
        "no_op": float(_norm(pred) == _norm(before)),
        "line_precision": shared / n_pred if n_pred else None,
        "line_recall": shared / n_gold if n_gold else None,
    }


def baseline(item, kind: str, fmt: str = "whole") -> str:
    """The output of the ``copy`` (the input unchanged) or ``oracle`` (the gold edit)
    baseline for an EditItem, in ``fmt``."""
    target = item.before if kind == "copy" else item.after
    if kind not in ("copy", "oracle"):
        raise ValueError(f"unknown baseline '{kind}' (choose copy or oracle)")
    return render(item.before, target, fmt)


def _mean(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for m in METRICS:
        vals = [r[m] for r in rows if r.get(m) is not None]
        out[m] = sum(vals) / len(vals) if vals else None
    return out


def aggregate(items, scores: list[dict]) -> dict:
    """{"all": means, "by_kind": {kind: means}, "by_bin": {bin: means}} over items and their
    ``score`` dicts (same order). Means skip undefined (None) values; ``n`` counts items."""
    by_kind, by_bin = defaultdict(list), defaultdict(list)
    for it, s in zip(items, scores, strict=True):
        by_kind[it.kind].append(s)
        n = it.n_changed_tokens  # None on a training-stream item: computed here
        by_bin[diff_size_bin(n if n is not None else n_changed_tokens(it.before, it.after))].append(s)
    return {"all": _mean(list(scores)),
            "by_kind": {k: _mean(v) for k, v in sorted(by_kind.items())},
            "by_bin": {b: _mean(by_bin[b]) for b in DIFF_BINS if b in by_bin}}
