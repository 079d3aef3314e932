"""Data layer: corpora, tokenizers, cached token arrays and batches.

``corpus -> prepare(corpus, tokenizer, cache_dir) -> Prepared.splits[split] ->
get_batch / eval_batches``. Each step lives in its own module; see their docstrings.
"""

from sandbox.data.batches import check_seq_len, eval_batches, get_batch
from sandbox.data.corpora import (
    SPLITS,
    Document,
    StdlibCode,
    StdlibProse,
    Synthetic,
    TextFiles,
    split_documents,
    split_of,
)
from sandbox.data.prepare import PREPARE_VERSION, Prepared, prepare
from sandbox.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer

__all__ = [
    "PREPARE_VERSION",
    "SPLITS",
    "BPETokenizer",
    "ByteTokenizer",
    "Document",
    "Prepared",
    "StdlibCode",
    "StdlibProse",
    "Synthetic",
    "TextFiles",
    "Tokenizer",
    "check_seq_len",
    "eval_batches",
    "get_batch",
    "prepare",
    "split_documents",
    "split_of",
]
