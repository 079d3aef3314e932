"""Tests of the ``stdlib_edits`` data builder: extraction, edit kinds and their verifiers,
udiff, splits, the near-duplicate filter, frozen sets and the on-the-fly training stream."""

from __future__ import annotations

import ast
import json
import random
import re
import textwrap
import time

import pytest

from sandbox.core.errors import UserError
from sandbox.tasks.edits import (
    ALL_KINDS,
    DIFF_BINS,
    HELDOUT,
    SINGLE_KINDS,
    TRAIN,
    Edit,
    EditSampler,
    EditsData,
    NamePool,
    StdlibEdits,
    apply_udiff,
    assign_splits,
    build_frozen,
    diff_size_bin,
    extract_functions,
    filter_near_duplicates,
    functions_from_source,
    generate,
    n_changed_tokens,
    udiff,
    verify,
)
from sandbox.tasks.edits import rename as rename_mod
from sandbox.tasks.edits.extract import Function, stdlib_files
from sandbox.tasks.edits.formats import apply_search_replace, search_replace
from sandbox.tasks.edits.kinds import check_kinds
from sandbox.tasks.edits.names import is_reserved
from sandbox.tasks.edits.scopes import rename_candidates
from sandbox.tasks.edits.source import compiles, parse_function
from sandbox.tasks.edits.splits import NearDuplicateIndex

# a spread of stdlib modules: small enough to extract in about a second, enough to split
MODULES = ["bisect", "calendar", "collections", "colorsys", "csv", "difflib", "fractions", "ftplib",
           "gettext", "glob", "heapq", "json", "queue", "sched", "shlex", "statistics", "string",
           "textwrap", "tokenize", "uuid"]
SMALL_SPLITS = dict(min_test_functions=60, min_val_functions=40, min_test_modules=3, min_val_modules=2)


@pytest.fixture(scope="module")
def functions() -> list[Function]:
    return extract_functions(modules=MODULES, progress=False)


@pytest.fixture(scope="module")
def sample(functions) -> list[Function]:
    return random.Random(0).sample(functions, 50)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("edits_cache")
    cfg = StdlibEdits(seed=0, test_per_kind=8, val_per_kind=4, modules=MODULES, **SMALL_SPLITS)
    t0 = time.perf_counter()
    data = cfg.load(cache, progress=False)
    return cfg, cache, data, time.perf_counter() - t0


def fn(src: str) -> str:
    return textwrap.dedent(src).lstrip("\n")


# ----------------------------------------------------------------------------- extraction


def test_extracted_units_are_standalone_functions_in_their_tier(functions):
    assert len(functions) > 300
    assert any("." in f.qualname for f in functions)  # methods
    for f in functions:
        parsed = parse_function(f.source)
        assert parsed is not None and compiles(f.source), f.id
        assert "\t" not in f.source and f.source.endswith("\n")
        assert not f.source[0].isspace()
        size = len(f.source.encode())
        assert (f.tier == "micro" and size <= 256) or (f.tier == "small" and 256 < size <= 512), f.id
        assert f.top == f.module.split(".")[0] and f.top in MODULES


def test_walk_skips_tests_idlelib_and_site_packages():
    files = stdlib_files()
    assert files and not any(re.search(r"(^|/)(test|tests|idlelib|site-packages)/", p) for p in files)


def test_extraction_tolerates_bad_files(tmp_path):
    (tmp_path / "good.py").write_text(fn('''
        import os

        def top(a, b=1):
            return a + b

        class K:
            @staticmethod
            def method(x):
                def inner(y):
                    return y
                return inner(x)

            async def amethod(self):
                await self.go()

        def tabbed(x):
        \treturn x

        def large():
            return """''' + "x" * 600 + '''"""
        '''))
    (tmp_path / "broken.py").write_text("def f(:\n    pass\n")
    (tmp_path / "latin.py").write_bytes("def f():\n    return 'caf\xe9'\n".encode("latin-1"))
    for d in ("test", "idlelib", "site-packages"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "m.py").write_text("def hidden():\n    pass\n")
    from sandbox.tasks.edits.extract import ExtractStats
    stats = ExtractStats()
    got = extract_functions(tmp_path, progress=False, stats=stats)
    assert sorted(f.qualname for f in got) == ["K.amethod", "K.method", "top"]
    method = next(f for f in got if f.qualname == "K.method")
    assert method.source.startswith("@staticmethod\ndef method(x):\n    def inner(y):")
    assert stats.unparsable == ["broken.py"] and stats.unreadable == ["latin.py"]
    assert stats.dropped == {"tab or other control character": 1, "too large": 1}


