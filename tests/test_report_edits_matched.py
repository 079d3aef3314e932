"""Code edits in the report: latency at matched exact match and the crossover diff size
(analysis.edits.matched_latency / crossover, analysis.sections.edits.matched_table).

Two small run folders: ``alpha`` (bound exact) and ``beta`` (bound upper). Their labels name no
known objective, so the comparison can only come from the recorded bounds.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis import edits
from analysis.context import Context
from analysis.sections import edits as edits_section

BINS = ["1", "2-4", "5-16", "17+"]
FIG = "edits_matched_latency.png"
NATIVE = "beta/tiny native mdm"
ORACLE = "beta/tiny native_oracle_lines mdm"
WHOLE = "alpha/tiny whole ar"


def _lat(fmt, item, b, latency, exact, with_id=True):
    row = {"kind": "edits_latency", "model": "tiny", "format": fmt,
           "sampler": "ar" if fmt == "whole" else "mdm", "settings": {}, "edit_kind": "rename",
           "diff_tokens": 1, "diff_bin": b, "function_bytes": 100,
           "latency_s": latency, "nfe": 10, "exact": exact}
    return {"id": item, **row} if with_id else row


def _summary(fmt):
    return {"kind": "edits", "model": "tiny", "format": fmt, "sampler": "ar" if fmt == "whole" else "mdm",
            "settings": {}, "n": 40, "metrics": {"exact_match": 0.5}, "diff_bins": BINS}


def _write(run, label, bound, lines):
    run.mkdir(parents=True)
    meta = {"kind": "meta", "objective_label": label, "bound": bound}
    (run / "metrics.jsonl").write_text(json.dumps(meta) + "\n")
    (run / "eval_edits.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def _items():
    """(id, bin, alpha whole latency, alpha right, beta native latency, beta right) per test item.

    native against whole, items both right: bin 1 6 items, native 30 ms / whole 10 ms (slower);
    2-4 5 items, 15 / 20 ms; 5-16 5 items, 20 / 40 ms (faster in both); 17+ 2 items, 100 / 50 ms
    (too few to count). Crossover: from 2-4. Items only one side got right do not count."""
    rows = []
    for b, n, d, a in (("1", 6, 0.030, 0.010), ("2-4", 5, 0.015, 0.020), ("5-16", 5, 0.020, 0.040),
                       ("17+", 2, 0.100, 0.050)):
        rows += [(f"{b}-{i}", b, a, True, d, True) for i in range(n)]
        rows += [(f"{b}-wrong-d", b, a, True, 0.0001, False), (f"{b}-wrong-a", b, 9.0, False, d, True)]
    return rows


def _runs(tmp_path, *, solved=True, ids=True, old_rows=0):
    whole = [_summary("whole")]
    beta = [_summary("native"), _summary("native_oracle_lines")]
    for item, b, a, a_ok, d, d_ok in _items():
        whole.append(_lat("whole", item, b, a, a_ok, ids))
        beta.append(_lat("native", item, b, d, d_ok and solved, ids))
        # the oracle: always twice as slow as whole, only bins 1 and 2-4 (5 items each)
        if b in ("1", "2-4") and not item.endswith(("-5", "wrong-a", "wrong-d")):
            beta.append(_lat("native_oracle_lines", item, b, 2 * a, solved, ids))
    beta.insert(1, _lat("native", "1-0", "1", 5.0, False, ids))  # evaluated twice: the last line counts
    beta += [_lat("native", None, "1", 0.0001, True, False) for _ in range(old_rows)]
    return [_write(tmp_path / "runs" / "alpha", "alpha", "exact", whole),
            _write(tmp_path / "runs" / "beta", "beta", "upper", beta)]


def _section(runs, out):
    out.mkdir(exist_ok=True)
    ctx = Context(runs_glob="", runs=runs, metrics=pd.DataFrame(), table=pd.DataFrame(), out=out)
    return edits_section.section(ctx)


def test_matched_latency_joins_on_ids_of_items_both_got_right(tmp_path):
    _, lat = edits.load_edits(_runs(tmp_path, old_rows=3))
    m, skipped = edits.matched_latency(lat, BINS)
    assert skipped == 3
    assert set(zip(m["d_series"], m["a_series"])) == {(NATIVE, WHOLE), (ORACLE, WHOLE)}
    pair = m[m["d_series"] == NATIVE]
    assert pair["bin"].tolist() == BINS and pair["n"].tolist() == [6, 5, 5, 2]
    assert pair["d_latency_s"].tolist() == pytest.approx([0.030, 0.015, 0.020, 0.100])
    assert pair["a_latency_s"].tolist() == pytest.approx([0.010, 0.020, 0.040, 0.050])
    assert pair["ratio"].tolist() == pytest.approx([3.0, 0.75, 0.5, 2.0])
    assert not pair["d_oracle"].any() and m[m["d_series"] == ORACLE]["d_oracle"].all()
    assert edits.crossover(pair) == {"bin": "2-4", "bins": ["1", "2-4", "5-16"], "few": ["17+"]}
    oracle = m[m["d_series"] == ORACLE]
    assert oracle["n"].tolist() == [5, 5, 0, 0]
    assert edits.crossover(oracle) == {"bin": None, "bins": ["1", "2-4"], "few": []}
    assert edits.crossover(pair.assign(n=[1, 2, 3, 4]))["bin"] is None   # nothing with enough items
    assert edits.is_oracle("inplace_oracle_length") and not edits.is_oracle("native")


def test_section_shows_the_matched_table_crossover_and_figure(tmp_path):
    md = _section(_runs(tmp_path), tmp_path / "out")
    assert ("| beta/tiny native mdm | alpha/tiny whole ar | 3.00 (30.0 / 10.0 ms, n=6) | "
            "0.75 (15.0 / 20.0 ms, n=5) | 0.50 (20.0 / 40.0 ms, n=5) | "
            "2.00 (100.0 / 50.0 ms, n=2, too few) | from 2-4 |") in md
    assert ("| beta/tiny native_oracle_lines mdm (oracle) | alpha/tiny whole ar | "
            "2.00 (20.0 / 10.0 ms, n=5) | 2.00 (40.0 / 20.0 ms, n=5) | – | – | never in these bins |") in md
    assert ("- beta/tiny native mdm against alpha/tiny whole ar: faster from 2-4 changed tokens up "
            "(bins counted: 1, 2-4, 5-16; under 5 items in 17+, not counted).") in md
    assert ("- beta/tiny native_oracle_lines mdm (oracle) against alpha/tiny whole ar: "
            "not faster in the largest bin counted: never in these bins (bins counted: 1, 2-4).") in md
    assert "nan" not in md.lower() and "without an item `id`" not in md
    assert f"![{FIG}]({FIG})" in md
    assert (tmp_path / "out" / FIG).stat().st_size > 1000


def test_no_item_solved_by_both_is_one_line(tmp_path):
    md = _section(_runs(tmp_path, solved=False), tmp_path / "out")
    assert ("_Latency cannot be compared at matched exact match: no test item was solved exactly by both a "
            "diffusion and an exact-likelihood series._") in md
    assert "| diffusion series |" not in md and "nan" not in md.lower()
    assert FIG not in md and not (tmp_path / "out" / FIG).exists()


def test_rows_without_ids_are_skipped_with_a_note(tmp_path):
    md = _section(_runs(tmp_path, old_rows=3), tmp_path / "out")
    note = ("_3 latency rows without an item `id` (files written before ids were recorded) are left out "
            "of the comparison at matched exact match._")
    assert note in md and "| 3.00 (30.0 / 10.0 ms, n=6) |" in md        # the table as without them
    # files written before ids: the note only, no table and no claim that nothing was solved
    md = _section(_runs(tmp_path / "old", ids=False), tmp_path / "old_out")
    assert "latency rows without an item `id`" in md
    assert "| diffusion series |" not in md and "cannot be compared" not in md and FIG not in md
