"""User-facing errors.

Every bad input (missing corpus, unknown config value, a checkpoint that does not fit
the model, ...) is raised as :class:`UserError` with a one-line message that names the
field or file and says what to do. Entry points wrap their ``main`` in
:func:`exit_on_user_error`, which prints that line to stderr and exits non-zero without
a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A bad input the user can fix. The message is one line: what, where, what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def exit_on_user_error(fn: F) -> F:
    """Run ``fn``; turn a :class:`UserError` into ``error: <message>`` and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