# ----------------------------------------------------------------------------- generators


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_generated_edit_passes_its_verifier(kind, sample):
    made = 0
    for i, f in enumerate(sample):
        edit = generate(kind, f.source, random.Random(i), "heldout")
        if edit is None:
            continue
        made += 1
        assert edit.kind == kind and edit.after != f.source
        assert verify(f.source, edit.after, edit), (f.id, edit.instruction)
        assert compiles(edit.after)
        assert apply_udiff(f.source, udiff(f.source, edit.after)) == edit.after
        assert apply_search_replace(f.source, search_replace(f.source, edit.after)) == edit.after
        assert n_changed_tokens(f.source, edit.after) >= 1
        assert not re.search(r"\bline \d", edit.instruction)  # content-addressed, no line numbers
        if kind.startswith("compose"):
            assert len(edit.subs) == int(kind[-1]) and len(set(edit.sub_kinds)) == len(edit.subs)
    assert made >= 10, f"{kind}: only {made} of 50 functions gave an edit"


def test_verifiers_reject_wrong_edits(sample):
    """Each kind's gold output verifies; a perturbed output, another edit's output, or the
    untouched input does not."""
    rejected = 0
    for kind in ALL_KINDS:
        for i, f in enumerate(sample[:12]):
            edit = generate(kind, f.source, random.Random(i), "heldout")
            if edit is None:
                continue
            assert not verify(f.source, f.source, edit)  # no-op
            wrong = edit.after.replace("\n", "\n# stray comment\n", 1)
            assert not verify(f.source, wrong, edit)
            other = edit.after.rstrip("\n") + "\n    pass\n" if "\n    " in edit.after else edit.after + "x"
            assert not verify(f.source, other, edit)
            rejected += 3
    assert rejected > 60


# ----------------------------------------------------------------------------- rename pitfalls

PITFALLS = fn('''
    def tally_up(items, count=0):
        """Return count plus the number of items; count is the start."""
        # count is incremented below
        for item in items:
            count += 1
        log(count=count, label="count")
        obj.count = count
        return f"count={count}", obj.count, {'count': count}
    ''')


def test_rename_touches_only_name_spans():
    edit = rename_mod.make(PITFALLS, "count", "quota")
    assert edit is not None and edit.instruction == "rename parameter `count` to `quota`"
    assert edit.after == fn('''
        def tally_up(items, quota=0):
            """Return count plus the number of items; count is the start."""
            # count is incremented below
            for item in items:
                quota += 1
            log(count=quota, label="count")
            obj.count = quota
            return f"count={quota}", obj.count, {'count': quota}
        ''')
    assert verify(PITFALLS, edit.after, edit)


@pytest.mark.parametrize("bad", [
    ("log(count=quota", "log(quota=quota"),  # keyword name of a call
    ("obj.count = quota", "obj.quota = quota"),  # attribute
    ('label="count"', 'label="quota"'),  # string
    ("# count is", "# quota is"),  # comment
    ('"""Return count', '"""Return quota'),  # docstring
    ('f"count={quota}"', 'f"quota={quota}"'),  # f-string literal part
    ("quota += 1", "count += 1"),  # a missed occurrence
])
def test_rename_verifier_rejects_each_pitfall(bad):
    edit = rename_mod.make(PITFALLS, "count", "quota")
    wrong = edit.after.replace(*bad, 1)
    assert wrong != edit.after
    assert not verify(PITFALLS, wrong, edit)


