"""Tokenizers: text <-> token ids, plus the special tokens every objective needs.

``bytes`` (default) maps UTF-8 bytes to ids 0..255 and needs no training; ``bpe`` is a
byte-level BPE trained locally with Hugging Face ``tokenizers`` on the train split of
the corpus. Both are lossless on any text. Nothing is downloaded.

Design choices:

* **Specials live outside the text vocabulary.** ``[EOS]`` (document separator),
  ``[PAD]``, ``[MASK]`` (the absorbing state of masked diffusion) and ``[BOS]`` get the
  ids right after the text ids, and no text ever encodes to them: the BPE model never
  sees them (a literal ``"[EOS]"`` in a file is just text). ``decode`` drops them.
* **vocab_size is exact, not padded.** The model pads its embedding table itself.
* **Training is cached by content.** ``train(texts, cache_dir, corpus_hash)`` loads
  ``<cache_dir>/tokenizers/bpe-...-<corpus_hash>.json`` when it exists and otherwise
  trains and writes it atomically. :meth:`Tokenizer.fingerprint` names how a tokenizer
  is built (algorithm, size, library version), not a trained state: together with the
  corpus hash it determines the trained vocabulary, so the prepared-data cache can be
  looked up before any training. Prepared data also stores its own copy of the trained
  tokenizer (``save`` / ``load``), so it never depends on this cache afterwards.
* **Constructors never raise** (Hydra would wrap the error); sizes are checked in
  ``train``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sandbox.core.errors import UserError

N_SPECIALS = 4  # eos, pad, mask, bos, in that order after the text ids


class Tokenizer:
    """Common interface. Subclasses set ``name`` and ``n_text`` (number of text ids).

    ``APPENDED``: the special tokens that get new ids after the text ids, in order (a
    tokenizer whose text vocabulary already holds one of them, as a pretrained file's
    document separator, leaves it out and overrides its ``*_id``)."""

    name: str = "tokenizer"
    trainable: bool = False
    APPENDED: tuple[str, ...] = ("eos", "pad", "mask", "bos")

    @property
    def n_text(self) -> int:
        raise NotImplementedError

    def _appended(self, special: str) -> int:
        return self.n_text + self.APPENDED.index(special)

    @property
    def vocab_size(self) -> int:
        return self.n_text + len(self.APPENDED)

    @property
    def eos_id(self) -> int:
        return self._appended("eos")

    @property
    def pad_id(self) -> int:
        return self._appended("pad")

    @property
    def mask_id(self) -> int:
        return self._appended("mask")

    @property
    def bos_id(self) -> int:
        return self._appended("bos")

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """Encode several texts; subclasses override with a faster batch path."""
        return [np.asarray(self.encode(t), dtype=np.int64) for t in texts]

    def fingerprint(self) -> str:
        raise NotImplementedError

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask of special-token ids (same shape as ``ids``)."""
        return np.asarray(ids) >= self.n_text

    def train(self, texts: Iterable, cache_dir: str | os.PathLike, corpus_hash: str) -> None:
        """Fit to the training texts or documents (no-op for tokenizers without state)."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained state (no-op for tokenizers without state)."""

    def load(self, path: str | os.PathLike) -> None:
        """Read a state written by :meth:`save`."""

    def describe(self) -> dict:
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint(),
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "mask_id": self.mask_id,
            "bos_id": self.bos_id,
        }


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes are ids 0..255; eos=256, pad=257, mask=258, bos=259; vocab_size=260."""

    name = "bytes"

    @property
    def n_text(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids) -> str:
        arr = np.asarray(ids, dtype=np.int64).ravel()
        return arr[(arr >= 0) & (arr < 256)].astype(np.uint8).tobytes().decode("utf-8", "replace")

    def fingerprint(self) -> str:
        return "bytes-v1"


PRETOKENIZERS = ("gpt2", "words")


class BPETokenizer(Tokenizer):
    r"""Byte-level BPE (no normalization, so it is lossless).

    ``vocab_size`` counts the 4 specials. If the training text is too small to learn
    that many merges, the vocabulary is smaller and ``vocab_size`` reports the real size.

    ``pretokenize`` decides where merges may not cross:

    * ``gpt2`` (default): GPT-2's regex, which glues a leading space to a word (`` name``).
      The same identifier then has two spellings, ``name`` after ``(`` or a backtick and
      `` name`` after a space, usually with different BPE pieces.
    * ``words``: runs of word characters (``\w+``), of punctuation and of whitespace are
      split apart, so an identifier has one spelling wherever it occurs. Code edits need this:
      an instruction names the new identifier in backticks and the function uses it after a
      space or a bracket; under ``gpt2`` only 179 of the 396 such names in the micro single-edit
      test items shared their tokens with the edited function, under ``words`` 384, for about
      16% more tokens per function (docs/design.md, "Identifiers with one spelling").
    """

    name = "bpe"
    trainable = True
    VERSION = 1

    def __init__(self, vocab_size: int = 2048, min_frequency: int = 2, pretokenize: str = "gpt2"):
        self.requested_vocab_size = vocab_size
        self.min_frequency = min_frequency
        self.pretokenize = pretokenize
        self._tok = None

    def _hf(self):
        if self._tok is None:
            raise RuntimeError("BPETokenizer used before train() or load()")
        return self._tok

    @property
    def n_text(self) -> int:
        return self._hf().get_vocab_size()

    def _check(self) -> None:
        v = self.requested_vocab_size
        if not isinstance(v, int) or v < 256 + N_SPECIALS + 1:
            raise UserError(
                f"tokenizer.vocab_size: must be an integer of at least {256 + N_SPECIALS + 1} "
                f"(256 byte ids + {N_SPECIALS} specials + merges), got {v!r}"
            )
        if not isinstance(self.min_frequency, int) or self.min_frequency < 0:
            raise UserError(
                f"tokenizer.min_frequency: must be a non-negative integer, got {self.min_frequency!r}"
            )
        if self.pretokenize not in PRETOKENIZERS:
            raise UserError(f"tokenizer.pretokenize: unknown value {self.pretokenize!r} "
                            f"(choose one of {', '.join(PRETOKENIZERS)})")

    def fingerprint(self) -> str:
        import tokenizers

        pre = "" if self.pretokenize == "gpt2" else f"-pre{self.pretokenize}"  # gpt2 keeps old cache keys
        return (f"bpe-v{self.VERSION}-vocab{self.requested_vocab_size}-minfreq{self.min_frequency}"
                f"{pre}-hf{tokenizers.__version__}")

    def cache_path(self, cache_dir: str | os.PathLike, corpus_hash: str) -> Path:
        key = hashlib.sha256(f"{self.fingerprint()}|{corpus_hash}".encode()).hexdigest()[:16]
        return Path(cache_dir) / "tokenizers" / f"bpe-{self.requested_vocab_size}-{key}.json"

    def train(self, texts: Iterable, cache_dir: str | os.PathLike, corpus_hash: str) -> None:
        """Load the BPE cached for ``corpus_hash``, or train on ``texts`` (strings or
        :class:`~sandbox.data.corpora.Document`) and cache it."""
        self._check()
        path = self.cache_path(cache_dir, corpus_hash)
        if path.exists():
            self.load(path)
            return
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as HFTokenizer

        tok = HFTokenizer(models.BPE())
        if self.pretokenize == "words":  # \w+ | punctuation | whitespace, then bytes (class doc)
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\s+"), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.requested_vocab_size - N_SPECIALS,
            min_frequency=self.min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((getattr(t, "text", t) for t in texts), trainer=trainer)
        self._tok = tok
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save(path)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self._hf().save(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, path: str | os.PathLike) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self._hf().encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        encs = self._hf().encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids) -> str:
        arr = np.asarray(ids, dtype=np.int64).ravel()
        keep = arr[(arr >= 0) & (arr < self.n_text)]
        return self._hf().decode(keep.tolist(), skip_special_tokens=False)


class GGUFTokenizer(Tokenizer):
    """The byte-level BPE stored in a pretrained GGUF file (``tokenizer=smollm2``), rebuilt
    with Hugging Face ``tokenizers`` from the file's vocabulary and merges, so text is cut
    as the pretrained model saw it and its embedding rows keep their meaning.

    ``weights``: ``gguf:PATH`` or a ``conf/pretrained`` entry (``sandbox.core.pretrained``).
    Ids: the file's tokens keep theirs (0..n_text-1). EOS is the file's document separator
    (``eos_token``, ``<|endoftext|>`` for SmolLM2: pretraining documents are joined by it, so
    the pretrained model already ends text with it); PAD, MASK and BOS are new ids after the
    file's (``n_text`` .. ``n_text + 2``; ``sandbox.models.pretrained`` starts their rows at the
    mean embedding). The file's control tokens (``<|im_start|>`` ...) are specials too: never
    produced by encoding text (they are not registered as added tokens, so a literal
    ``<|im_start|>`` in a file is text) and dropped by ``decode``.

    Pre-tokenizer: ``smollm`` / ``starcoder`` / ``refact`` files split digits one by one and
    then apply GPT-2's regex (llama.cpp's pre-tokenizer table); others GPT-2's regex alone.
    The state is the file (``train`` reads it); prepared data keeps a copy (``save``)."""

    name = "gguf"
    trainable = True
    APPENDED = ("pad", "mask", "bos")  # EOS is the file's own separator
    DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r")

    def __init__(self, weights: str = "smollm2_135m", eos_token: str = "<|endoftext|>"):
        self.weights, self.eos_token = str(weights), str(eos_token)
        self._tok, self._fp, self._eos, self._control = None, None, None, None

    def _hf(self):
        if self._tok is None:
            self.train((), None, "")
        return self._tok

    @property
    def n_text(self) -> int:
        return self._hf().get_vocab_size()

    @property
    def eos_id(self) -> int:
        self._hf()
        return self._eos

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        self._hf()
        return (ids >= self.n_text) | np.isin(ids, self._control)

    def fingerprint(self) -> str:
        self._hf()  # reads the file once; train() after it is a no-op
        return f"gguf-{self._fp}-eos{self.eos_token}-v1"

    def _build(self, tokens, merges, token_types, pre: str):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        if self.eos_token not in tokens:
            raise UserError(f"tokenizer.eos_token={self.eos_token!r} is not in the file's vocabulary; name "
                            "its document-separator token")
        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        digits = pre_tokenizers.Digits(individual_digits=True)
        tok.pre_tokenizer = (pre_tokenizers.Sequence([digits, byte_level]) if pre in self.DIGITS_PRE
                             else byte_level)
        tok.decoder = decoders.ByteLevel()
        self._tok, self._eos = tok, vocab[self.eos_token]
        control = [i for i, t in enumerate(token_types) if t == 3]  # llama.cpp's CONTROL type
        self._control = np.asarray(sorted(set(control) | {self._eos}), np.int64)

    @classmethod
    def from_gguf(cls, g, eos_token: str = "<|endoftext|>") -> GGUFTokenizer:
        """The tokenizer of an already opened file (``sandbox.core.pretrained.GGUF``)."""
        tok = cls(g.spec, eos_token)
        tok._fp = g.fingerprint()
        tok._build(g.tokens, g.merges, g.token_types, g.pre)
        return tok

    def train(self, texts: Iterable, cache_dir, corpus_hash: str) -> None:
        """Read the vocabulary from the GGUF file (the texts are not needed); once."""
        if self._tok is not None:
            return
        from sandbox.core.pretrained import open_gguf

        g = open_gguf(self.weights, "tokenizer.weights")
        self._fp = g.fingerprint()
        self._build(g.tokens, g.merges, g.token_types, g.pre)

    def save(self, path: str | os.PathLike) -> None:
        import json

        from sandbox.core.runfiles import atomic_write_text

        self._hf()
        state = {"tokenizer": json.loads(self._tok.to_str()), "eos": self._eos,
                 "control": self._control.tolist(), "fingerprint": self._fp}
        atomic_write_text(Path(path), json.dumps(state))

    def load(self, path: str | os.PathLike) -> None:
        import json

        from tokenizers import Tokenizer as HFTokenizer

        state = json.loads(Path(path).read_text())
        self._tok = HFTokenizer.from_str(json.dumps(state["tokenizer"]))
        self._eos, self._fp = int(state["eos"]), state["fingerprint"]
        self._control = np.asarray(state["control"], np.int64)

    def encode(self, text: str) -> list[int]:
        return self._hf().encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        encs = self._hf().encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids) -> str:
        arr = np.asarray(ids, dtype=np.int64).ravel()
        keep = arr[(arr >= 0) & ~self.is_special(arr)]
        return self._hf().decode(keep.tolist(), skip_special_tokens=False)
