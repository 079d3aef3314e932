"""``eval=edits test_file=PATH``: a user's JSONL edits become the generators' EditItems, every
bad line is refused with its line number, and the results name the file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import REPO, compose
from omegaconf import OmegaConf
from test_edits_task import EDIT_DATA, SOURCE  # the small module set: frozen sets in about a second

from sandbox.core.errors import UserError
from sandbox.tasks.edits.external import DEFAULT_KIND, read_edit_file
from sandbox.tasks.edits.task import target_text

FIELDS = ("id", "instruction", "before", "after", "udiff", "n_changed_tokens", "diff_bin", "tier")
GOOD = {"instruction": "Rename x to y.", "before": "def f(x):\n    return x + 1\n",
        "after": "def f(y):\n    return y + 1\n"}


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def data(sandbox_cache):
    return SOURCE.load(sandbox_cache, progress=False)


@pytest.fixture(scope="module")
def frozen(data):
    """Frozen test items of three kinds, a composition among them (the generators' own)."""
    items = data.items("test")
    return [next(it for it in items if it.kind == k) for k in ("rename", "swap_op", "compose2")]


def test_reader_builds_the_items_the_generators_build(frozen, tmp_path):
    rows = [{"instruction": it.instruction, "before": it.before, "after": it.after, "kind": it.kind}
            for it in frozen]
    path = _write(tmp_path / "e.jsonl", [rows[0], "", "   ", rows[1], rows[2], GOOD])
    f = read_edit_file(path)
    assert [it.kind for it in f.items] == ["rename", "swap_op", "compose2", DEFAULT_KIND]
    for mine, gold in zip(f.items, frozen):
        assert {k: getattr(mine, k) for k in FIELDS} == {k: getattr(gold, k) for k in FIELDS}
        for fmt in ("whole", "udiff", "search_replace"):
            assert target_text(mine, fmt) == target_text(gold, fmt)
    assert [f.lines[it.id] for it in f.items] == [1, 4, 5, 6]  # blank lines skipped, still counted
    assert f.items[3].n_changed_tokens == 2 and f.items[3].diff_bin == "2-4" and f.items[3].qualname == "f"
    digest = hashlib.sha256((tmp_path / "e.jsonl").read_bytes()).hexdigest()
    assert f.describe() == {"test_file": str(tmp_path / "e.jsonl"), "test_file_sha256": digest[:12]}
    assert [it.kind for it in f.select(["compose2", DEFAULT_KIND])] == ["compose2", DEFAULT_KIND]
    with pytest.raises(UserError, match=r"kinds: literal not in test_file=.* \(its kinds: compose2, ext"):
        f.select("literal")
    assert f.label([{"id": f.items[1].id, "output": None}]) == [
        {"id": f.items[1].id, "output": None, **f.describe(), "line": 4}]


def test_items_of_any_kind_label_score_like_the_frozen_ones(data, frozen, tmp_path):
    from sandbox.tasks.edits.evaluate import baselines, select_items
    from sandbox.tasks.edits.metrics import aggregate, score

    rows = [{"instruction": it.instruction, "before": it.before, "after": it.after, "kind": k}
            for it, k in zip(frozen, ("my kind", "my kind", "compose2"))]
    rows += [GOOD, {**GOOD, "instruction": "Rename x to z.", "after": GOOD["after"].replace("y", "z")}]
    f = read_edit_file(_write(tmp_path / "e.jsonl", rows))
    b = baselines(f.items, "udiff")
    assert b["oracle"]["exact_match"] == b["oracle"]["ast_match"] == 1.0 and b["copy"]["exact_match"] == 0
    agg = aggregate(f.items, [score(it.before, it.after, it.before) for it in f.items])
    assert set(agg["by_kind"]) == {"my kind", "compose2", DEFAULT_KIND}
    assert sum(v["n"] for v in agg["by_bin"].values()) == len(f.items)
    # select_items: kinds and max_per_kind apply to the file, tiers / split do not
    run = SimpleNamespace(data=None)
    cfg = OmegaConf.create({"kinds": ["my kind", DEFAULT_KIND], "max_per_kind": 1})
    split, items = select_items(cfg, run, f)
    assert split == "test_file" and [it.kind for it in items] == ["my kind", DEFAULT_KIND]
    cfg = OmegaConf.create({"split": "test", "kinds": None, "tiers": None, "max_per_kind": None})
    assert select_items(cfg, run, f)[1] == f.items
    # without a file: the frozen split, as before
    run = SimpleNamespace(data=SimpleNamespace(data=data, tiers=("micro",)))
    assert select_items(cfg, run) == ("test", data.items("test", None, ["micro"]))


BAD = [  # (lines, the line the message names, what it says)
    ([GOOD, "{not json"], 2, "invalid JSON"),
    ([GOOD, "[1, 2]"], 2, "an array, not an object"),
    (["", {k: v for k, v in GOOD.items() if k != "after"}], 2, "missing field 'after'"),
    ([{**GOOD, "before": 3}], 1, "field 'before' is a number, not a string"),
    ([{**GOOD, "instruction": " "}], 1, "field 'instruction' is empty"),
    ([{**GOOD, "kind": 7}], 1, "field 'kind' must be a non-empty string"),
    ([GOOD, {**GOOD, "instruction": "x", "before": "def f(:\n"}], 2, "'before' is not valid Python"),
    ([{**GOOD, "after": "def f(y)\n    return y\n"}], 1, "'after' is not valid Python"),
    ([{**GOOD, "after": GOOD["before"]}], 1, "'after' changes no token"),
    ([GOOD, {**GOOD, "after": "def f(z):\n    return z\n"}], 2, "same instruction and 'before' as line 1"),
]


@pytest.mark.parametrize("rows,line,what", BAD, ids=[f"{i}-{b[2].split()[-1]}" for i, b in enumerate(BAD)])
def test_every_bad_line_is_refused_with_its_number(rows, line, what, tmp_path):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError, match=re.escape(f"test_file={path} line {line}: {what}")):
        read_edit_file(path)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_edit_file(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="a directory"):
        read_edit_file(tmp_path)
    with pytest.raises(UserError, match="empty"):
        read_edit_file(_write(tmp_path / "blank.jsonl", ["", "  "]))
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps(GOOD).encode() + b'\n{"instruction": "caf\xe9"}\n')
    with pytest.raises(UserError, match="line 2: not UTF-8"):
        read_edit_file(tmp_path / "latin1.jsonl")
    from sandbox.tasks.edits.evaluate import read_test_file

    good = _write(tmp_path / "good.jsonl", [GOOD])
    for key, value in (("tiers", ["micro"]), ("split", "val")):
        cfg = OmegaConf.create({"test_file": good, "split": "test", "tiers": None, key: value})
        with pytest.raises(UserError, match=f"{key}=.*selects from the frozen sets"):
            read_test_file(cfg)
    assert read_test_file(OmegaConf.create({"test_file": None})) is None


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def ar_run(tmp_path_factory, sandbox_cache):
    """An untrained AR edit run, as ``load_run`` returns one (the recipe with its initial weights):
    what it decodes does not matter here, and nothing is compiled for training."""
    from sandbox.core.build import build
    from sandbox.core.runs import LoadedRun

    cfg = compose([*EDIT_DATA, "data.prompt_len=160", "data.target_len=112", "train.seq_len=272",
                   "model.max_len=272", "model.d_model=16", "model.n_layers=1", "model.n_heads=1",
                   "model.n_kv_heads=1", "objective=ar", f"cache_dir={sandbox_cache}"])
    b = build(cfg)
    return LoadedRun(dir=tmp_path_factory.mktemp("edits_external_ar"), cfg=cfg, data=b.data,
                     tokenizer=b.tokenizer, model=b.model, graphdef=b.graphdef, params=b.params,
                     objective=b.objective, step=0, weights="ema")