def test_rename_skips_shadowed_global_and_outer_scope_names():
    src = fn('''
        @decorate(flag)
        def f(a, b, c=limit, *args, d: kind = 1, **kw):
            global g
            x = 1
            y = [y for y in a]
            z = lambda w: w + x
            def helper(b):
                nonlocal x
                return b
            class Inner:
                c = 2
            for i, (j, k) in enumerate(a):
                pass
            try:
                pass
            except E as err:
                pass
            import os.path as osp
            flag = limit = kind = 0
            g = x + d
            return lambda: i + y
        ''')
    cands = rename_candidates(parse_function(src)[1])
    # shadowed in nested scopes: y (comprehension), w (lambda), b (nested def), c (class body);
    # declared global / nonlocal: g, x; bound without a span: err, osp, helper, Inner;
    # also spelled in decorators / defaults / annotations: flag, limit, kind
    assert cands == {"a": "parameter", "args": "parameter", "d": "parameter", "i": "variable",
                     "j": "variable", "k": "variable", "kw": "parameter", "z": "variable"}


def test_rename_follows_closures_and_never_picks_clashing_names():
    src = fn('''
        def outer(n):
            total = 0
            def add(v):
                return total + v + n
            return add(len)
        ''')
    edit = rename_mod.make(src, "total", "acc")
    assert "return acc + v + n" in edit.after and verify(src, edit.after, edit)
    for new in ("len", "list", "for", "match", "self", "add", "v", "n"):
        assert rename_mod.make(src, "total", new) is None
        bad = Edit("rename", "", src.replace("total", new), {"old": "total", "new": new})
        assert not verify(src, bad.after, bad)
    for pool in (TRAIN, HELDOUT):
        assert not any(is_reserved(n) for n in pool.names)
    assert not set(TRAIN.names) & set(HELDOUT.names)
    assert not set(TRAIN.words) & set(HELDOUT.words)


# ----------------------------------------------------------------------------- add_param

ONE = NamePool("one", ("extra",), ())


def _all_add_param(src: str, n: int = 80) -> dict[str, str]:
    out = {}
    for i in range(n):
        e = generate("add_param", src, random.Random(i), ONE)
        assert e is not None and verify(src, e.after, e), (src, e and e.instruction)
        assert compiles(e.after)
        out[e.instruction] = e.after.split("\n")[0]
    return out


@pytest.mark.parametrize("src,expected", [
    ("def f(a, /, b=1, *args, c, **kw):\n    pass\n", {
        "add parameter `extra` before `a`": "def f(extra, a, /, b=1, *args, c, **kw):",
        "add parameter `extra` after `a`": "def f(a, extra, /, b=1, *args, c, **kw):",
        "add parameter `extra` after `/`": "def f(a, /, extra, b=1, *args, c, **kw):",
        "add keyword-only parameter `extra` after `c`": "def f(a, /, b=1, *args, c, extra, **kw):",
    }),
    ("def f(a=1, *, c):\n    pass\n", {
        "add parameter `extra=None` after `a`": "def f(a=1, extra=None, *, c):",
        "add keyword-only parameter `extra` after `c`": "def f(a=1, *, c, extra):",
    }),
    ("def f(**kw):\n    pass\n", {
        "add parameter `extra` before `**kw`": "def f(extra, **kw):",
        "add keyword-only parameter `extra`": "def f(*, extra, **kw):",
    }),
    ("def f(*args):\n    pass\n", {
        "add parameter `extra` before `*args`": "def f(extra, *args):",
        "add keyword-only parameter `extra` after `*args`": "def f(*args, extra):",
    }),
    ("def f():\n    pass\n", {
        "add parameter `extra` as the only parameter": "def f(extra):",
        "add keyword-only parameter `extra`": "def f(*, extra):",
    }),
    ("def m(self, x):\n    pass\n", {
        "add parameter `extra` after `self`": "def m(self, extra, x):",
        "add keyword-only parameter `extra`": "def m(self, x, *, extra):",
    }),
])
def test_add_param_respects_signature_rules(src, expected):
    got = _all_add_param(src)
    for instruction, line in expected.items():
        assert got.get(instruction) == line, (instruction, sorted(got))
    assert not any("before `self`" in k for k in got)
    # a default is always given after a parameter with a default
    for line in got.values():
        assert compiles(line + "\n    pass\n")


