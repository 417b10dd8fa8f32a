"""Token shards: every document is tokenized once into a flat array on disk, read back as a memmap.

In `<cache_dir>/shards/<key>/` we keep `train.bin` and `val.bin` (token ids, uint16 or uint32 when
the vocabulary exceeds 65536, each document followed by </s>) and next to each a `.json` with its
counts, dtype, vocabulary size and sources. The key hashes everything the tokens depend on (the
sources with their files' sizes and mtimes, tokenizer.json, val_fraction, seed), so calling
build_shards again with the same inputs reuses the files and changing any input builds new ones.

The train/val split is per document and decided by a seeded hash of the document's text: it is
deterministic, the splits never share a document, and exact duplicates always land on the same side
(so the validation loss is not flattered by copies of training documents).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fromzero.data.sources import CORPUS_VERSION, iter_texts, source_files
from fromzero.errors import FromzeroError

FORMAT_VERSION = 1  # bump when the layout or the text extraction changes: old caches are ignored
BATCH_DOCS = 1024


@dataclass(frozen=True)
class ShardPaths:
    train: Path
    val: Path


def build_shards(
    sources: Sequence[str] | str,
    tokenizer: Any,
    cache_dir: str | os.PathLike = ".cache/fromzero",
    val_fraction: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> ShardPaths:
    """Tokenize `sources` once into train/val shards (or reuse the cached ones)."""
    sources = [sources] if isinstance(sources, str) else [str(s) for s in sources]
    if not sources:
        raise FromzeroError("no data sources given: name at least one, e.g. people_daily or a .txt file")
    if not 0.0 <= val_fraction < 1.0:
        raise FromzeroError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if tokenizer.eos_id is None:
        raise FromzeroError("the tokenizer has no </s> token to separate documents: train it with fromzero")
    key = shard_key(sources, tokenizer, val_fraction, seed)
    out = Path(cache_dir) / "shards" / key
    paths = ShardPaths(out / "train.bin", out / "val.bin")
    if _complete(paths):
        return paths

    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
    tmp = {split: out / f".{split}.bin.tmp-{os.getpid()}" for split in ("train", "val")}
    counts = {split: {"n_tokens": 0, "n_docs": 0} for split in ("train", "val")}
    eos = tokenizer.eos_id
    try:
        with open(tmp["train"], "wb") as ftrain, open(tmp["val"], "wb") as fval, tqdm(
            desc="tokenizing", unit=" docs", disable=not progress
        ) as bar:
            files = {"train": ftrain, "val": fval}
            for source in sources:
                bar.set_postfix_str(source[-40:])
                for docs in _batched(iter_texts(source), BATCH_DOCS):
                    ids = {"train": [], "val": []}
                    for text, doc_ids in zip(docs, tokenizer.encode_batch(docs)):
                        split = "val" if in_val(text, val_fraction, seed) else "train"
                        ids[split].extend(doc_ids)
                        ids[split].append(eos)
                        counts[split]["n_docs"] += 1
                    for split, flat in ids.items():
                        if flat:
                            np.asarray(flat, dtype=dtype).tofile(files[split])
                            counts[split]["n_tokens"] += len(flat)
                    bar.update(len(docs))
        _check_counts(counts, val_fraction, sources)
        for split, path in (("train", paths.train), ("val", paths.val)):
            os.replace(tmp[split], path)
        for split, path in (("train", paths.train), ("val", paths.val)):
            meta = {
                **counts[split], "split": split, "dtype": dtype.name, "vocab_size": tokenizer.vocab_size,
                "eos_id": eos, "sources": sources, "val_fraction": val_fraction, "seed": seed,
                "format": FORMAT_VERSION, "corpus": CORPUS_VERSION,
            }
            _atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=2, ensure_ascii=False))
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return paths


def load_tokens(path: str | os.PathLike) -> np.ndarray:
    """The token ids of a shard as a read-only memmap (an empty array for an empty split)."""
    meta = read_meta(path)
    path = Path(path)
    dtype = np.dtype(meta["dtype"])
    n = int(meta["n_tokens"])
    size = path.stat().st_size if path.exists() else -1
    if size != n * dtype.itemsize:
        raise FromzeroError(
            f"{path} is {'missing' if size < 0 else 'truncated or changed'} (expected {n} tokens): delete its "
            "folder under the cache dir and run again to rebuild it"
        )
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def read_meta(path: str | os.PathLike) -> dict:
    """The metadata json written next to a shard (.bin -> .json)."""
    meta_path = Path(path).with_suffix(".json")
    if not meta_path.is_file():
        raise FromzeroError(f"no shard metadata at {meta_path}: build the shards with fromzero (build_shards)")
    return json.loads(meta_path.read_text(encoding="utf-8"))


def shard_key(sources: Sequence[str], tokenizer: Any, val_fraction: float, seed: int) -> str:
    """A short hash of everything the shard contents depend on."""
    files = []
    for source in sources:
        for f in source_files(source):
            st = f.stat()
            files.append([source, str(f.resolve()), st.st_size, st.st_mtime_ns])
    recipe = {
        "format": FORMAT_VERSION,
        "corpus": CORPUS_VERSION,
        "files": files,
        "tokenizer": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(),
        "val_fraction": val_fraction,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def in_val(text: str, val_fraction: float, seed: int) -> bool:
    """Whether a document belongs to the validation split (a seeded hash of its text)."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def _check_counts(counts: dict, val_fraction: float, sources: list[str]) -> None:
    n_docs = counts["train"]["n_docs"] + counts["val"]["n_docs"]
    if counts["train"]["n_docs"] == 0:
        raise FromzeroError(
            f"all {n_docs} documents of {', '.join(sources)} went to validation: lower val_fraction or add data"
        )
    if val_fraction > 0 and counts["val"]["n_docs"] == 0:
        raise FromzeroError(
            f"the validation split of {', '.join(sources)} is empty ({n_docs} documents, val_fraction={val_fraction}): "
            "add documents (a .txt gets one per line or per blank-line-separated paragraph), raise val_fraction, "
            "or set it to 0"
        )


def _complete(paths: ShardPaths) -> bool:
    """Shards are complete once both .json files exist (they are written last) and sizes match."""
    for path in (paths.train, paths.val):
        meta_path = path.with_suffix(".json")
        if not (meta_path.is_file() and path.is_file()):
            return False
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if path.stat().st_size != meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize:
                return False
        except (ValueError, KeyError, TypeError):
            return False
    return True


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
