"""``stdlib_edits``: a verifiable code-edit benchmark built from the running Python's stdlib.

The task end to end, in one package: the sets (below), the training source
(:mod:`.task`: ``data=stdlib_edits``, conditional ``{"tokens", "cond"}`` batches and the
target formats), the scoring (:mod:`.metrics`) and the evaluation (:mod:`.evaluate`:
``python -m sandbox.evaluate eval=edits``). Reports read what the evaluation writes.

Pipeline of the sets (one module per step, each with its own docstring):

* :mod:`.extract`: functions and methods of the stdlib as standalone sources, in size tiers
  (``micro`` <= 256 bytes, ``small`` <= 512 bytes);
* :mod:`.kinds` and the kind modules (:mod:`.rename`, :mod:`.literal`, :mod:`.signature`,
  :mod:`.statements`, :mod:`.operators`, :mod:`.compose`): for each edit kind a generator
  ``(func_src, rng, names) -> Edit | None`` and an AST verifier ``(before, after, edit) -> bool``,
  with helpers in :mod:`.source`, :mod:`.scopes`, :mod:`.names`, :mod:`.edit`;
* :mod:`.udiff`: the ``udiff`` target format and a strict applier;
* :mod:`.splits`: splits by top-level module and the near-duplicate filter;
* :mod:`.dataset`: :class:`EditItem`, the on-the-fly training stream, the frozen val / test
  sets and their cache.

Typical use::

    data = StdlibEdits(seed=0).load()              # cached under $SANDBOX_CACHE/stdlib_edits
    test = data.items("test", kinds="rename", tiers="micro")
    train = data.sampler()                           # train[i]: EditItem, pure in (seed, i)

``python -m sandbox.tasks.edits`` builds (or loads) the sets and prints their counts.
Nothing from the stdlib is stored in the repository.
"""

from sandbox.tasks.edits.dataset import (
    FROZEN_SPLITS,
    GENERATOR_VERSION,
    EditItem,
    EditSampler,
    EditsData,
    StdlibEdits,
    build_frozen,
    default_cache_dir,
    frozen_counts,
    make_item,
)
from sandbox.tasks.edits.edit import Edit
from sandbox.tasks.edits.extract import (
    EXTRACT_VERSION,
    TIERS,
    Function,
    extract_functions,
    functions_from_source,
    stdlib_hash,
    tier_of,
)
from sandbox.tasks.edits.kinds import ALL_KINDS, KINDS, SINGLE_KINDS, Kind, generate, get_kind, verify
from sandbox.tasks.edits.names import HELDOUT, TRAIN, NamePool
from sandbox.tasks.edits.source import DIFF_BINS, diff_size_bin, n_changed_tokens
from sandbox.tasks.edits.splits import (
    SPLITS,
    NearDuplicateIndex,
    assign_splits,
    filter_near_duplicates,
)
from sandbox.tasks.edits.udiff import apply_udiff, udiff

__all__ = [
    "ALL_KINDS", "DIFF_BINS", "EXTRACT_VERSION", "FROZEN_SPLITS", "GENERATOR_VERSION", "HELDOUT",
    "KINDS", "SINGLE_KINDS", "SPLITS", "TIERS", "TRAIN",
    "Edit", "EditItem", "EditSampler", "EditsData", "Function", "Kind", "NamePool",
    "NearDuplicateIndex", "StdlibEdits",
    "apply_udiff", "assign_splits", "build_frozen", "default_cache_dir", "diff_size_bin",
    "extract_functions", "filter_near_duplicates", "frozen_counts", "functions_from_source",
    "generate", "get_kind", "make_item", "n_changed_tokens", "stdlib_hash", "tier_of", "udiff",
    "verify",
]
