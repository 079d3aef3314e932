"""Keep a sweep's finished runs in git, small: the record a report needs, without checkpoints.

A long sweep (``experiment=scaling_cpu``: about ten hours on the 2-core CPU) runs in pieces,
and the next piece may run on a fresh machine without the last one's ``runs/``. This copies
each **finished** run's light files into a folder that is committed (``docs/results/<study>/``)
so the pieces accumulate there and the report is rebuilt from the archive alone:

    python -m analysis.archive runs/scaling_cpu docs/results/scaling_cpu
    python -m analysis.report 'runs_glob=docs/results/scaling_cpu/**' out=runs/scaling_cpu/report

Design choices:
- **Finished only.** A run is finished when its last ``eval`` record is at the step count its
  ``meta`` line declares (``total_steps``); an unfinished run is listed and left out (resume it
  where its checkpoint is, then archive again). An archived run is replaced by a newer copy.
- **What is kept.** ``config.yaml``, ``overrides.yaml``, ``git.json``, ``env.json``, the
  evaluations' result lines (``eval_*.jsonl``: code edits, sample quality) and
  ``metrics.jsonl`` with every non-training record (meta, compile, every eval) and at most
  ``max_train`` training records, evenly spaced, the last one always kept (a 14k-step run logs
  700; the report's curves need far fewer). The archive's meta line says how many were kept
  (``archived_train_records`` of ``logged_train_records``). Checkpoints, samples and
  ``shapes.json`` stay behind.
- **Layout.** Each run keeps its folder name (the sweep's ``override_dirname``) below the
  destination, so a report over the archive sees the same runs as one over ``runs/``. Each
  run is written to a temporary folder and renamed into place: an interrupted archive leaves
  no half-written run.
- Reads files only, like the rest of ``analysis/``: no JAX, no sandbox import.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from analysis.errors import ReportError, exit_on_report_error
from analysis.load import find_runs, read_jsonl

KEEP = ("config.yaml", "overrides.yaml", "git.json", "env.json", "eval_*.jsonl")  # globs


def is_finished(records: list[dict]) -> bool:
    """True when the last eval record is at (or past) the meta line's ``total_steps``."""
    meta = next((r for r in records if r.get("kind") == "meta"), None)
    evals = [r for r in records if r.get("kind") == "eval"]
    if meta is None or not evals or meta.get("total_steps") is None:
        return False
    return int(evals[-1].get("step") or 0) >= int(meta["total_steps"])


def thin(records: list[dict], max_train: int) -> list[dict]:
    """Every non-train record, and at most ``max_train`` train records (evenly spaced, the last
    one kept), in their original order; the meta line gains the counts."""
    train = [i for i, r in enumerate(records) if r.get("kind") == "train"]
    n = len(train)
    # the k-th of max_train evenly spaced records is number ceil(k n / max_train): distinct when
    # n > max_train, and the last (k = max_train) is the run's last training record
    keep = set(train)
    if n > max_train:
        keep = {train[-(-k * n // max_train) - 1] for k in range(1, max_train + 1)}
    out = []
    for i, r in enumerate(records):
        if r.get("kind") == "meta":
            r = {**r, "archived_train_records": len(keep), "logged_train_records": n}
        if r.get("kind") != "train" or i in keep:
            out.append(r)
    return out


def archive(src: str | Path, dest: str | Path, max_train: int = 200) -> dict:
    """Copy the finished runs below ``src`` into ``dest`` (see the module docstring).
    Returns ``{"archived": [names], "unfinished": [names]}``."""
    src, dest = Path(src), Path(dest)
    if max_train < 1:
        raise ReportError(f"max_train={max_train}: keep at least one training record per run")
    runs = find_runs(str(src))
    if not runs:
        raise ReportError(f"{src}: no run folders (folders holding metrics.jsonl) below it; "
                          "give the sweep's output folder, e.g. runs/scaling_cpu")
    done: dict[str, list[str]] = {"archived": [], "unfinished": []}
    for run in runs:
        rel = run.relative_to(src) if run != src else Path(run.name)
        records = read_jsonl(run / "metrics.jsonl")
        if not is_finished(records):
            done["unfinished"].append(str(rel))
            continue
        target = dest / rel
        tmp = target.with_name(target.name + ".archive-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for path in (p for pattern in KEEP for p in run.glob(pattern) if p.is_file()):
            shutil.copy2(path, tmp / path.name)
        (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in thin(records, max_train)))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        done["archived"].append(str(rel))
    return done


def _parse(argv: list[str]) -> tuple[str, str, int]:
    pos = [a for a in argv if "=" not in a]
    kw = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = set(kw) - {"max_train"}
    if len(pos) != 2 or unknown:
        raise ReportError("usage: python -m analysis.archive SRC DEST [max_train=200] (SRC: a sweep's "
                          "output folder such as runs/scaling_cpu; DEST: a folder to commit, such as "
                          "docs/results/scaling_cpu)")
    try:
        max_train = int(kw.get("max_train", 200))
    except ValueError:
        raise ReportError(f"max_train={kw['max_train']!r}: expected a whole number") from None
    return pos[0], pos[1], max_train


@exit_on_report_error
def main(argv: list[str] | None = None) -> None:
    src, dest, max_train = _parse(sys.argv[1:] if argv is None else argv)
    done = archive(src, dest, max_train)
    print(f"archived {len(done['archived'])} finished run(s) into {dest}")
    if done["unfinished"]:
        print(f"left out {len(done['unfinished'])} unfinished run(s) (resume them, then archive again):")
        for name in done["unfinished"]:
            print(f"  {name}")


if __name__ == "__main__":
    main()
