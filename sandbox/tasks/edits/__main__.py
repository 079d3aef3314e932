"""``python -m sandbox.tasks.edits``: build (or load) the frozen sets and print their counts."""

from __future__ import annotations

import argparse
import json
import time

from sandbox.core.errors import exit_on_user_error
from sandbox.tasks.edits.dataset import StdlibEdits


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sandbox.tasks.edits", description=__doc__)
    ap.add_argument("--cache-dir", default=None, help="default: $SANDBOX_CACHE or .cache/sandbox")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-per-kind", type=int, default=StdlibEdits.test_per_kind)
    ap.add_argument("--val-per-kind", type=int, default=StdlibEdits.val_per_kind)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the frozen sets even if cached")
    ap.add_argument("--show", type=int, default=0, help="print this many test items")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cfg = StdlibEdits(seed=args.seed, test_per_kind=args.test_per_kind, val_per_kind=args.val_per_kind)
    data = cfg.load(args.cache_dir, rebuild=args.rebuild)
    m = data.manifest
    print(f"{data.dir}  ({time.perf_counter() - t0:.1f} s; built in {m['seconds']['total']} s)")
    for s in ("train", "val", "test"):
        sp = m["splits"][s]
        print(f"{s:5s}: {sp['n_modules']} modules, functions {sp['functions']}")
    for s in ("val", "test"):
        c = m["counts"][s]
        print(f"{s} items: {c['items']} from {c['distinct_functions']} functions "
              f"(max {c['max_edits_per_function']} per function); diff bins {c['diff_bin']}")
        print("  " + json.dumps(c["kind_tier"]))
    for it in data.frozen["test"][: args.show]:
        print(f"--- {it.kind} {it.tier} {it.module}:{it.qualname}: {it.instruction}\n{it.diff_text()}")


if __name__ == "__main__":
    main()
