"""The report's one-line errors.

A bad input to ``python -m analysis.report`` (an unknown argument, a pattern that matches
no run folder) is a :class:`ReportError` whose message names the argument and what to do;
:func:`exit_on_report_error` prints it as ``error: <message>`` on stderr and exits 2, without a
traceback. Anything else is a bug and keeps its traceback. Defined here rather than imported
from the training package so that the report runs where only numpy, pandas, matplotlib and
PyYAML are installed.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

EXIT_BAD_INPUT = 2


class ReportError(Exception):
    """A bad input the user can fix; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def exit_on_report_error(fn: F) -> F:
    """Run ``fn``; turn a :class:`ReportError` into ``error: <message>`` and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ReportError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper  # type: ignore[return-value]