def test_add_param_keeps_multiline_signatures_and_rejects_wrong_placements():
    src = fn('''
        def f(
            a,  # the first
            b: int = 2,
        ):
            return a
        ''')
    got = _all_add_param(src)
    assert "add parameter `extra` after `a`" in got or "add parameter `extra=None` after `a`" in got
    edit = next(e for e in (generate("add_param", src, random.Random(i), ONE) for i in range(50))
                if e.params["where"] == "after")
    moved = Edit("add_param", edit.instruction, edit.after, {**edit.params, "anchor": "zzz"})
    assert not verify(src, edit.after, moved)
    base = "def f(a, b=1):\n    pass\n"
    e = Edit("add_param", "", "def f(a, b=1, extra):\n    pass\n",
             {"name": "extra", "default": None, "kind": "positional", "where": "after", "anchor": "b"})
    assert not verify(base, e.after, e)  # would need a default
    e2 = Edit("add_param", "", "def f(extra, a, b=1):\n    pass\n",
              {"name": "extra", "default": None, "kind": "positional", "where": "after", "anchor": "a"})
    assert not verify(base, e2.after, e2)  # at the wrong place


# ----------------------------------------------------------------------------- other kinds


def test_statement_edits_preserve_layout_and_are_checked():
    src = fn('''
        def f(xs):
          total = 0  # running sum
          for x in xs:
            total += x
          return total
        ''')
    seen = set()
    for i in range(60):
        for kind in ("delete_stmt", "insert_stmt"):
            e = generate(kind, src, random.Random(i))
            if e is None:
                continue
            assert verify(src, e.after, e)
            seen.add(e.instruction)
            if e.instruction == "delete the statement `total = 0  # running sum`":
                assert e.after == "def f(xs):\n  for x in xs:\n    total += x\n  return total\n"
            if e.params.get("stmt", "").startswith("if "):  # two-line guard: 2-space unit kept
                lines = e.after.split("\n")
                k = next(j for j, ln in enumerate(lines) if ln.strip() == e.params["stmt"].split("\n")[0])
                indent = len(lines[k]) - len(lines[k].lstrip())
                assert len(lines[k + 1]) - len(lines[k + 1].lstrip()) == indent + 2, e.after
    assert "delete the `for x in xs:` block" in seen
    wrong = Edit("delete_stmt", "", src.replace("  return total\n", ""),
                 {"anchor": "total = 0  # running sum", "what": "statement"})
    assert not verify(src, wrong.after, wrong)
    ins = Edit("insert_stmt", "", src.replace("  return total\n", "  print(xs)\n  return total\n"),
               {"stmt": "print(xs)\n", "where": "after", "anchor": "total = 0  # running sum"})
    assert not verify(src, ins.after, ins)  # inserted before the return, not after the anchor
    ok = Edit("insert_stmt", "", src.replace("  return total\n", "  print(xs)\n  return total\n"),
              {"stmt": "print(xs)\n", "where": "before", "anchor": "return total"})
    assert verify(src, ok.after, ok)
    assert not verify(src, ok.after.replace("  print(xs)", "    print(xs)"), ok)


def test_literal_and_swap_op_are_unambiguous():
    src = fn('''
        def g(a, b):
            if a and b or a:
                return a + 1
            return b - -1
        ''')
    seen = set()
    for i in range(40):
        for kind in ("literal", "swap_op"):
            e = generate(kind, src, random.Random(i))
            assert e is not None and verify(src, e.after, e)
            seen.add(e.instruction)
            if kind == "literal":  # `1` occurs twice: always anchored on its line
                assert e.params["anchor"] in ("return a + 1", "return b - -1")
    # `and` / `or` would regroup the tree; two `-` on a line make it no anchor for `-`
    assert {i for i in seen if "change `1`" not in i} == {"in `return a + 1`, change `+` to `-`"}
    e = Edit("literal", "", src.replace("return b - -1", "return b - -2"),
             {"old": "1", "new": "2", "anchor": "return a + 1"})
    assert not verify(src, e.after, e)  # the other occurrence
    s = Edit("swap_op", "", src.replace("return a + 1", "return a - 1"),
             {"old": "+", "new": "*", "anchor": "return a + 1"})
    assert not verify(src, s.after, s)  # not the named operator


