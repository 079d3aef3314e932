"""Number and text formatting shared by every report section.

One rule for a missing figure everywhere: ``None``, NaN, an infinity or a value that is not a
number prints as an en dash (``–``), so a table cell is never ``nan`` or empty. Integers print
as integers in :func:`fixed` (a count is not ``3.000``).
"""

from __future__ import annotations

import math
import re

import numpy as np

MISSING = "–"


def num(x) -> float:
    """``x`` as a float; NaN when it is not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _finite(x) -> bool:
    return math.isfinite(num(x))


def fixed(x, nd: int = 3) -> str:
    """Fixed-point with ``nd`` decimals; integers as they are; text other than a number as it is."""
    if isinstance(x, (bool, np.bool_)):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, str) and math.isnan(num(x)):
        return x
    return f"{num(x):.{nd}f}" if _finite(x) else MISSING


def sig(x, nd: int = 3) -> str:
    """``nd`` significant digits (``1e+11``, ``3.52``)."""
    return f"{num(x):.{nd}g}" if _finite(x) else MISSING


def pct(x) -> str:
    """A fraction as a percentage with one decimal (``0.5`` -> ``50.0%``)."""
    return f"{100 * num(x):.1f}%" if _finite(x) else MISSING


def ms(seconds) -> str:
    """Seconds as milliseconds with one decimal and thousands separators."""
    return f"{1e3 * num(seconds):,.1f}" if _finite(seconds) else MISSING


def ratio_range(r, bold: bool = False) -> str:
    """``r["ratio"]`` with its ``[ratio_lo, ratio_hi]`` range: ``1.20 [1.19, 1.22]``."""
    if not _finite(r["ratio"]):
        return MISSING
    v = f"{num(r['ratio']):.2f}"
    return f"{f'**{v}**' if bold else v} [{fixed(r['ratio_lo'], 2)}, {fixed(r['ratio_hi'], 2)}]"


def natural_key(text) -> tuple:
    """Sort key that orders the numbers inside text by value: ``bd3lm(4)`` < ``bd3lm(16)``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in re.split(r"(\d+)", str(text)) if p)


def snake_case(name: str) -> str:
    """``StdlibCode`` -> ``stdlib_code``, ``BPETokenizer`` -> ``bpe_tokenizer``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", str(name))
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def join_labels(labels) -> str:
    return ", ".join(str(x) for x in labels)