def _snapshot(d):
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_eval_edits_scores_a_test_file_and_names_it(ar_run, frozen, tmp_path, monkeypatch):
    from analysis.edits import load_edits
    from sandbox.tasks.edits import evaluate

    monkeypatch.setattr(evaluate, "load_run", lambda run_dir, weights: ar_run)
    d = ar_run.dir
    rows = [GOOD, {**GOOD, "instruction": "Add one more.", "after": "def f(x):\n    return x + 2\n",
                   "kind": "literal"},
            {"instruction": frozen[0].instruction, "before": frozen[0].before, "after": frozen[0].after}]
    path = _write(tmp_path / "mine.jsonl", rows)
    f = read_edit_file(path)
    # the config the command line composes
    (line,) = evaluate.edits(compose([f"run_dir={d}", "eval=edits", f"test_file={path}", "progress=false"],
                                     config_name="evaluate"))
    assert line["split"] == "test_file" and line["n"] == 3
    assert line["test_file"] == str(tmp_path / "mine.jsonl") and line["test_file_sha256"] == f.short_hash
    assert set(line["by_kind"]) == {DEFAULT_KIND, "literal"} and line["by_kind"][DEFAULT_KIND]["n"] == 2
    assert sum(v["n"] for v in line["by_diff_size"].values()) == 3
    assert line["baselines"]["oracle"]["exact_match"] == 1.0
    preds = [json.loads(x) for x in open(line["predictions"])]
    assert [(p["id"], p["line"], p["test_file"]) for p in preds] == [(it.id, n, str(f.path)) for it, n in
                                                                    zip(f.items, (1, 2, 3))]
    recs = [json.loads(x) for x in (d / "eval_edits.jsonl").read_text().splitlines()]
    assert all(r["test_file_sha256"] == f.short_hash for r in recs)
    assert line["n_too_long"] < 3 and len(recs) == 1 + 3 - line["n_too_long"]
    s, lat = load_edits([d])
    assert len(s) == 1 and s["n"][0] == 3 and len(lat) == len(recs) - 1
    # a bad file through the command line: one line naming the file and line, exit 2, nothing written
    bad = _write(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "after": 1}])
    before = _snapshot(d)
    p = subprocess.run([sys.executable, "-m", "sandbox.evaluate", "eval=edits", f"run_dir={d}",
                        f"test_file={bad}", "progress=false"], cwd=REPO, env=dict(os.environ),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"error: test_file={bad} line 2: field 'after' is a number, not a string; write one JSON object per "
        'line: {"instruction": ..., "before": ..., "after": ...} (strings; "kind" optional)']
    assert _snapshot(d) == before
