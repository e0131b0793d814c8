"""Reading reviews to classify: a text file, a table, an aclImdb-style folder, or standard input.

Every input row becomes (id, text, error). Rows that cannot be classified are kept, with an error,
so the output has one row per input row, in input order:

- empty or whitespace-only text: error ``empty review`` (no probability);
- bytes that are not UTF-8: decoded with U+FFFD in their place and classified; error ``invalid UTF-8 replaced``;
- very long text (a 1 MB line): classified from its last ``max_len`` tokens, like every review.

Text files, tables and standard input are UTF-8 (a byte-order mark is skipped) or UTF-16/32 with a
byte-order mark; other text with NUL bytes (UTF-16 without a mark) is refused in one line.

Rows are read a chunk at a time (``read_reviews``), so an input of any size is never held whole:
the caller encodes each chunk and keeps only the ids and errors. Each text keeps only its end, as much
as its last ``max_len`` tokens can need (``tokenizer.text_chars``); a line or file longer than that is
read a piece at a time, so a 2 GB line without a space costs what its end does.
"""

import codecs
import csv
import io
import json
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rnn_lightning.errors import InputError, unreadable_file
from rnn_lightning.text.locations import TEXT_FIELD
from rnn_lightning.text.sources import parquet_batches
from rnn_lightning.text.tokenizer import CHUNK

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
EMPTY = "empty review"
CHUNK_ROWS = CHUNK  # rows handed on at a time: the texts encoded at a time
CHUNK_CHARS = 32 * 2**20  # and at most about this many characters of text: a chunk of long texts stays small
UTF8_BYTES = 4  # the most bytes a character takes in UTF-8: bytes read to keep a number of characters
# Byte-order marks and the encoding each announces; UTF-32's first, as UTF-16's is a prefix of it.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 bytes that continue a character, left over where one was cut


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
                raw = raw[-UTF8_BYTES * max_chars :].lstrip(_CONTINUATION)  # not a character cut in two
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
        return _chunks(_lines(_decoded(sys.stdin.buffer, "standard input"), max_chars), chunk_rows, max_chars)
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(
            f"data.predict_path: {path!r} does not exist; expected a .txt/.csv/.jsonl/.parquet file, a folder of .txt files, or -"
        )
    if p.is_dir():
        files = [f for f in sorted(p.rglob("*.txt")) if not f.is_dir()]
        if not files:
            raise InputError(f"data.predict_path: folder {path!r} holds no .txt files")
        odd = next((f for f in files if not f.is_file()), None)
        if odd is not None:  # a FIFO or a device would wait for a writer or never end
            raise InputError(f"data.predict_path: {str(odd)!r} is not a regular file; expected a folder of .txt files")
        texts = ((str(f.relative_to(p)), _file_tail(f, max_chars)) for f in files)
        return _chunks(texts, chunk_rows, max_chars)
    if p.suffix == ".parquet":
        rows = _unreadable_is_input_error(_parquet(p, chunk_rows, text_field), p)
    elif p.suffix == ".csv":
        rows = _unreadable_is_input_error(_csv(p, text_field), p)
    elif p.suffix == ".jsonl":
        rows = _jsonl(p, text_field)
    else:
        return _chunks(_lines(_decoded(open(p, "rb"), repr(str(p))), max_chars), chunk_rows, max_chars)
    first = next(rows, None)  # reads the header (or first record): a missing column is refused now
    return _chunks(rows if first is None else _prepend(first, rows), chunk_rows, max_chars)


def _decoded(stream, name: str, newline: str | None = None):
    """Binary ``stream`` past its byte-order mark: itself for UTF-8, a text stream for UTF-16/32.
    Text with NUL bytes and no mark (UTF-16 without one, or not text) is refused."""
    if not hasattr(stream, "peek"):
        stream = io.BufferedReader(stream)
    head = stream.peek(4)  # waits for a pipe's first bytes
    for bom, encoding in BOMS:
        if head.startswith(bom):
            if encoding == "utf-8":
                stream.read(len(bom))
                return stream
            return io.TextIOWrapper(stream, encoding=encoding, errors="replace", newline=newline)
    if b"\0" in head:
        stream.close()
        raise InputError(
            f"data.predict_path: {name} holds NUL bytes and no byte-order mark; expected UTF-8 text, "
            "or UTF-16/32 that starts with a byte-order mark"
        )
    return stream


def _file_tail(f: Path, max_chars: int) -> bytes | str:
    """The text of ``f``, its last ``max_chars`` characters (a UTF-8 file: its last bytes that can hold them)."""
    with _decoded(open(f, "rb"), repr(str(f))) as stream:
        if isinstance(stream, io.TextIOBase):
            return _read_tail(stream.read, max_chars)
        begin = stream.tell()  # after a byte-order mark
        start = max(begin, stream.seek(0, io.SEEK_END) - UTF8_BYTES * max_chars)
        stream.seek(start)
        data = stream.read()
        return data.lstrip(_CONTINUATION) if start > begin else data