# ----------------------------------------------------------------------------- udiff


def test_search_replace_round_trips_and_applies_strictly():
    before = "def f(a):\n    x = 1\n    y = 2\n    z = 3\n    w = 4\n    v = 5\n    return x\n"
    after = before.replace("x = 1", "x = 10").replace("return x", "return x + 1")
    text = search_replace(before, after)
    assert "@@" not in text and text.count("<<<<<<< SEARCH") == 2 and "    y = 2" not in text
    assert apply_search_replace(before, text) == after
    assert search_replace(before, before) == "" and apply_search_replace(before, "") == before
    # an insertion and a deletion, and a line that occurs twice (grown by context until unique)
    dup = "def g():\n    pass\n    x = 1\n    pass\n    return x\n"
    for new in (dup.replace("    x = 1\n", "    x = 1\n    y = 2\n"), dup.replace("    x = 1\n", ""),
                dup.replace("    return x\n", "    pass\n    return x\n"), "def g():\n    return 0\n"):
        assert apply_search_replace(dup, search_replace(dup, new)) == new
    # a failed apply, never an exception
    assert apply_search_replace(before, text.replace("    x = 1\n=", "    x = 7\n=")) is None  # not found
    assert apply_search_replace(dup, "<<<<<<< SEARCH\n    pass\n=======\n>>>>>>> REPLACE") is None  # twice
    assert apply_search_replace(before, text.replace(">>>>>>> REPLACE", "")) is None  # truncated
    assert apply_search_replace(before, "garbage") is None and apply_search_replace(before, None) is None
    assert apply_search_replace(before, "<<<<<<< SEARCH\n=======\nx\n>>>>>>> REPLACE") is None  # no anchor


def test_udiff_applies_strictly():
    before = "def f(a):\n    x = 1\n    y = 2\n    z = 3\n    w = 4\n    v = 5\n    return x\n"
    after = before.replace("x = 1", "x = 10").replace("return x", "return x + 1")
    patch = udiff(before, after)
    assert patch.startswith("@@ -1,7 +1,7 @@\n") and apply_udiff(before, patch) == after
    assert udiff(before, before) == "" and apply_udiff(before, "") == before
    assert apply_udiff(before, patch.replace("@@ -1,7", "@@ -2,7")) is None  # wrong header
    assert apply_udiff(before, patch.replace(" y = 2", " y = 3")) is None  # wrong context
    assert apply_udiff(before, patch.rsplit("\n", 2)[0] + "\n") is None  # truncated hunk
    assert apply_udiff(before, "garbage\n") is None and apply_udiff(before, "@@ -a +b @@\n") is None
    assert apply_udiff(before, None) is None
    no_nl = after.rstrip("\n")
    assert apply_udiff(before, udiff(before, no_nl)) == no_nl
    far = before.replace("x = 1", "x = 0").replace("return x", "return 0")
    two = udiff(before, far, context=1)
    assert two.count("@@ -") == 2 and apply_udiff(before, two) == far
    hunks = two.split("@@ -")
    swapped = "@@ -" + hunks[2] + "@@ -" + hunks[1]
    assert apply_udiff(before, swapped) is None  # hunks out of order


def test_changed_tokens_and_bins():
    assert n_changed_tokens("x = a + b\n", "x = a - b\n") == 1
    assert n_changed_tokens("f(a, b)\n", "f(a, b, c=None)\n") == 4
    assert n_changed_tokens("x = 1\n", "x = 1\n") == 0
    assert [diff_size_bin(n) for n in (0, 1, 2, 4, 5, 16, 17, 99)] == \
        ["0", "1", "2-4", "2-4", "5-16", "5-16", "17+", "17+"]
    assert DIFF_BINS == ("1", "2-4", "5-16", "17+")


# ----------------------------------------------------------------------------- splits & sets


