"""The table formats, one reader each, that read a bounded piece at a time: Parquet a row group at a time
(``parquet_batches``), CSV and TSV a row at a time (``open_csv``), JSON lines a line at a time
(``json_lines``), plain text a line at a time (``line_records``). Training data reads its files through
them (``opening``; ``table_types`` types the columns of CSV and JSON lines), and so do the texts to
classify (``readers``, through the ``*_records`` here, which check the text column before the first row).

Text is UTF-8 (a byte-order mark is skipped) or UTF-16/32 with a byte-order mark; other text with NUL
bytes (UTF-16 without a mark) is refused in one line. A text to classify keeps only its last
``max_chars`` characters, and a line longer than that is read a piece at a time, so a 2 GB line without a
space costs what its end does.
"""

import codecs
import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rnn_lightning.errors import InputError
from rnn_lightning.text.locations import TEXT_FIELD

PREDICT_FIELD = "data.predict_path"  # the setting the texts to classify come from, named in every error
UTF8_BYTES = 4  # the most bytes a character takes in UTF-8: bytes read to keep a number of characters
# Byte-order marks and the encoding each announces; UTF-32's first, as UTF-16's is a prefix of it.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 bytes that continue a character, left over where one was cut

Record = tuple[str, bytes | str]  # (row id, text: UTF-8 bytes or decoded)


# ---------------------------------------------------------------- Parquet


def parquet_batches(f, batch_size: int, columns: list[str] | None = None) -> Iterator:
    """The record batches of an open ``pyarrow.parquet.ParquetFile``, read one row group at a time:
    one reader over the whole file keeps every row group it has decoded until it is done."""
    for group in range(f.num_row_groups):
        yield from f.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns)


def parquet_records(p: Path, chunk_rows: int, text_field: str) -> Iterator[Record]:
    """(id, text) of each row of a Parquet file: its ``id`` column, else its row number from 1."""
    import pyarrow.parquet

    f = pyarrow.parquet.ParquetFile(p)
    names = f.schema_arrow.names
    column = text_column(p, names, text_field)
    columns = [column] + (["id"] if "id" in names and column != "id" else [])
    number = 0
    for batch in parquet_batches(f, chunk_rows, columns):
        ids = batch.column("id").to_pylist() if "id" in columns else [None] * batch.num_rows
        for text, row_id in zip(batch.column(column).to_pylist(), ids, strict=True):
            number += 1
            yield _record(number, text, row_id)


# ---------------------------------------------------------------- CSV and JSON lines


@contextmanager
def open_csv(p: Path, delimiter: str = ",", errors: str = "surrogateescape", field: str = PREDICT_FIELD):
    """A ``csv.DictReader`` over a CSV file with a header (``delimiter``: a tab for TSV). UTF-8 bytes that
    do not decode are handled by ``errors``: ``surrogateescape`` keeps them (a value's ``.encode("utf-8",
    "surrogateescape")`` gives them back), ``replace`` puts U+FFFD in their place."""
    csv.field_size_limit(sys.maxsize)  # a review may be longer than the csv module's 128 KB default
    f = decoded(open(p, "rb"), repr(str(p)), newline="", field=field)
    if not isinstance(f, io.TextIOBase):
        f = io.TextIOWrapper(f, encoding="utf-8", errors=errors, newline="")
    with f:
        yield csv.DictReader(f, delimiter=delimiter)


def csv_records(p: Path, text_field: str) -> Iterator[Record]:
    """(id, text) of each row of a CSV file with a header; text that is not UTF-8 is kept as bytes."""
    with open_csv(p) as reader:
        column = text_column(p, reader.fieldnames, text_field)
        for number, record in enumerate(reader, start=1):
            text = record[column]
            raw = text.encode("utf-8", "surrogateescape") if text is not None else None
            yield _record(number, raw, record.get("id"))


def json_lines(p: Path, field: str = PREDICT_FIELD) -> Iterator[tuple[int, object]]:
    """(line number, value) of each line of a JSON-lines file that is not blank."""
    with decoded(open(p, "rb"), repr(str(p)), field=field) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except ValueError as e:  # not JSON, or not UTF-8
                why = getattr(e, "msg", None) or type(e).__name__
                raise InputError(f"{field}: line {line_number} of {str(p)!r} is not JSON ({why})") from None


def jsonl_records(p: Path, text_field: str) -> Iterator[Record]:
    """(id, text) of each JSON object of a JSON-lines file (blank lines skipped)."""
    number = 0
    for line_number, record in json_lines(p):
        column = text_field if isinstance(record, dict) and text_field in record else TEXT_FIELD
        if not isinstance(record, dict) or column not in record:
            what = f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
            raise InputError(
                f"{PREDICT_FIELD}: line {line_number} of {str(p)!r} has no {text_field!r} (data.text_field; {what})"
            )
        number += 1
        yield _record(number, record.get(column), record.get("id"))


def text_column(p: Path, columns: Iterable[str] | None, text_field: str) -> str:
    """``text_field``, or ``text`` where the file has no ``text_field`` column."""
    columns = list(columns or [])
    for name in (text_field, TEXT_FIELD):
        if name in columns:
            return name
    raise InputError(
        f"{PREDICT_FIELD}: {str(p)!r} has no {text_field!r} column (data.text_field; columns: {sorted(columns)})"
    )


def _record(number: int, text, row_id) -> Record:
    raw = "" if text is None else text if isinstance(text, bytes) else str(text)
    return str(number if row_id is None else row_id), raw


# ---------------------------------------------------------------- plain text


def line_records(stream, max_chars: int) -> Iterator[Record]:
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
                line = line.lstrip(CONTINUATION)  # a character cut in two at the front
            yield str(number), line.rstrip("\r\n" if text else b"\r\n")


def file_tail(f: Path, max_chars: int) -> bytes | str:
    """The text of ``f``, its last ``max_chars`` characters (a UTF-8 file: its last bytes that can hold them)."""
    with decoded(open(f, "rb"), repr(str(f))) as stream:
        if isinstance(stream, io.TextIOBase):
            return _read_tail(stream.read, max_chars)
        begin = stream.tell()  # after a byte-order mark
        start = max(begin, stream.seek(0, io.SEEK_END) - UTF8_BYTES * max_chars)
        stream.seek(start)
        data = stream.read()
        return data.lstrip(CONTINUATION) if start > begin else data


def _read_tail(read, limit: int):
    """What ``read(limit)`` gives until it gives nothing, keeping its last ``limit`` items: no more
    than twice ``limit`` is held."""
    data = read(limit)
    while more := read(limit):
        data = (data + more)[-limit:]
    return data


def wide_encoding(p: Path) -> str | None:
    """``UTF-16`` or ``UTF-32`` where the file ``p`` starts with that encoding's byte-order mark, ``UTF-16``
    where its start holds NUL bytes and no mark (as text saved "as Unicode" does); else None."""
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    for bom, encoding in BOMS:
        if head.startswith(bom):
            return None if encoding == "utf-8" else encoding.upper()
    return "UTF-16" if b"\0" in head else None


def decoded(stream, name: str, newline: str | None = None, field: str = PREDICT_FIELD):
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
            f"{field}: {name} holds NUL bytes and no byte-order mark; expected UTF-8 text, "
            "or UTF-16/32 that starts with a byte-order mark"
        )
    return stream