def _read_tail(read, limit: int):
    """What ``read(limit)`` gives until it gives nothing, keeping its last ``limit`` items: no more
    than twice ``limit`` is held."""
    data = read(limit)
    while more := read(limit):
        data = (data + more)[-limit:]
    return data


def _unreadable_is_input_error(rows: Iterator, p: Path) -> Iterator:
    """``rows``, with what pyarrow or the csv module raise for a damaged file turned into one line naming it."""
    import pyarrow as pa

    try:
        yield from rows
    except (pa.ArrowException, csv.Error, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise unreadable_file("data.predict_path", p, e) from None


def _chunks(rows: Iterable[tuple[str, bytes | str]], size: int, max_chars: int) -> Iterator[ReviewRows]:
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


def _lines(stream, max_chars: int) -> Iterator[tuple[str, bytes | str]]:
    """(line number, line without its end) of ``stream`` (binary UTF-8, or text). A line is read at most
    ``max_chars`` characters (binary: ``UTF8_BYTES`` times as many bytes) at a time and keeps its end
    only, so a line of any length costs twice that."""
    text = isinstance(stream, io.TextIOBase)
    limit, end = (max_chars, "\n") if text else (UTF8_BYTES * max_chars, b"\n")
    with stream:
        number = 0
        while line := stream.readline(limit):
            number += 1
            cut = False
            while not line.endswith(end):  # longer than limit, or the last line without an end
                more = stream.readline(limit)
                if not more:
                    break
                cut = cut or len(line) + len(more) > limit + 1
                line = (line + more)[-limit - 1 :]
            if cut and not text:
                line = line.lstrip(_CONTINUATION)  # a character cut in two at the front
            yield str(number), line.rstrip("\r\n" if text else b"\r\n")


def _text_column(p: Path, columns: Iterable[str] | None, text_field: str) -> str:
    """``text_field``, or ``text`` where the file has no ``text_field`` column."""
    columns = list(columns or [])
    for name in (text_field, TEXT_FIELD):
        if name in columns:
            return name
    raise InputError(
        f"data.predict_path: {str(p)!r} has no {text_field!r} column (data.text_field; columns: {sorted(columns)})"
    )


def _record(number: int, text, row_id) -> tuple[str, bytes | str]:
    raw = "" if text is None else text if isinstance(text, bytes) else str(text)
    return str(number if row_id is None else row_id), raw


def _parquet(p: Path, chunk_rows: int, text_field: str) -> Iterator[tuple[str, bytes | str]]:
    import pyarrow.parquet

    f = pyarrow.parquet.ParquetFile(p)
    names = f.schema_arrow.names
    column = _text_column(p, names, text_field)
    columns = [column] + (["id"] if "id" in names and column != "id" else [])
    number = 0
    for batch in parquet_batches(f, chunk_rows, columns):
        ids = batch.column("id").to_pylist() if "id" in columns else [None] * batch.num_rows
        for text, row_id in zip(batch.column(column).to_pylist(), ids, strict=True):
            number += 1
            yield _record(number, text, row_id)


def _csv(p: Path, text_field: str) -> Iterator[tuple[str, bytes | str]]:
    csv.field_size_limit(sys.maxsize)  # a review may be longer than the csv module's 128 KB default
    f = _decoded(open(p, "rb"), repr(str(p)), newline="")
    if not isinstance(f, io.TextIOBase):
        # surrogateescape keeps bytes that are not UTF-8, so each field is decoded (and flagged) like a line
        f = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
    with f:
        reader = csv.DictReader(f)
        column = _text_column(p, reader.fieldnames, text_field)
        for number, record in enumerate(reader, start=1):
            text = record[column]
            raw = text.encode("utf-8", "surrogateescape") if text is not None else None
            yield _record(number, raw, record.get("id"))


def _jsonl(p: Path, text_field: str) -> Iterator[tuple[str, bytes | str]]:
    with _decoded(open(p, "rb"), repr(str(p))) as f:
        number = 0
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:  # not JSON, or not UTF-8
                why = getattr(e, "msg", None) or type(e).__name__
                raise InputError(f"data.predict_path: line {line_number} of {str(p)!r} is not JSON ({why})") from None
            column = text_field if isinstance(record, dict) and text_field in record else TEXT_FIELD
            if not isinstance(record, dict) or column not in record:
                what = f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
                raise InputError(
                    f"data.predict_path: line {line_number} of {str(p)!r} has no {text_field!r} (data.text_field; {what})"
                )
            number += 1
            yield _record(number, record.get(column), record.get("id"))
