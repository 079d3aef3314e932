"""``data.augment_renames``: training functions recur with fresh identifiers (EditSampler)."""

from __future__ import annotations

import ast

import pytest
from test_edits_task import SOURCE

from sandbox.core.errors import UserError
from sandbox.tasks.edits.kinds import verify
from sandbox.tasks.edits.task import EditsTask


class _Names(ast.NodeTransformer):
    """Every local / parameter name replaced by one placeholder: two functions that differ only
    by a consistent renaming have the same dump."""

    def visit_Name(self, node):
        node.id = "_"
        return node

    def visit_arg(self, node):
        node.arg = "_"
        return self.generic_visit(node)


def _shape(src: str) -> str:
    return ast.dump(_Names().visit(ast.parse(src)))


@pytest.fixture(scope="module")
def data(sandbox_cache):
    return SOURCE.load(sandbox_cache, progress=False)


def test_augmented_items_are_renamed_functions_with_a_verified_edit(data):
    plain = data.sampler(0, tiers=("micro",))
    aug = data.sampler(0, tiers=("micro",), augment_renames=2)
    by_source = {f.source: f for f in data.functions["train"]}
    renamed = 0
    for i in range(40):
        it = aug[i]
        e = it.to_edit()
        assert verify(it.before, it.after, e), it.id  # the edit holds on the renamed function
        original = by_source.get(it.before)
        if original is None:  # renamed: the same function up to its local names
            renamed += 1
            f = next(f for f in data.functions["train"] if (f.module, f.qualname) == (it.module, it.qualname)
                     and _shape(f.source) == _shape(it.before))
            assert f.source != it.before
        assert aug[i] == it  # a pure function of (seed, index)
    assert renamed >= 20
    assert sum(plain[i].before in by_source for i in range(40)) == 40  # off: the functions as they are


def test_augment_renames_refuses_a_bad_value(sandbox_cache):
    task = EditsTask(source=SOURCE, tiers=("micro",), prompt_len=384, target_len=320, augment_renames=-1)
    with pytest.raises(UserError, match="data.augment_renames: must be an integer >= 0"):
        task.batch_source(None, sandbox_cache, progress=False)


def test_kind_weights_set_the_training_mix(sandbox_cache):
    from sandbox.data.tokenizers import ByteTokenizer

    task = EditsTask(source=SOURCE, kinds=("rename", "swap_op"), tiers=("micro",), prompt_len=384,
                     target_len=320, kind_weights={"swap_op": 0}, em_items=0)
    src = task.batch_source(ByteTokenizer(), sandbox_cache, progress=False)
    assert {src._sampler(0)[i].kind for i in range(12)} == {"rename"}
    for bad in ({"delete_stmt": 1.0}, {"rename": -1}, {"rename": 0, "swap_op": 0}, {"rename": "x"}):
        task = EditsTask(source=SOURCE, kinds=("rename", "swap_op"), tiers=("micro",), prompt_len=384,
                         target_len=320, kind_weights=bad)
        with pytest.raises(UserError, match="data.kind_weights"):
            task.batch_source(None, sandbox_cache, progress=False)