def test_near_duplicate_filter():
    base = fn('''
        def area(shape, scale):
            """Area of a shape."""
            width = shape.width * scale
            height = shape.height * scale
            if width < 0 or height < 0:
                raise ValueError("negative")
            return width * height
        ''')
    train = [Function("m", "area", "m", base, "small")]
    same = base.replace('"""Area of a shape."""', "# computes it").replace('"negative"', '"bad"')
    near = base.replace("    return width * height\n", "    result = width * height\n    return result\n")
    other = fn('''
        def join(parts, sep):
            out = []
            for p in parts:
                out.append(str(p))
            return sep.join(out)
        ''')
    held = [Function("t", n, "t", s, "small") for n, s in (("same", same), ("near", near),
                                                          ("other", other), ("other2", other))]
    kept, stats = filter_near_duplicates(held, train, 0.7)
    assert [f.qualname for f in kept] == ["other"]
    assert stats == {"near_duplicate_of_train": 2, "duplicate_within_split": 1}
    assert NearDuplicateIndex([base]).match(other) == 0.0


def test_splits_never_share_a_module(functions, built):
    of = assign_splits(functions, **SMALL_SPLITS)
    assert set(of.values()) == {"train", "val", "test"}
    _, _, data, _ = built
    tops = {s: {f.top for f in data.functions[s]} for s in ("train", "val", "test")}
    assert not (tops["train"] & tops["val"] or tops["train"] & tops["test"] or tops["val"] & tops["test"])
    for s in ("val", "test"):
        assert {it.top for it in data.frozen[s]} <= tops[s]
        assert {it.top for it in data.frozen[s]} <= set(data.manifest["splits"][s]["modules"])
    index = NearDuplicateIndex([f.source for f in data.functions["train"]], 0.7)
    assert all(index.match(it.before) == 0.0 for it in data.frozen["test"])


def test_frozen_sets_manifest_and_cache(built):
    cfg, cache, data, seconds = built
    m = data.manifest
    for key in ("python", "python_version", "stdlib_sha256", "generator_version", "seed", "counts"):
        assert key in m
    assert m["counts"]["test"]["kind_tier"] == {k: {"micro": 4, "small": 4} for k in ALL_KINDS}
    assert sum(m["counts"]["test"]["diff_bin"].values()) == len(data.frozen["test"]) == 8 * len(ALL_KINDS)
    for it in data.frozen["test"] + data.frozen["val"]:
        assert verify(it.before, it.after, it.to_edit()), it.instruction
        assert apply_udiff(it.before, it.udiff) == it.after  # the gold udiff gives the gold whole
        assert it.sub_kinds == ((it.kind,) if it.kind in SINGLE_KINDS else it.sub_kinds)
        assert it.n_changed_tokens == n_changed_tokens(it.before, it.after)
    # held-out names only in val / test renames
    for it in data.items("test", kinds="rename"):
        assert it.to_edit().params["new"] in HELDOUT
    # cached: the same items come back, fast; a damaged file is rebuilt
    t0 = time.perf_counter()
    again = cfg.load(cache, progress=False)
    assert time.perf_counter() - t0 < max(2.0, seconds / 2)
    assert again.frozen == data.frozen and again.manifest == data.manifest
    (data.dir / "test.jsonl").write_text("")
    rebuilt = cfg.load(cache, progress=False)
    assert rebuilt.frozen["test"] == data.frozen["test"]
    assert json.loads((data.dir / "manifest.json").read_text())["files"] == m["files"]


def test_training_stream_is_a_pure_function_of_seed_and_index(built):
    _, _, data, _ = built
    a, b = data.sampler(), data.sampler()
    idx = [5, 0, 17, 3]
    items = [a[i] for i in idx]
    assert items == [b[i] for i in reversed(idx)][::-1]
    assert a.batch(0, 4) == [b[i] for i in range(4)]
    assert data.sampler(seed=1)[5] != items[0]
    train_tops = {f.top for f in data.functions["train"]}
    for it in a.batch(0, 40):
        assert it.top in train_tops and it.split == "train"
        assert verify(it.before, it.after, it.to_edit())
        if it.kind == "rename":
            assert it.to_edit().params["new"] in TRAIN
    only = data.sampler(kinds=["swap_op"], tiers="micro")
    assert all(only[i].kind == "swap_op" and only[i].tier == "micro" for i in range(10))


