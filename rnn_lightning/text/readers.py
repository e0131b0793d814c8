"""The texts to classify: a text file, a table, an aclImdb-style folder, or standard input, read through
the format readers (``formats``) a chunk at a time.

Every input row becomes (id, text, error). Rows that cannot be classified are kept, with an error,
so the output has one row per input row, in input order:

- empty or whitespace-only text: error ``empty review`` (no probability);
- bytes that are not UTF-8: decoded with U+FFFD in their place and classified; error ``invalid UTF-8 replaced``;
- very long text (a 1 MB line): classified from its last ``max_len`` tokens, like every review.

Rows are read a chunk at a time (``read_reviews``), so an input of any size is never held whole:
the caller encodes each chunk and keeps only the ids and errors. Each text keeps only its end, as much
as its last ``max_len`` tokens can need (``tokenizer.text_chars``).
"""

import csv
import json
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rnn_lightning.errors import InputError, unreadable_file
from rnn_lightning.text.formats import (
    CONTINUATION,
    PREDICT_FIELD,
    UTF8_BYTES,
    Record,
    csv_records,
    decoded,
    file_tail,
    jsonl_records,
    line_records,
    parquet_records,
)
from rnn_lightning.text.locations import TEXT_FIELD
from rnn_lightning.text.tokenizer import CHUNK

EMPTY = "empty review"
CHUNK_ROWS = CHUNK  # rows handed on at a time: the texts encoded at a time
CHUNK_CHARS = 32 * 2**20  # and at most about this many characters of text: a chunk of long texts stays small


@dataclass
class ReviewRows:
    """One chunk of input rows: ids, texts and errors, index-aligned."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    chars: int = 0  # characters of text held

    def add(self, row_id: str, raw: bytes | str, max_chars: int) -> None:
        """Add a row whose text (UTF-8 bytes, or decoded) keeps its last ``max_chars`` characters."""
        error = ""
        if isinstance(raw, bytes):
            if len(raw) > UTF8_BYTES * max_chars:
                raw = raw[-UTF8_BYTES * max_chars :].lstrip(CONTINUATION)  # not a character cut in two
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text, error = raw.decode("utf-8", errors="replace"), "invalid UTF-8 replaced"
        else:
            text = raw
        text = text[-max_chars:]
        if not text.strip():
            error = EMPTY
        self.ids.append(row_id)
        self.texts.append(text)
        self.errors.append(error)
        self.chars += len(text)


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


def read_reviews(
    path: str, max_chars: int, text_field: str = TEXT_FIELD, chunk_rows: int | None = None
) -> Iterator[ReviewRows]:
    """Rows of ``path`` in chunks of ``chunk_rows`` (and about ``CHUNK_CHARS``), each text cut to its
    last ``max_chars`` characters: ``-`` (stdin, one review a line), ``.txt`` or a FIFO (one a line),
    ``.csv``/``.jsonl``/``.parquet`` with a ``text_field`` column (else a ``text`` column; and ``id``
    if present), or a folder of ``.txt`` files (one review each, ids are their paths inside it).

    The path, the encoding, the folder's files and a table's columns are checked when this is called,
    before any row is read; a malformed row later on is an ``InputError`` naming its line.
    """
    chunk_rows = chunk_rows or CHUNK_ROWS
    if path == "-":
        return _chunks(line_records(decoded(sys.stdin.buffer, "standard input"), max_chars), chunk_rows, max_chars)
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(
            f"{PREDICT_FIELD}: {path!r} does not exist; expected a .txt/.csv/.jsonl/.parquet file, a folder of .txt files, or -"
        )
    if p.is_dir():
        files = [f for f in sorted(p.rglob("*.txt")) if not f.is_dir()]
        if not files:
            raise InputError(f"{PREDICT_FIELD}: folder {path!r} holds no .txt files")
        odd = next((f for f in files if not f.is_file()), None)
        if odd is not None:  # a FIFO or a device would wait for a writer or never end
            raise InputError(f"{PREDICT_FIELD}: {str(odd)!r} is not a regular file; expected a folder of .txt files")
        texts = ((str(f.relative_to(p)), file_tail(f, max_chars)) for f in files)
        return _chunks(texts, chunk_rows, max_chars)
    if p.suffix == ".parquet":
        rows = _unreadable_is_input_error(parquet_records(p, chunk_rows, text_field), p)
    elif p.suffix == ".csv":
        rows = _unreadable_is_input_error(csv_records(p, text_field), p)
    elif p.suffix == ".jsonl":
        rows = jsonl_records(p, text_field)
    else:
        return _chunks(line_records(decoded(open(p, "rb"), repr(str(p))), max_chars), chunk_rows, max_chars)
    first = next(rows, None)  # reads the header (or first record): a missing column is refused now
    return _chunks(rows if first is None else _prepend(first, rows), chunk_rows, max_chars)


def _unreadable_is_input_error(rows: Iterator, p: Path) -> Iterator:
    """``rows``, with what pyarrow or the csv module raise for a damaged file turned into one line naming it."""
    import pyarrow as pa

    try:
        yield from rows
    except (pa.ArrowException, csv.Error, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise unreadable_file(PREDICT_FIELD, p, e) from None


def _chunks(rows: Iterable[Record], size: int, max_chars: int) -> Iterator[ReviewRows]:
    chunk = ReviewRows()
    for row_id, raw in rows:
        chunk.add(row_id, raw, max_chars)
        if len(chunk.ids) == size or chunk.chars >= CHUNK_CHARS:
            yield chunk
            chunk = ReviewRows()
    if chunk.ids:
        yield chunk


def _prepend(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest
