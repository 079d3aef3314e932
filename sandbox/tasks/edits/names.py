"""Pools of new identifiers for renames, added parameters and inserted statements.

Design choices:

* **Two disjoint pools.** ``train`` names are used by the on-the-fly training edits;
  ``heldout`` names only by the frozen val / test sets, so a model cannot score on a test
  rename by having memorised the target name. Each pool has single words and two-word
  ``snake_case`` names built from its own word lists; the two pools share no name and no word.
* **Never a clash.** :meth:`NamePool.fresh` never returns a keyword, soft keyword, builtin,
  or a name in ``taken`` (every identifier of the function, see
  :func:`sandbox.tasks.edits.scopes.identifiers`).
* The same words also serve as replacement text for string literals (:mod:`.literal`).
"""

from __future__ import annotations

import builtins
import keyword
import random
from collections.abc import Collection

from sandbox.core.errors import UserError

_TRAIN_WORDS = (
    "acc", "tally", "bucket", "cursor", "slot", "chunk", "piece", "entry", "record", "cell",
    "frame", "packet", "batch", "cache", "store", "limit", "offset", "width", "depth", "weight",
    "score", "label", "marker", "anchor", "target", "source", "origin", "handle", "ticket",
    "parcel", "bundle", "cluster", "fragment", "segment", "window", "channel", "signal",
    "payload", "message", "sample", "probe", "cue", "hint", "rule", "spec", "stamp", "token",
)
_TRAIN_PREFIXES = ("raw", "next", "prev", "tmp", "new", "old", "cur", "base", "last", "first")

_HELDOUT_WORDS = (
    "quota", "ledger", "beacon", "harbor", "lantern", "meadow", "pebble", "quill", "ripple",
    "saddle", "thimble", "velvet", "walnut", "yonder", "zephyr", "basin", "cobalt", "dune",
    "ember", "fjord", "glacier", "hollow", "ivory", "jasper", "kettle", "lagoon", "marble",
    "nectar", "orchid", "prism", "quarry", "raven", "summit", "timber", "umber", "vortex",
    "willow", "canyon", "falcon", "granite", "heron", "island", "juniper", "krill", "lotus",
)
_HELDOUT_PREFIXES = ("spare", "outer", "inner", "alt", "extra", "main", "final", "early",
                     "late", "other")

_RESERVED = (set(keyword.kwlist) | set(getattr(keyword, "softkwlist", [])) | set(dir(builtins))
             | {"self", "cls"})


def is_reserved(name: str) -> bool:
    """Keywords, soft keywords, builtins and ``self`` / ``cls``."""
    return name in _RESERVED


class NamePool:
    """An ordered tuple of candidate identifiers."""

    def __init__(self, name: str, words: tuple[str, ...], prefixes: tuple[str, ...]):
        self.name = name
        self.words = tuple(w for w in words if not is_reserved(w))
        combos = tuple(f"{p}_{w}" for p in prefixes for w in words)
        self.names = tuple(n for n in self.words + combos if not is_reserved(n))

    def fresh(self, rng: random.Random, taken: Collection[str] = ()) -> str | None:
        """A random name of the pool not in ``taken`` (None only if all are taken)."""
        for _ in range(20):
            n = rng.choice(self.names)
            if n not in taken:
                return n
        free = [n for n in self.names if n not in taken]
        return rng.choice(free) if free else None

    def word(self, rng: random.Random) -> str:
        return rng.choice(self.words)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def __repr__(self) -> str:
        return f"NamePool({self.name!r}, {len(self.names)} names)"


TRAIN = NamePool("train", _TRAIN_WORDS, _TRAIN_PREFIXES)
HELDOUT = NamePool("heldout", _HELDOUT_WORDS, _HELDOUT_PREFIXES)
POOLS = {"train": TRAIN, "heldout": HELDOUT}


def get_pool(names: str | NamePool) -> NamePool:
    if isinstance(names, NamePool):
        return names
    if names not in POOLS:
        raise UserError(f"name pool {names!r}: unknown; choose from {', '.join(POOLS)}")
    return POOLS[names]
