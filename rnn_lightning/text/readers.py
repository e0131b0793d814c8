"""Reading reviews to classify: a text file, a table, an aclImdb-style folder, or standard input.

Every input row becomes (id, text, error). Rows that cannot be classified are kept, with an error,
so the output has one row per input row, in input order:

- empty or whitespace-only text: error ``empty review`` (no probability);
- bytes that are not UTF-8: decoded with U+FFFD in their place and classified; error ``invalid UTF-8 replaced``;
- very long text (a 1 MB line): classified from its last ``max_len`` tokens, like every review.

Rows are read a chunk at a time (``read_reviews``), so an input of any size is never held whole:
the caller encodes each chunk and keeps only the ids and errors.
"""

import csv
import json
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rnn_lightning.errors import InputError, unreadable_file
from rnn_lightning.text.sources import parquet_batches
from rnn_lightning.text.tokenizer import CHUNK

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
EMPTY = "empty review"
CHUNK_ROWS = CHUNK  # rows handed on at a time: the texts encoded at a time


@dataclass
class ReviewRows:
    """One chunk of input rows: ids, texts and errors, index-aligned."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, row_id: str, raw: bytes | str) -> None:
        error = ""
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text, error = raw.decode("utf-8", errors="replace"), "invalid UTF-8 replaced"
        else:
            text = raw
        if not text.strip():
            error = EMPTY
        self.ids.append(row_id)
        self.texts.append(text)
        self.errors.append(error)


class InputRows:
    """Every input row's (id, error), in input order, spooled to an unlinked temporary file in
    ``folder`` as they are read, so that their number costs no memory; ``rows()`` reads them back."""

    def __init__(self, folder: Path) -> None:
        self._file, self._count = tempfile.TemporaryFile("w+", dir=folder, encoding="utf-8"), 0

    def __len__(self) -> int:
        return self._count

    def extend(self, ids: list[str], errors: list[str]) -> None:
        self._file.writelines(json.dumps([i, e]) + "\n" for i, e in zip(ids, errors, strict=True))
        self._count += len(ids)

    def rows(self) -> Iterator[tuple[str, str]]:
        """(id, error) of every row so far, from the first."""
        self._file.flush()
        self._file.seek(0)
        for line in self._file:
            row_id, error = json.loads(line)
            yield row_id, error


def read_reviews(path: str, chunk_rows: int | None = None) -> Iterator[ReviewRows]:
    """Rows of ``path`` in chunks of ``chunk_rows``: ``-`` (stdin, one review a line), ``.txt`` (one a
    line), ``.csv``/``.jsonl``/``.parquet`` with a ``text`` column (and ``id`` if present), or a folder
    of ``.txt`` files (one review each, ids are their paths inside it).

    The path, the folder's files and a table's columns are checked when this is called, before any
    row is read; a malformed row later on is an ``InputError`` naming its line.
    """
    chunk_rows = chunk_rows or CHUNK_ROWS
    if path == "-":
        return _chunks(_lines(sys.stdin.buffer), chunk_rows)
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(
            f"data.predict_path: {path!r} does not exist; expected a .txt/.csv/.jsonl/.parquet file, a folder of .txt files, or -"
        )
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise InputError(f"data.predict_path: folder {path!r} holds no .txt files")
        return _chunks(((str(f.relative_to(p)), f.read_bytes()) for f in files), chunk_rows)
    if p.suffix == ".parquet":
        rows = _unreadable_is_input_error(_parquet(p, chunk_rows), p)
    elif p.suffix == ".csv":
        rows = _unreadable_is_input_error(_csv(p), p)
    elif p.suffix == ".jsonl":
        rows = _jsonl(p)
    else:
        return _chunks(_lines(open(p, "rb")), chunk_rows)
    first = next(rows, None)  # reads the header (or first record): a missing column is refused now
    return _chunks(rows if first is None else _prepend(first, rows), chunk_rows)


def _unreadable_is_input_error(rows: Iterator, p: Path) -> Iterator:
    """``rows``, with what pyarrow or the csv module raise for a damaged file turned into one line naming it."""
    import pyarrow as pa

    try:
        yield from rows
    except (pa.ArrowException, csv.Error, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise unreadable_file("data.predict_path", p, e) from None


def _chunks(rows: Iterable[tuple[str, bytes | str]], size: int) -> Iterator[ReviewRows]:
    chunk = ReviewRows()
    for row_id, raw in rows:
        chunk.add(row_id, raw)
        if len(chunk.ids) == size:
            yield chunk
            chunk = ReviewRows()
    if chunk.ids:
        yield chunk


def _prepend(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _lines(stream) -> Iterator[tuple[str, bytes]]:
    with stream:
        for number, line in enumerate(stream, start=1):
            yield str(number), line.rstrip(b"\r\n")


def _no_text_column(p: Path, columns: Iterable[str]) -> InputError:
    return InputError(f"data.predict_path: {str(p)!r} has no 'text' column (columns: {sorted(columns)})")


def _record(number: int, text, row_id) -> tuple[str, bytes | str]:
    raw = "" if text is None else text if isinstance(text, bytes) else str(text)
    return str(number if row_id is None else row_id), raw


def _parquet(p: Path, chunk_rows: int) -> Iterator[tuple[str, bytes | str]]:
    import pyarrow.parquet

    f = pyarrow.parquet.ParquetFile(p)
    names = f.schema_arrow.names
    if "text" not in names:
        raise _no_text_column(p, names)
    columns = ["text"] + (["id"] if "id" in names else [])
    number = 0
    for batch in parquet_batches(f, chunk_rows, columns):
        ids = batch.column("id").to_pylist() if "id" in columns else [None] * batch.num_rows
        for text, row_id in zip(batch.column("text").to_pylist(), ids, strict=True):
            number += 1
            yield _record(number, text, row_id)


def _csv(p: Path) -> Iterator[tuple[str, bytes | str]]:
    csv.field_size_limit(sys.maxsize)  # a review may be longer than the csv module's 128 KB default
    # surrogateescape keeps bytes that are not UTF-8, so each field is decoded (and flagged) like a line
    with open(p, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise _no_text_column(p, reader.fieldnames or [])
        for number, record in enumerate(reader, start=1):
            text = record["text"]
            raw = text.encode("utf-8", "surrogateescape") if text is not None else None
            yield _record(number, raw, record.get("id"))


def _jsonl(p: Path) -> Iterator[tuple[str, bytes | str]]:
    with open(p, "rb") as f:
        number = 0
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:  # not JSON, or not UTF-8
                why = getattr(e, "msg", None) or type(e).__name__
                raise InputError(f"data.predict_path: line {line_number} of {str(p)!r} is not JSON ({why})") from None
            if not isinstance(record, dict) or "text" not in record:
                what = f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
                raise InputError(f"data.predict_path: line {line_number} of {str(p)!r} has no 'text' ({what})")
            number += 1
            yield _record(number, record.get("text"), record.get("id"))
