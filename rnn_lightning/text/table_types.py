"""CSV and JSON lines as Arrow record batches for training data: each column's type is decided over the
whole file first (one pass), then the rows are handed on a batch at a time (a second pass), so memory
holds one batch whatever the file's size.

A CSV cell is text; a column whose every value reads as a whole number is ``int64``, as a number
``double``, as ``True``/``False`` ``bool``, and otherwise ``string``, as pandas reads it; an empty cell
is null. A JSON value keeps its own type; whole numbers mixed with fractions are ``double``; lists of
strings (or of whole numbers) are lists of ``string`` (``int64``), an empty list fitting either; a
column of other mixtures (or of objects) is ``string``, each value as its JSON text.
"""

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from rnn_lightning.text.formats import json_lines, open_csv

TRAINING_FIELD = "data.dataset"
WHOLE = re.compile(r"[+-]?\d+")
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
BOOLEANS = {"True": True, "False": False, "TRUE": True, "FALSE": False, "true": True, "false": False}
INT64_MAX = 2**63 - 1


def record_batches(path: Path, delimiter: str | None, batch_rows: int) -> tuple[object, Iterator]:
    """(``pyarrow.Schema``, its record batches) of a CSV (``delimiter`` given) or JSON-lines file; a file
    without rows (a header only) is a ``ValueError``."""
    import pyarrow as pa

    if delimiter is None:
        kinds, value, rows = _json_kinds(_json_rows(path)), _json_value, lambda: _json_rows(path)
    else:
        kinds, value, rows = _csv_kinds(path, delimiter), _csv_value, lambda: _csv_rows(path, delimiter)
    if kinds is None:
        raise ValueError("no rows")
    convert = {name: value(kind) for name, kind in kinds.items()}
    types = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string(), "none": pa.string(),
             "list": pa.list_(pa.string()), "list_str": pa.list_(pa.string()), "list_int": pa.list_(pa.int64())}  # fmt: skip
    schema = pa.schema([(name, types[kind]) for name, kind in kinds.items()])

    def batches() -> Iterator:
        batch: list[dict] = []
        for row in rows():
            batch.append({name: convert[name](row.get(name)) for name in kinds})
            if len(batch) == batch_rows:
                yield pa.RecordBatch.from_pylist(batch, schema)
                batch = []
        if batch:
            yield pa.RecordBatch.from_pylist(batch, schema)

    return schema, batches()


# ---------------------------------------------------------------- CSV


def _csv_rows(path: Path, delimiter: str) -> Iterator[dict]:
    with open_csv(path, delimiter, errors="replace", field=TRAINING_FIELD) as reader:
        yield from reader


def _csv_kinds(path: Path, delimiter: str) -> dict[str, str] | None:
    """{column: int | float | bool | str | none (no value at all)}, or None for a file without rows."""
    with open_csv(path, delimiter, errors="replace", field=TRAINING_FIELD) as reader:
        kinds = dict.fromkeys(reader.fieldnames or [], "none")
        seen = False
        for row in reader:
            seen = True
            for name, value in row.items():
                if name is None or not value or kinds[name] == "str":  # None: cells past the header's
                    continue
                kinds[name] = _widen(kinds[name], _csv_kind(value))
    return kinds if seen else None


def _csv_kind(value: str) -> str:
    if WHOLE.fullmatch(value) and abs(int(value)) <= INT64_MAX:
        return "int"
    if NUMBER.fullmatch(value):
        return "float"
    return "bool" if value in BOOLEANS else "str"


def _widen(kind: str, new: str) -> str:
    if kind in ("none", new) or new == "none":
        return kind if new == "none" else new
    if {kind, new} == {"int", "float"}:
        return "float"
    if kind.startswith("list") and new.startswith("list") and "list" in (kind, new):  # [] beside typed lists
        return kind if new == "list" else new
    return "str"


def _csv_value(kind: str) -> Callable:
    parse = {"int": int, "float": float, "bool": BOOLEANS.__getitem__}.get(kind, str)
    return lambda value: parse(value) if value else None


# ---------------------------------------------------------------- JSON lines


def _json_rows(path: Path) -> Iterator[dict]:
    for line_number, record in json_lines(path, field=TRAINING_FIELD):
        if not isinstance(record, dict):
            raise ValueError(f"line {line_number} is a JSON {type(record).__name__}, expected an object")
        yield record


def _json_kinds(rows: Iterator[dict]) -> dict[str, str] | None:
    kinds: dict[str, str] = {}
    for row in rows:
        for name, value in row.items():
            kinds[name] = _widen(kinds.get(name, "none"), _json_kind(value))
    return kinds or None


def _json_kind(value) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):  # pandas writes a missing value as NaN
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if abs(value) <= INT64_MAX else "str"
    if isinstance(value, list):
        kinds = {_json_kind(v) for v in value}
        if not kinds:
            return "list"
        return {frozenset({"str"}): "list_str", frozenset({"int"}): "list_int"}.get(frozenset(kinds), "str")
    return {float: "float", str: "str"}.get(type(value), "str")


def _json_value(kind: str) -> Callable:
    import json

    def value(v):
        if _json_kind(v) == "none":
            return None
        if kind == "str":
            return v if isinstance(v, str) else json.dumps(v)
        if kind.startswith("list"):
            return v
        return float(v) if kind == "float" else v

    return value
