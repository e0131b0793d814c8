"""Reading reviews to classify: a text file, a table, an aclImdb-style folder, or standard input.

Every input row becomes (id, text, error). Rows that cannot be classified are kept, with an error,
so the output has one row per input row, in input order:

- empty or whitespace-only text: error ``empty review`` (no probability);
- bytes that are not UTF-8: decoded with U+FFFD in their place and classified; error ``invalid UTF-8 replaced``;
- very long text (a 1 MB line): classified from its last ``max_len`` tokens, like every review.
"""

import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rnn_lightning.errors import InputError

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass
class ReviewRows:
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
            error = "empty review"
        self.ids.append(row_id)
        self.texts.append(text)
        self.errors.append(error)


def read_reviews(path: str) -> ReviewRows:
    """Rows of ``path``: ``-`` (stdin, one review a line), ``.txt`` (one a line), ``.csv``/``.jsonl``/
    ``.parquet`` with a ``text`` column (and ``id`` if present), or a folder of ``.txt`` files (one review each)."""
    rows = ReviewRows()
    if path == "-":
        _read_lines(sys.stdin.buffer, rows)
        return rows
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(
            f"data.predict_path: {path!r} does not exist; expected a .txt/.csv/.jsonl/.parquet file, a folder of .txt files, or -"
        )
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise InputError(f"data.predict_path: folder {path!r} holds no .txt files")
        for f in files:
            rows.add(str(f.relative_to(p)), f.read_bytes())
        return rows
    if p.suffix in TABLE_SUFFIXES:
        return _read_table(p)
    with open(p, "rb") as f:
        _read_lines(f, rows)
    return rows


def _read_lines(stream: io.BufferedIOBase, rows: ReviewRows) -> None:
    for number, line in enumerate(stream, start=1):
        rows.add(str(number), line.rstrip(b"\r\n"))


def _read_table(p: Path) -> ReviewRows:
    import pyarrow.csv
    import pyarrow.parquet

    if p.suffix == ".parquet":
        table = pyarrow.parquet.read_table(p)
        records = table.to_pylist()
    elif p.suffix == ".csv":
        records = pyarrow.csv.read_csv(p).to_pylist()
    else:
        records = []
        with open(p, "rb") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise InputError(
                            f"data.predict_path: line {number} of {str(p)!r} is not JSON ({e.msg})"
                        ) from None
    if records and "text" not in records[0]:
        raise InputError(f"data.predict_path: {str(p)!r} has no 'text' column (columns: {sorted(records[0])})")
    rows = ReviewRows()
    for number, record in enumerate(records, start=1):
        text = record.get("text")
        rows.add(str(record.get("id", number)), "" if text is None else str(text))
    return rows
