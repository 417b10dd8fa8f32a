"""The user's own text files; the format is chosen by the extension:

    .txt      paragraphs separated by blank lines are documents (line breaks inside a paragraph are
              kept); a file without any blank line between text lines has one document per line
    .jsonl    one JSON object per line, document in its "text" field
    .csv      document in the "text" column
    .parquet  document in the "text" column (needs pyarrow or pandas)
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from pathlib import Path

from fromzero.errors import FromzeroError

FILE_TYPES = (".txt", ".jsonl", ".csv", ".parquet")


def _read_lines(path: Path) -> Iterator[str]:
    """Decoded lines (newline kept). Invalid UTF-8 names the byte offset instead of a traceback."""
    offset = 0
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            if i == 0 and raw.startswith(codecs.BOM_UTF8):
                raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FromzeroError(
                    f"{path} is not valid UTF-8 (byte offset {offset + e.start}, line {i + 1}): re-encode it "
                    f"as UTF-8, e.g. iconv -f GBK -t UTF-8 {path} > fixed{path.suffix}"
                ) from None
            offset += len(raw)
            yield line


def _has_blank_line_between_text(path: Path) -> bool:
    seen_text = seen_gap = False
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                if seen_gap:
                    return True
                seen_text = True
            elif seen_text:
                seen_gap = True
    return False


def _iter_txt(path: Path) -> Iterator[str]:
    if not _has_blank_line_between_text(path):
        for line in _read_lines(path):
            yield line.strip()
        return
    para: list[str] = []
    for line in _read_lines(path):
        if line.strip():
            para.append(line.rstrip("\r\n"))
        elif para:
            yield "\n".join(para).strip()
            para = []
    if para:
        yield "\n".join(para).strip()


def _iter_jsonl(path: Path) -> Iterator[str]:
    for i, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise FromzeroError(
                f"{path} line {i} is not valid JSON ({e.msg}): each line must be an object like {{\"text\": \"...\"}}"
            ) from None
        if not isinstance(obj, dict) or "text" not in obj:
            found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise FromzeroError(
                f"{path} line {i} has no \"text\" field (found: {found or 'nothing'}): "
                "each line must be an object like {\"text\": \"...\"}"
            )
        text = obj["text"]
        if text is None:
            continue
        if not isinstance(text, str):
            raise FromzeroError(f"{path} line {i}: \"text\" must be a string, got {type(text).__name__}")
        yield text


def _iter_csv(path: Path) -> Iterator[str]:
    rows = csv.DictReader(_read_lines(path))
    if rows.fieldnames is None:
        return
    if "text" not in rows.fieldnames:
        raise FromzeroError(
            f"{path} has no \"text\" column (columns: {', '.join(rows.fieldnames)}): "
            "rename the column holding the documents to text"
        )
    for row in rows:
        if row["text"]:
            yield row["text"]


def _iter_parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if "text" not in names:
            raise FromzeroError(f"{path} has no \"text\" column (columns: {', '.join(names)}): rename it to text")
        for batch in pf.iter_batches(columns=["text"], batch_size=4096):
            yield from (t for t in batch.column(0).to_pylist() if t)
        return
    try:
        import pandas as pd
    except ImportError:
        raise FromzeroError(
            f"reading {path} needs pyarrow: pip install pyarrow (or convert the file to .jsonl)"
        ) from None
    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise FromzeroError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    if "text" not in frame.columns:
        raise FromzeroError(f"{path} has no \"text\" column (columns: {', '.join(map(str, frame.columns))})")
    yield from (t for t in frame["text"].tolist() if isinstance(t, str) and t)


def file_reader(path: Path):
    """The document reader for a user file, chosen by its extension (callers check the type first)."""
    return {".txt": _iter_txt, ".jsonl": _iter_jsonl, ".csv": _iter_csv, ".parquet": _iter_parquet}[path.suffix.lower()]