def test_bad_requests_are_one_line_user_errors(built, functions):
    _, _, data, _ = built
    with pytest.raises(UserError, match="edit kind 'nope': unknown"):
        generate("nope", "def f():\n    pass\n", random.Random(0))
    with pytest.raises(UserError, match="unknown"):
        check_kinds(["rename", "typo"])
    with pytest.raises(UserError, match="tier 'huge': unknown"):
        data.items("test", tiers="huge")
    with pytest.raises(UserError, match="train items are generated on the fly"):
        data.items("train")
    with pytest.raises(UserError, match="at least 3"):
        assign_splits([f for f in functions if f.top in ("json", "csv")])
    with pytest.raises(UserError, match="yields only"):
        build_frozen(data.functions["test"][:3], "test", 0, 50, kinds=["compose3"])
    with pytest.raises(UserError, match="no functions of tier"):
        EditSampler([f for f in functions if f.tier == "micro"], tiers=["small"])
    with pytest.raises(UserError, match="stdlib_edits.test_per_kind"):
        StdlibEdits(test_per_kind=0).load()
    settings = {**data.manifest["settings"], "kinds": ["rename"]}
    renames_only = EditsData(data.functions, {"val": [], "test": data.items("test", kinds="rename")},
                             {**data.manifest, "settings": settings}, data.dir)
    with pytest.raises(UserError, match="no items of kind swap_op and tier micro; this set was built "
                                        "with kinds rename"):
        renames_only.items("test", kinds="swap_op", tiers="micro")


def test_functions_from_source_names_methods():
    src = fn('''
        class A:
            class B:
                def m(self):
                    return 1
            def n(self):
                pass
        ''')
    got = functions_from_source(src, "pkg.mod", "pkg")
    assert [(f.qualname, f.module, f.top) for f in got] == [("A.B.m", "pkg.mod", "pkg"),
                                                            ("A.n", "pkg.mod", "pkg")]
    assert got[0].source == "def m(self):\n    return 1\n"
    assert ast.parse(got[1].source)


def test_inserted_statements_read_only_names_bound_above_them(sample):
    """An inserted statement never reads a local before the function binds it (``print(match)``
    above ``match = ...`` would fail at run time): every local it reads is a parameter or is
    assigned on an earlier line."""
    checked = 0
    for i, f in enumerate(sample):
        for seed in range(4):
            edit = generate("insert_stmt", f.source, random.Random(1000 * i + seed), "heldout")
            if edit is None:
                continue
            tree = ast.parse(f.source)
            fn = tree.body[0]
            params = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
            first_store = {}
            for n in ast.walk(fn):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    first_store[n.id] = min(first_store.get(n.id, 10**9), n.lineno)
            after_lines, before_lines = edit.after.split("\n"), f.source.split("\n")
            at = next(k for k, (a, b) in enumerate(zip(after_lines, before_lines + [None])) if a != b)
            for n in ast.walk(ast.parse(textwrap.dedent(edit.params["stmt"]))):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in first_store:
                    assert n.id in params or first_store[n.id] <= at, (f.id, edit.instruction, n.id)
            checked += 1
    assert checked >= 40


def test_add_param_spares_properties_and_keeps_protocol_dunders_callable():
    def add_param(src, rng, names):
        return generate("add_param", src, rng, names)

    prop = fn("""
        @property
        def size(self):
            return self._size
    """)
    assert all(add_param(prop, random.Random(s), "heldout") is None for s in range(20))
    lt = fn("""
        def __lt__(self, other):
            return self.key < other.key
    """)
    for s in range(20):
        edit = add_param(lt, random.Random(s), "heldout")
        assert edit is not None and edit.params["default"] is not None, edit  # never a new required one
        f = ast.parse(edit.after).body[0]
        assert len(f.args.args) - len(f.args.defaults) == 2 and not any(
            d is None for d in f.args.kw_defaults)
