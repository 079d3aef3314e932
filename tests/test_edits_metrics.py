"""Edit metrics on hand-made predictions give hand-computed values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sandbox.tasks.edits.metrics import aggregate, baseline, changed_lines, score
from sandbox.tasks.edits.udiff import udiff

BEFORE = "def f(a, b):\n    x = a + b\n    return x\n"
GOLD = "def f(a, b):\n    x = a - b\n    return x\n"


def test_exact_prediction():
    s = score(BEFORE, GOLD, GOLD)
    assert s == {"exact": 1.0, "ast": 1.0, "parses": 1.0, "applies": None, "no_op": 0.0,
                 "line_precision": 1.0, "line_recall": 1.0}


def test_same_ast_other_formatting_is_not_exact():
    pred = "def f(a, b):\n    x = a-b   # spaced differently\n    return x\n"
    s = score(BEFORE, GOLD, pred)
    assert s["exact"] == 0.0 and s["ast"] == 1.0 and s["parses"] == 1.0
    # changed lines: pred {-x = a + b, +x = a-b ...}, gold {-x = a + b, +x = a - b}: 1 shared of 2
    assert s["line_precision"] == 0.5 and s["line_recall"] == 0.5


def test_copy_and_a_broken_prediction():
    s = score(BEFORE, GOLD, BEFORE)
    assert s["no_op"] == 1.0 and s["exact"] == 0.0 and s["line_precision"] is None
    assert s["line_recall"] == 0.0
    s = score(BEFORE, GOLD, "def f(a, b:\n")
    assert s["parses"] == 0.0 and s["ast"] == 0.0 and s["exact"] == 0.0


def test_udiff_outputs_are_applied_first():
    s = score(BEFORE, GOLD, udiff(BEFORE, GOLD), fmt="udiff")
    assert s["exact"] == 1.0 and s["applies"] == 1.0
    s = score(BEFORE, GOLD, "@@ -7,1 +7,1 @@\n-nothing here\n+x\n", fmt="udiff")
    assert s["applies"] == 0.0 and s["exact"] == 0.0 and s["line_precision"] is None


def test_search_replace_outputs_are_applied_first():
    from sandbox.tasks.edits.formats import search_replace

    s = score(BEFORE, GOLD, search_replace(BEFORE, GOLD), fmt="search_replace")
    assert s["exact"] == 1.0 and s["applies"] == 1.0
    missing = "<<<<<<< SEARCH\nnothing here\n=======\nx\n>>>>>>> REPLACE"
    s = score(BEFORE, GOLD, missing, fmt="search_replace")  # old lines not found: a failed apply
    assert s["applies"] == 0.0 and s["exact"] == 0.0 and s["line_precision"] is None


def test_no_output_fails_every_metric():
    """An item the model could not take (it did not fit) has no output: a failure in every
    metric, and no apply figure for the whole-function format."""
    for fmt, applies in (("whole", None), ("udiff", 0.0), ("search_replace", 0.0)):
        assert score(BEFORE, GOLD, None, fmt) == {"exact": 0.0, "ast": 0.0, "parses": 0.0, "applies": applies,
                                                  "no_op": 0.0, "line_precision": None, "line_recall": 0.0}


def test_changed_lines_is_a_multiset():
    c = changed_lines("a\nb\n", "a\nc\nc\n")
    assert c == {("-", "b"): 1, ("+", "c"): 2}


def test_aggregate_by_kind_and_bin():
    items = [SimpleNamespace(kind="swap_op", n_changed_tokens=1, before=BEFORE, after=GOLD),
             SimpleNamespace(kind="swap_op", n_changed_tokens=1, before=BEFORE, after=GOLD),
             SimpleNamespace(kind="rename", n_changed_tokens=6, before=BEFORE, after=GOLD)]
    scores = [score(BEFORE, GOLD, GOLD), score(BEFORE, GOLD, BEFORE), score(BEFORE, GOLD, GOLD)]
    agg = aggregate(items, scores)
    assert agg["all"]["exact"] == pytest.approx(2 / 3) and agg["all"]["n"] == 3
    assert agg["by_kind"]["swap_op"]["exact"] == 0.5 and agg["by_kind"]["rename"]["exact"] == 1.0
    assert agg["by_bin"]["1"]["no_op"] == 0.5 and agg["by_bin"]["5-16"]["n"] == 1
    assert agg["all"]["line_precision"] == 1.0          # the copy changes no line: not counted
    assert agg["all"]["applies"] is None                # whole format: undefined


def test_baselines():
    it = SimpleNamespace(before=BEFORE, after=GOLD)
    assert score(BEFORE, GOLD, baseline(it, "oracle", "udiff"), "udiff")["exact"] == 1.0
    assert score(BEFORE, GOLD, baseline(it, "oracle", "search_replace"), "search_replace")["exact"] == 1.0
    assert score(BEFORE, GOLD, baseline(it, "copy", "search_replace"), "search_replace")["no_op"] == 1.0
    assert score(BEFORE, GOLD, baseline(it, "copy"))["no_op"] == 1.0
    with pytest.raises(ValueError):
        baseline(it, "best")
