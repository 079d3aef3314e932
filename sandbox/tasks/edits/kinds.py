"""The registry of edit kinds: name -> (generator, verifier).

``generate(kind, func_src, rng, names="train")`` and ``verify(before, after, edit)`` dispatch
to the modules of each kind (:mod:`.rename`, :mod:`.literal`, :mod:`.signature`
(``add_param``), :mod:`.statements` (``delete_stmt``, ``insert_stmt``), :mod:`.operators`
(``swap_op``), :mod:`.compose` (``compose2``, ``compose3``)). An unknown kind is a
:class:`~sandbox.core.errors.UserError` naming the known ones.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sandbox.core.errors import UserError
from sandbox.tasks.edits import compose, literal, operators, rename, signature, statements
from sandbox.tasks.edits.edit import Edit
from sandbox.tasks.edits.names import NamePool, get_pool


@dataclass(frozen=True)
class Kind:
    name: str
    generate: Callable[..., Edit | None]  # (func_src, rng, names=TRAIN) -> Edit | None
    verify: Callable[[str, str, Edit], bool]  # (before, after, edit) -> bool


SINGLE: dict[str, Kind] = {
    "rename": Kind("rename", rename.generate, rename.verify),
    "literal": Kind("literal", literal.generate, literal.verify),
    "add_param": Kind("add_param", signature.generate, signature.verify),
    "delete_stmt": Kind("delete_stmt", statements.generate_delete, statements.verify_delete),
    "insert_stmt": Kind("insert_stmt", statements.generate_insert, statements.verify_insert),
    "swap_op": Kind("swap_op", operators.generate, operators.verify),
}
KINDS: dict[str, Kind] = dict(SINGLE)
for _n in (2, 3):
    KINDS[f"compose{_n}"] = Kind(f"compose{_n}",
                                 functools.partial(compose.generate, _n, singles=SINGLE),
                                 functools.partial(compose.verify, _n, singles=SINGLE))

SINGLE_KINDS = tuple(SINGLE)
ALL_KINDS = tuple(KINDS)


def get_kind(name: str) -> Kind:
    if name not in KINDS:
        raise UserError(f"edit kind {name!r}: unknown; choose from {', '.join(KINDS)}")
    return KINDS[name]


def check_kinds(kinds: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validate kind names (None: all) and return them in registry order."""
    if kinds is None:
        return ALL_KINDS
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    for k in kinds:
        get_kind(k)
    if not kinds:
        raise UserError(f"edit kinds: empty; choose from {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in kinds)


def generate(kind: str, src: str, rng: random.Random, names: str | NamePool = "train") -> Edit | None:
    """A random ``kind`` edit of ``src`` (None when none applies)."""
    return get_kind(kind).generate(src, rng, get_pool(names))


def verify(before: str, after: str, edit: Edit) -> bool:
    """True when ``after`` is exactly ``before`` transformed as ``edit`` says."""
    if edit.kind not in KINDS:
        return False
    try:
        return bool(KINDS[edit.kind].verify(before, after, edit))
    except (SyntaxError, ValueError):
        return False
