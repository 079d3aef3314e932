"""What every benchmark writes and prints: the results folder, tables, progress lines, flag lists.

- :class:`Results` is one self-describing folder ``<root>/<kind>-<timestamp>/``:
  ``results.jsonl`` (one JSON row per line, appended as each point is measured, so an
  interrupted benchmark keeps what it measured), ``env.json`` and ``git.json`` (what the
  numbers were measured with). The folder is created on the first row, not before: a
  benchmark that fails its argument checks leaves nothing behind.
- :func:`format_table` prints rows as an aligned text table from ``(header, key, format)``
  columns; percentages print without the ``%`` sign (the header says it).
- :func:`log` writes progress to stderr, so stdout holds only the tables.
- :func:`csv_list` / :func:`int_list` / :func:`float_list` parse comma-separated flags into
  lists with one-line errors naming the flag.
- :func:`loadavg` is recorded next to every measurement: on a shared machine a number
  measured under load is not a property of the code.

No JAX here: the device description comes from ``sandbox.core.mesh`` (via ``env_info``).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path

from sandbox.core.errors import UserError
from sandbox.core.runfiles import atomic_write_text, env_info, git_info


class Results:
    """``<root>/<kind>-<timestamp>/results.jsonl`` plus ``env.json`` and ``git.json``, created
    on the first :meth:`add` (a ``meta`` row first when ``meta`` is given)."""

    def __init__(self, root: str | Path = "runs/bench", kind: str = "train", meta: dict | None = None):
        self.dir = Path(root) / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.meta = meta or {}
        self.rows: list[dict] = []
        self._created = False

    @property
    def path(self) -> Path:
        return self.dir / "results.jsonl"

    @property
    def created(self) -> bool:
        """Whether the folder exists (at least one row was written)."""
        return self._created

    def _create(self):
        d, i = self.dir, 1
        while d.exists():  # two runs in the same second
            i += 1
            d = self.dir.with_name(f"{self.dir.name}-{i}")
        self.dir = d
        self.dir.mkdir(parents=True)
        atomic_write_text(self.dir / "env.json", json.dumps(env_info(), indent=2) + "\n")
        info, _ = git_info()
        atomic_write_text(self.dir / "git.json", json.dumps(info, indent=2) + "\n")
        self._created = True
        if self.meta:
            self._append({"kind": "meta", **self.meta})

    def ensure_dir(self) -> Path:
        """The folder, created now (for files a row refers to, written before the row)."""
        if not self._created:
            self._create()
        return self.dir

    def _append(self, row: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def add(self, row: dict) -> dict:
        """Append ``row`` (creating the folder first if needed) and return it."""
        if not self._created:
            self._create()
        self._append(row)
        self.rows.append(row)
        return row

    def write_json(self, name: str, obj) -> None:
        """A whole JSON file next to the results (atomically: written once everything finished)."""
        atomic_write_text(self.dir / name, json.dumps(obj, indent=1, default=str) + "\n")


def format_table(rows: list[dict], columns, left: int = 3) -> str:
    """Rows as a text table. ``columns``: ``(header, key, format)``; the first ``left`` columns
    are left-aligned (names), the rest right-aligned (numbers); a missing value prints ``-``."""
    def cell(r, k, fmt):
        if r.get(k) is None:
            return "-"
        text = fmt.format(r[k])
        return text.replace("%", "") if fmt.endswith("%}") else text

    cells = [[h for h, _, _ in columns]] + [[cell(r, k, fmt) for _, k, fmt in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < left else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --- comma-separated flags ------------------------------------------------------------------------
def csv_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (None or empty: ``[]``)."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def int_list(text: str | None, flag: str, minimum: int = 1) -> list[int]:
    """Comma-separated integers of at least ``minimum``; UserError naming ``flag`` otherwise."""
    out = []
    for x in csv_list(text):
        try:
            v = int(x)
        except ValueError:
            raise UserError(f"{flag}: '{x}' is not an integer") from None
        if v < minimum:
            raise UserError(f"{flag}: {v} must be at least {minimum}")
        out.append(v)
    return out


def float_list(text: str | None, flag: str) -> list[float]:
    """Comma-separated numbers; UserError naming ``flag`` otherwise."""
    try:
        return [float(x) for x in csv_list(text)]
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of numbers") from None
