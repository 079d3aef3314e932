"""Tests of the data layer: splits, corpora, tokenizers, prepared cache, batches, PCFG."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sandbox.core.errors import UserError
from sandbox.data import (
    SPLITS,
    BPETokenizer,
    ByteTokenizer,
    Document,
    StdlibCode,
    StdlibProse,
    Synthetic,
    TextFiles,
    check_seq_len,
    eval_batches,
    get_batch,
    pcfg,
    prepare,
    split_documents,
    split_of,
)
from sandbox.data.corpora import extract_prose

prepare_mod = importlib.import_module("sandbox.data.prepare")  # the package exports prepare()
FIXTURES = Path(__file__).parent / "fixtures"
TEXT = FIXTURES / "text"
CONF = Path(__file__).parent.parent / "conf"


# ----------------------------------------------------------------------------- splits


def test_split_of_is_stable_and_follows_fractions():
    # pinned values: a change here silently reshuffles every cached corpus
    assert split_of("json", 0.05, 0.05) == "test"
    assert split_of("email", 0.05, 0.05) == "train"
    assert split_of("x", 0.3, 0.3) == "test"
    assert split_of("z", 0.3, 0.3) == "val"
    assert split_of("z", 0.3, 0.3, salt="other") in SPLITS
    counts = {s: 0 for s in SPLITS}
    for i in range(4000):
        counts[split_of(f"g{i}", 0.1, 0.2)] += 1
    assert abs(counts["val"] / 4000 - 0.1) < 0.03 and abs(counts["test"] / 4000 - 0.2) < 0.03


def test_groups_never_straddle_splits():
    docs = [Document(f"mod{i % 40}", f"text {i} " * 5) for i in range(400)]
    out = split_documents(docs, 0.1, 0.1)
    seen = {}
    for s in SPLITS:
        assert out[s], s
        for d in out[s]:
            assert seen.setdefault(d.group, s) == s
    assert sum(len(v) for v in out.values()) == len(docs)
    # each split keeps the corpus order
    for s in SPLITS:
        idx = [docs.index(d) for d in out[s]]
        assert idx == sorted(idx)
    assert split_documents(docs, 0.1, 0.1) == out


def test_tiny_corpora_get_every_split():
    three = [Document(g, "some text here") for g in ("a", "b", "c")]
    out = split_documents(three, 0.05, 0.05)
    assert sorted(len(out[s]) for s in SPLITS) == [1, 1, 1]
    one = [Document("only", "x" * 100)]
    out = split_documents(one, 0.1, 0.2)
    assert [len(out[s][0].text) for s in SPLITS] == [70, 10, 20]
    assert "".join(out[s][0].text for s in SPLITS) == "x" * 100


def test_empty_split_and_bad_fractions_raise():
    with pytest.raises(UserError, match="split is empty.*data.val_fraction"):
        split_documents([Document("a", "ab")], 0.1, 0.1)
    with pytest.raises(UserError, match="data.val_fraction"):
        split_documents([Document("a", "abc")], 0.0, 0.1)
    with pytest.raises(UserError, match="sum below 1"):
        split_documents([Document("a", "abc")], 0.5, 0.5)
    # with >= 3 groups a split holding only whitespace is still empty
    docs = [Document(g, "text") for g in ("a", "b", "c")]
    held_out = split_documents(docs, 0.05, 0.05)["test"][0].group
    docs = [Document(d.group, "  \n" if d.group == held_out else d.text) for d in docs]
    with pytest.raises(UserError, match="the test split is empty"):
        split_documents(docs, 0.05, 0.05)


# ----------------------------------------------------------------------------- batches


def test_get_batch_is_pure_and_shards_by_process():
    tokens = np.arange(1000, dtype=np.uint16)
    kw = dict(seed=3, step=7, batch_size=8, seq_len=16)
    a = get_batch(tokens, **kw)
    assert a.shape == (8, 16) and a.dtype == np.int32
    np.testing.assert_array_equal(a, get_batch(tokens, **kw))
    assert not np.array_equal(a, get_batch(tokens, **{**kw, "step": 8}))
    assert not np.array_equal(a, get_batch(tokens, **{**kw, "seed": 4}))
    # rows are real windows of the token stream
    np.testing.assert_array_equal(np.diff(a, axis=1), 1)
    parts = [get_batch(tokens, **kw, process_index=p, process_count=2) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), a)
    with pytest.raises(UserError, match="train.batch_size"):
        get_batch(tokens, **{**kw, "batch_size": 9}, process_count=2)


def test_get_batch_covers_every_start():
    tokens = np.arange(20, dtype=np.uint16)
    starts = {int(get_batch(tokens, seed=0, step=s, batch_size=4, seq_len=5)[i, 0])
              for s in range(200) for i in range(4)}
    assert starts == set(range(16))


def test_check_seq_len():
    check_seq_len(np.zeros(11), 10, "val")
    with pytest.raises(UserError, match=r"train.seq_len=10 .* val split, which has only 10 tokens"):
        check_seq_len(np.zeros(10), 10, "val")
    with pytest.raises(UserError, match="eval.seq_len"):
        check_seq_len(np.zeros(3), 10, "test", field="eval.seq_len")


def test_eval_batches_are_spread_and_disjoint():
    tokens = np.arange(1000, dtype=np.uint16)
    full = list(eval_batches(tokens, batch_size=4, seq_len=10, max_batches=None))
    assert sum(len(b) for b in full) == 100 and len(full[-1]) == 4
    capped = list(eval_batches(tokens, batch_size=4, seq_len=10, max_batches=3))
    assert [len(b) for b in capped] == [4, 4, 4]
    starts = np.concatenate([b[:, 0] for b in capped])
    assert (np.diff(starts) >= 10).all() and starts[-1] >= 900  # whole split, no overlap
    np.testing.assert_array_equal(
        np.concatenate(capped),
        np.concatenate(list(eval_batches(tokens, batch_size=4, seq_len=10, max_batches=3))))
    odd = list(eval_batches(tokens[:55], batch_size=2, seq_len=10, max_batches=None))
    assert [len(b) for b in odd] == [2, 2, 1]


# ----------------------------------------------------------------------------- text files


def test_text_files_folder_file_and_glob():
    docs = list(TextFiles(str(TEXT)).documents())
    assert [d.group for d in docs] == [
        "alpha.txt", "beta.txt", "gamma.txt", "sub/delta.py", "sub/epsilon.txt"]
    assert docs[0].text == (TEXT / "alpha.txt").read_text(encoding="utf-8")
    assert [d.group for d in TextFiles(str(TEXT / "beta.txt")).documents()] == ["beta.txt"]
    globbed = list(TextFiles(str(TEXT / "**" / "*.txt")).documents())
    assert [d.group for d in globbed] == ["alpha.txt", "beta.txt", "gamma.txt", "sub/epsilon.txt"]
    d1, d2 = TextFiles(str(TEXT)).describe(), TextFiles(TEXT).describe()
    assert d1 == d2 and len(d1["sha256"]) == 64


def test_single_file_is_split_by_position(tmp_path):
    data = prepare(TextFiles(str(TEXT / "beta.txt"), val_fraction=0.1, test_fraction=0.2),
                   ByteTokenizer(), tmp_path, progress=False)
    text = (TEXT / "beta.txt").read_text(encoding="utf-8")
    parts = [data.tokenizer.decode(data.splits[s]) for s in SPLITS]
    assert "".join(parts) == text and len(parts[2]) == round(0.2 * len(text))


def test_text_files_errors(tmp_path):
    with pytest.raises(UserError, match=r"data.path: no such file or folder .*nope"):
        TextFiles(str(tmp_path / "nope")).describe()
    with pytest.raises(UserError, match="data.path: glob .* matches no files"):
        TextFiles(str(tmp_path / "*.md")).describe()
    with pytest.raises(UserError, match="data.path: every file .* empty or whitespace"):
        TextFiles(str(FIXTURES / "blank")).describe()
    with pytest.raises(UserError, match="data.path: folder .* holds no files"):
        TextFiles(str(tmp_path)).describe()
    with pytest.raises(UserError, match="data.path: not set"):
        TextFiles("???").describe()
    with pytest.raises(UserError) as e:
        list(TextFiles(str(FIXTURES / "bad_utf8")).documents())
    msg = str(e.value)
    assert "latin1.txt" in msg and "offset 3" in msg and "0xe9" in msg and "re-encode" in msg
    assert "\n" not in msg
    docs = list(TextFiles(str(FIXTURES / "bad_utf8"), encoding_errors="replace").documents())
    assert "caf\ufffd" in docs[1].text
    with pytest.raises(UserError, match="data.encoding_errors"):
        TextFiles(str(TEXT), encoding_errors="bogus").describe()


# ----------------------------------------------------------------------------- tokenizers

SAMPLES = ["", "hello", "  leading and trailing  ", "tabs\tand\r\nCRLF\n", "naïve café 日本語 🎉",
           "[EOS] [MASK] <|endoftext|>", "def f(x):\n    return x ** 2  # square\n"]


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.mask_id, tok.bos_id) == (260, 256, 257, 258, 259)
    for s in SAMPLES:
        assert tok.decode(tok.encode(s)) == s
    assert tok.encode("é") == [0xC3, 0xA9]
    ids = np.array([tok.bos_id, 104, 105, tok.eos_id, tok.mask_id, tok.pad_id])
    assert tok.decode(ids) == "hi"
    np.testing.assert_array_equal(tok.is_special(ids), [1, 0, 0, 1, 1, 1])
    assert tok.decode([0xFF, 65]) == "\ufffdA"
    assert tok.fingerprint() == ByteTokenizer().fingerprint()


def _fixture_texts() -> list[str]:
    return [d.text for d in TextFiles(str(TEXT)).documents()]


def test_bpe_train_round_trip_and_cache(tmp_path, monkeypatch):
    tok = BPETokenizer(vocab_size=320, min_frequency=1)
    tok.train(TextFiles(str(TEXT)).documents(), tmp_path, "corpus-hash")
    assert tok.vocab_size <= 320 and tok.vocab_size > 260
    assert (tok.eos_id, tok.pad_id, tok.mask_id, tok.bos_id) == tuple(tok.vocab_size - 4 + np.arange(4))
    for s in SAMPLES + _fixture_texts():
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        assert not tok.is_special(np.array(ids, dtype=np.int64)).any()  # "[EOS]" stays text
    assert len(tok.encode(_fixture_texts()[1])) < len(_fixture_texts()[1].encode())  # it compresses
    assert tok.decode([tok.bos_id, *tok.encode("the"), tok.eos_id]) == "the"
    # a second tokenizer with the same corpus hash loads the cached file instead of training
    import tokenizers

    def no_training(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(tokenizers.Tokenizer, "train_from_iterator", no_training)
    again = BPETokenizer(vocab_size=320, min_frequency=1)
    again.train([], tmp_path, "corpus-hash")
    assert again.encode(SAMPLES[4]) == tok.encode(SAMPLES[4])
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 1
    with pytest.raises(UserError, match="tokenizer.vocab_size"):
        BPETokenizer(vocab_size=100).train([], tmp_path, "x")


def test_bpe_words_gives_an_identifier_one_spelling(tmp_path):
    """Under gpt2 pre-splitting ` krill` (after a space) and `krill` (after a backtick) are
    different pieces; under `words` both are the same ids, and the text still round-trips."""
    code = ["def f(self, krill_count, x):\n    return self.data > krill_count + x\n"] * 20
    code += ["def g(a, b):\n    krill_total = a % b\n    return (krill_total, a)\n"] * 20
    gpt2 = BPETokenizer(vocab_size=320, min_frequency=1)
    gpt2.train(code + _fixture_texts(), tmp_path, "h")
    words = BPETokenizer(vocab_size=320, min_frequency=1, pretokenize="words")
    words.train(code + _fixture_texts(), tmp_path, "h")
    assert words.fingerprint() != gpt2.fingerprint()
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 2  # cached apart

    def spellings(tok):
        name = tok.encode("krill_count")
        return [any(ids[i:i + len(name)] == name for i in range(len(ids)))
                for ids in (tok.encode("rename `krill_count`"), tok.encode("(self, krill_count)"),
                            tok.encode("(krill_count)"))]

    assert spellings(words) == [True, True, True]
    assert not all(spellings(gpt2))  # the failure `words` exists for
    for s in SAMPLES + code[:1] + _fixture_texts():
        assert words.decode(words.encode(s)) == s
    with pytest.raises(UserError, match="tokenizer.pretokenize"):
        BPETokenizer(pretokenize="spaces").train([], tmp_path, "x")


# ----------------------------------------------------------------------------- prepare


def test_prepare_writes_and_reuses_cache(tmp_path, monkeypatch):
    corpus = TextFiles(str(TEXT), val_fraction=0.2, test_fraction=0.2)
    data = prepare(corpus, ByteTokenizer(), tmp_path, progress=False)
    m = data.manifest
    assert data.dir.parent == tmp_path and data.dir.name.startswith("text_files-bytes-")
    assert json.loads((data.dir / "manifest.json").read_text()) == m
    assert m["sha256"] == corpus.describe()["sha256"] and m["dtype"] == "uint16"
    assert m["tokenizer"]["vocab_size"] == 260 and m["tokenizer"]["eos_id"] == 256
    groups = [g for s in SPLITS for g in m["splits"][s]["group_names"]]
    assert sorted(groups) == sorted(d.group for d in corpus.documents())  # disjoint, complete
    tok = data.tokenizer
    for s in SPLITS:
        arr = data.splits[s]
        assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
        assert m["splits"][s]["tokens"] == len(arr) and arr[-1] == tok.eos_id
        texts = [(TEXT / g).read_text(encoding="utf-8") for g in m["splits"][s]["group_names"]]
        assert data.n_bytes[s] == sum(len(t.encode()) for t in texts)
        # bytes: one token per byte plus one EOS per document
        assert data.tokens_per_byte(s) == pytest.approx(1 + len(texts) / data.n_bytes[s])
        docs = np.split(np.asarray(arr), np.flatnonzero(arr == tok.eos_id) + 1)[:-1]
        assert sorted(tok.decode(d) for d in docs) == sorted(texts)
    # second call: no documents are read, the same folder comes back
    desc = corpus.describe()
    monkeypatch.setattr(TextFiles, "describe", lambda self: desc)
    monkeypatch.setattr(TextFiles, "documents", lambda self: pytest.fail("re-prepared"))
    again = prepare(corpus, ByteTokenizer(), tmp_path, progress=False)
    assert again.dir == data.dir and again.manifest == m
    assert [p.name for p in tmp_path.iterdir()] == [data.dir.name]


def test_prepare_key_changes_with_fractions_and_tokenizer(tmp_path):
    a = prepare(TextFiles(str(TEXT)), ByteTokenizer(), tmp_path, progress=False)
    b = prepare(TextFiles(str(TEXT), val_fraction=0.3), ByteTokenizer(), tmp_path, progress=False)
    assert a.dir != b.dir


def test_prepare_with_bpe_reloads_its_tokenizer(tmp_path):
    corpus = TextFiles(str(TEXT), val_fraction=0.2, test_fraction=0.2)
    data = prepare(corpus, BPETokenizer(vocab_size=300, min_frequency=1), tmp_path, progress=False)
    assert (data.dir / "tokenizer.json").exists() and data.manifest["tokenizer"]["state_sha256"]
    fresh = BPETokenizer(vocab_size=300, min_frequency=1)
    again = prepare(corpus, fresh, tmp_path, progress=False)
    assert again.tokenizer is fresh and fresh.vocab_size == data.tokenizer.vocab_size
    assert data.manifest["dtype"] == "uint16" and data.tokens_per_byte("train") < 1
    first = (TEXT / data.manifest["splits"]["val"]["group_names"][0]).read_text(encoding="utf-8")
    val = np.asarray(again.splits["val"])
    assert fresh.decode(val[: np.argmax(val == fresh.eos_id)]) == first


def test_prepare_is_atomic(tmp_path, monkeypatch):
    real = prepare_mod._write_split
    calls = []

    def failing(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-prepare")
        return real(path, *a, **k)

    monkeypatch.setattr(prepare_mod, "_write_split", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(TextFiles(str(TEXT)), ByteTokenizer(), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a cache folder nor a temporary one
    monkeypatch.setattr(prepare_mod, "_write_split", real)
    data = prepare(TextFiles(str(TEXT)), ByteTokenizer(), tmp_path, progress=False)
    assert sorted(p.name for p in data.dir.iterdir()) == ["manifest.json", "test.bin", "train.bin",
                                                         "val.bin"]


def test_prepare_removes_temporaries_of_dead_processes(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name, pid in ((".tmp-dead", int(dead)), (".tmp-alive", os.getpid())):
        (tmp_path / name).mkdir()
        (tmp_path / name / ".owner").write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
    prepare(TextFiles(str(TEXT)), ByteTokenizer(), tmp_path, progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert ".tmp-dead" not in names and ".tmp-alive" in names


# ----------------------------------------------------------------------------- stdlib


def _fake_stdlib(root: Path) -> Path:
    files = {
        "os.py": "import sys\n",
        "email/__init__.py": '"""Email package."""\n',
        "email/mime/text.py": "# MIME text\nclass MIMEText:\n    pass\n",
        "json/decoder.py": "def decode(s):\n    return s\n",
        "test/test_os.py": "assert True\n",
        "test/support/helper.py": "x = 1\n",
        "unittest/test/test_case.py": "x = 1\n",
        "unittest/case.py": "class TestCase:\n    pass\n",
        "distutils/tests/test_x.py": "x = 1\n",
        "idlelib/idle_test/htest.py": "x = 1\n",
        "idlelib/run.py": "x = 1\n",
        "test_support.py": "x = 1\n",
        "site-packages/numpy/core.py": "x = 1\n",
        "__pycache__/os.py": "x = 1\n",
        "email/notes.txt": "not python\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "legacy.py").write_bytes(b"# caf\xe9\n")
    return root


def test_stdlib_code_excludes_tests_and_groups_by_top_level(tmp_path):
    corpus = StdlibCode(root=str(_fake_stdlib(tmp_path)))
    assert corpus.files() == ["email/__init__.py", "email/mime/text.py", "idlelib/run.py",
                              "json/decoder.py", "os.py", "unittest/case.py"]
    assert [d.group for d in corpus.documents()] == ["email", "email", "idlelib", "json", "os",
                                                     "unittest"]
    assert corpus.describe() == StdlibCode(root=str(tmp_path)).describe()
    assert StdlibCode(root=str(tmp_path), max_files=3).files() == [
        "email/__init__.py", "idlelib/run.py", "os.py"]
    with pytest.raises(UserError, match="data.max_files"):
        StdlibCode(root=str(tmp_path), max_files=0).describe()


def test_stdlib_code_live_sample():
    corpus = StdlibCode(max_files=20)
    files = corpus.files()
    assert len(files) == 20 and files == sorted(files)
    for rel in files:
        parts = rel.split("/")
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts)
        assert not parts[-1].startswith("test_")
    docs = list(corpus.documents())
    assert [d.group for d in docs] == [f.split("/")[0].removesuffix(".py") for f in files]
    d = corpus.describe()
    assert d["version"] == ".".join(map(str, __import__("sys").version_info[:3]))
    assert d == StdlibCode(max_files=20).describe()


def test_stdlib_prose_extracts_docstrings_and_comments(tmp_path):
    src = ('#!/usr/bin/env python\n"""Module doc."""\n\n# A comment\n# that continues.\n'
           'x = 1  # noqa: E501\n# -------\n\ndef f():\n    """Function doc.\n\n    Details.\n    """\n'
           '    return 1  # trailing note\n\nclass C:\n    """Class doc."""\n')
    assert extract_prose(src) == ("Module doc.\n\nA comment\nthat continues.\n\n"
                                  "Function doc.\n\nDetails.\n\ntrailing note\n\nClass doc.\n")
    assert extract_prose("def broken(:\n") == ""
    prose = StdlibProse(root=str(_fake_stdlib(tmp_path)))
    assert [(d.group, d.text) for d in prose.documents()] == [
        ("email", "Email package.\n"), ("email", "MIME text\n")]
    assert prose.describe()["version"].endswith("prose-extractor-v1")


# ----------------------------------------------------------------------------- PCFG


def test_pcfg_is_ll1_and_parses_its_samples():
    assert pcfg.ll1_table()  # builds without conflict: the grammar is unambiguous
    words = [rhs[0] for a, alts in pcfg.GRAMMAR.items() for _, rhs in alts
             if len(rhs) == 1 and not pcfg.is_nonterminal(rhs[0])]
    assert len(words) == len(set(words))  # every word has exactly one preterminal
    assert not any(c in w for w in words if w not in pcfg.END_MARKS for c in " .\n")
    for sentence, derivation in pcfg.sample_derivations(np.random.default_rng(0), 2000):
        assert pcfg.parse(sentence) == derivation
    with pytest.raises(ValueError):
        pcfg.parse("the cat the dog. ")


def test_pcfg_entropy_matches_monte_carlo():
    a = pcfg.analytic()
    samples = pcfg.sample_derivations(np.random.default_rng(1), 20000)
    bits = np.array([-pcfg.derivation_log2prob(d) for _, d in samples])
    nbytes = np.array([len(s.encode()) for s, _ in samples])
    assert abs(bits.mean() - a["bits_per_sentence"]) < 4 * bits.std() / math.sqrt(len(bits))
    assert abs(nbytes.mean() - a["bytes_per_sentence"]) < 4 * nbytes.std() / math.sqrt(len(nbytes))
    assert a["bits_per_byte"] == pytest.approx(a["bits_per_sentence"] / a["bytes_per_sentence"])
    assert 0.3 < a["bits_per_byte"] < 2 and a["spectral_radius"] < 1


def test_synthetic_corpus(tmp_path):
    corpus = Synthetic(seed=5, n_sentences=3000, sentences_per_doc=100)
    docs = list(corpus.documents())
    assert len(docs) == 30 and docs[0].group == "chunk000000"
    assert docs == list(Synthetic(seed=5, n_sentences=3000, sentences_per_doc=100).documents())
    assert docs != list(Synthetic(seed=6, n_sentences=3000, sentences_per_doc=100).documents())
    stream = "".join(d.text for d in docs)
    sentences = [s for s in stream.replace(". ", ".\x00").replace("\n", "\n\x00").split("\x00") if s]
    assert len(sentences) == 3000  # the stream splits back into sentences uniquely
    assert corpus.true_bits_per_byte() == pcfg.bits_per_byte()
    data = prepare(corpus, ByteTokenizer(), tmp_path, progress=False)
    assert data.manifest["true_bpb"] == pytest.approx(pcfg.bits_per_byte())
    with pytest.raises(UserError, match="data.n_sentences"):
        Synthetic(n_sentences=0).describe()


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", sorted((CONF / "data").glob("*.yaml")) + sorted(
    (CONF / "tokenizer").glob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_configs_match_constructors(path):
    from hydra.utils import get_class, instantiate

    cfg = OmegaConf.load(path)
    cls = get_class(cfg._target_)
    params = set(inspect.signature(cls).parameters)
    assert set(cfg) - {"_target_"} <= params
    if path.parent.name == "data":
        assert cls.name == path.stem
    if "path" in cfg.keys():  # text_files: the mandatory path
        cfg.path = str(TEXT)
    obj = instantiate(cfg)
    assert isinstance(obj, cls)


def test_public_api_is_reexported():
    import sandbox.data as data

    for name in ("Prepared", "prepare", "Tokenizer", "split_of", "Document"):
        assert hasattr(data, name)
