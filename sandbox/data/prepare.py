"""Prepare a corpus once: split, tokenize, and cache flat token arrays with a manifest.

``prepare(corpus, tokenizer, cache_dir)`` returns a :class:`Prepared` whose splits are
read-only ``np.memmap`` arrays of token ids (``uint16`` when the vocabulary fits, else
``uint32``). Every document is followed by ``tokenizer.eos_id``, so a split is
``doc0 EOS doc1 EOS ...``. ``n_bytes`` counts the UTF-8 bytes of the text only, so bits
per byte = (total NLL in bits over the split's tokens, EOS included) / ``n_bytes``.

Design choices:

* **One folder per content.** ``<cache_dir>/<corpus>-<tokenizer>-<key>/`` where ``key``
  hashes ``corpus.describe()`` (which holds the content sha256 and the split
  fractions), the tokenizer's fingerprint and :data:`PREPARE_VERSION`. A changed file,
  fraction, tokenizer setting or preparation code gives a new folder; nothing is ever
  updated in place, so a folder with a ``manifest.json`` is complete and is reused.
* **Atomic writes.** Everything is written into a temporary folder inside
  ``cache_dir`` and renamed into place with one ``os.replace``. An exception removes
  the temporary folder; a process killed outright leaves only a hidden ``.tmp-*``
  folder, removed by the next ``prepare`` on the same host. Concurrent processes (one
  per host on a shared disk) may all prepare; the first rename wins and the others
  drop their copy.
* **Self-contained.** A trained tokenizer (BPE) is saved into the folder and reloaded
  from there, so the tokens and the vocabulary that made them can never disagree.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sandbox.core.errors import UserError
from sandbox.data.corpora import SPLITS, content_sha256, split_documents
from sandbox.data.tokenizers import Tokenizer

#: bump when the on-disk format or the way text becomes tokens changes
PREPARE_VERSION = 1
_CHUNK_DOCS = 64  # documents encoded per batch call


@dataclass
class Prepared:
    splits: dict[str, np.ndarray]  # split -> 1-D memmap of token ids, docs joined by eos_id
    n_bytes: dict[str, int]  # UTF-8 bytes of the text in each split (for bits per byte)
    tokenizer: Tokenizer
    manifest: dict  # the contents of manifest.json
    dir: Path

    def tokens_per_byte(self, split: str) -> float:
        """Tokens (EOS included) per UTF-8 byte of text in ``split``."""
        return len(self.splits[split]) / self.n_bytes[split]


def _short_hash(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cache_key(corpus, tokenizer: Tokenizer, describe: dict | None = None) -> str:
    desc = corpus.describe() if describe is None else describe
    return _short_hash({"corpus": desc, "tokenizer": tokenizer.fingerprint(),
                        "prepare_version": PREPARE_VERSION})


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


def prepare(corpus, tokenizer: Tokenizer, cache_dir: str | os.PathLike,
            progress: bool = True) -> Prepared:
    """Split and tokenize ``corpus`` into ``cache_dir`` (or reuse the cached result)."""
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data cache dir '{cache_dir}': cannot create it ({e.strerror}); "
                        "point the cache dir at a writable folder") from None
    desc = corpus.describe()
    final = cache_dir / f"{corpus.name}-{tokenizer.name}-{cache_key(corpus, tokenizer, desc)}"
    if (final / "manifest.json").exists():
        return _load(final, tokenizer)
    _remove_stale_temporaries(cache_dir)

    splits = split_documents(corpus.documents(), corpus.val_fraction, corpus.test_fraction)
    if tokenizer.trainable:
        tokenizer.train((d.text for d in splits["train"]), cache_dir, _short_hash(desc))
    dtype = _dtype(tokenizer.vocab_size)

    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=cache_dir))
    try:
        (tmp / ".owner").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        stats = {}
        total = sum(len(v) for v in splits.values())
        with tqdm(total=total, disable=not progress, unit="doc",
                  desc=f"prepare {corpus.name}/{tokenizer.name}") as bar:
            for split in SPLITS:
                stats[split] = _write_split(tmp / f"{split}.bin", splits[split], tokenizer,
                                            dtype, bar)
        if tokenizer.trainable:
            tokenizer.save(tmp / "tokenizer.json")
        manifest = _manifest(corpus, desc, tokenizer, dtype, splits, stats, final.name)
        if tokenizer.trainable:
            data = (tmp / "tokenizer.json").read_bytes()
            manifest["tokenizer"]["state_sha256"] = hashlib.sha256(data).hexdigest()
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (tmp / ".owner").unlink()
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "manifest.json").exists():  # not a lost race: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _load(final, tokenizer)


def _write_split(path: Path, docs, tokenizer: Tokenizer, dtype: np.dtype, bar) -> dict:
    n_tokens = n_bytes = 0
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    with open(path, "wb") as f:
        for i in range(0, len(docs), _CHUNK_DOCS):
            chunk = [d.text for d in docs[i:i + _CHUNK_DOCS]]
            pieces = []
            for text, ids in zip(chunk, tokenizer.encode_many(chunk), strict=True):
                if len(ids) and tokenizer.is_special(ids).any():  # text must not make specials
                    raise RuntimeError(f"{tokenizer.name} encoded text to a special id")
                pieces += [ids.astype(dtype, copy=False), eos]
                n_bytes += len(text.encode("utf-8"))
            arr = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
            f.write(arr.tobytes())
            n_tokens += len(arr)
            bar.update(len(chunk))
    return {"tokens": n_tokens, "bytes": n_bytes, "documents": len(docs),
            "groups": len({d.group for d in docs}),
            "group_names": sorted({d.group for d in docs}),
            "text_sha256": content_sha256(docs)}


def _manifest(corpus, desc, tokenizer, dtype, splits, stats, dirname) -> dict:
    m = {
        "corpus": corpus.name,
        "source": desc.get("source"),
        "version": desc.get("version"),
        "sha256": desc.get("sha256"),
        "describe": desc,
        "val_fraction": corpus.val_fraction,
        "test_fraction": corpus.test_fraction,
        "tokenizer": tokenizer.describe(),
        "dtype": dtype.name,
        "layout": "each document followed by tokenizer.eos_id",
        "splits": stats,
        "prepare_version": PREPARE_VERSION,
        "dir": dirname,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if "true_bpb" in desc:
        m["true_bpb"] = desc["true_bpb"]
    return m


def _load(folder: Path, tokenizer: Tokenizer) -> Prepared:
    manifest = json.loads((folder / "manifest.json").read_text())
    if tokenizer.trainable:
        tokenizer.load(folder / "tokenizer.json")
    if tokenizer.vocab_size != manifest["tokenizer"]["vocab_size"]:
        raise RuntimeError(f"{folder}: tokenizer does not match its manifest")
    dtype = np.dtype(manifest["dtype"])
    splits = {}
    for s in SPLITS:
        n = manifest["splits"][s]["tokens"]
        splits[s] = np.memmap(folder / f"{s}.bin", dtype=dtype, mode="r", shape=(n,))
    n_bytes = {s: manifest["splits"][s]["bytes"] for s in SPLITS}
    return Prepared(splits, n_bytes, tokenizer, manifest, folder)


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Delete ``.tmp-*`` folders left by killed processes of this host."""
    host = socket.gethostname()
    for tmp in cache_dir.glob(".tmp-*"):
        try:
            owner = json.loads((tmp / ".owner").read_text())
        except (OSError, ValueError):
            continue  # being finished right now, or not ours
        if owner.get("host") != host:
            continue
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (OSError, ValueError, KeyError):
            pass
