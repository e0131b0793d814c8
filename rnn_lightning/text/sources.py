"""Labelled text (from any source ``locations`` accepts) as splits of texts and labels, checked.

Every source is opened as ``datasets.Dataset`` splits (``opening``: Arrow, memory-mapped from disk for
files and hub data), so millions of rows are read in chunks and never held as Python objects all at once.
A split is then a ``Split``: its text column (``Texts``, read in chunks) and its labels: class ids, or
for multi-label data the 0/1 label sets (``labels``).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnn_lightning.errors import InputError
from rnn_lightning.text.labels import (
    LABEL_SEPARATOR,
    as_lists,
    class_ids,
    class_names,
    is_text,
    label_counts,
    label_sets,
    multi_label_kind,
)
from rnn_lightning.text.locations import (
    ACLIMDB_UNLABELLED,
    EXPECTED_SOURCE,
    LABEL_FIELD,
    SPLIT_NAMES,
    TEXT_FIELD,
    UNLABELLED_SPLIT,
    Dataset,
)
from rnn_lightning.text.opening import open_splits
from rnn_lightning.text.tokenizer import CHUNK


class Texts:
    """A column of texts (an Arrow column, memory-mapped for files and hub data), read in chunks.

    A missing text (null) reads as the empty string.
    """

    def __init__(self, column) -> None:
        self.column = column  # pyarrow.ChunkedArray of strings
        self._offsets: np.ndarray | None = None  # first row of each Arrow chunk

    def __len__(self) -> int:
        return len(self.column)

    def chunks(self, rows: np.ndarray | None = None, size: int = CHUNK) -> Iterator[list[str]]:
        """Lists of at most ``size`` texts: all in order, or those at ``rows``."""
        n = len(self) if rows is None else len(rows)
        for start in range(0, n, size):
            if rows is None:
                part = self.column.slice(start, size).to_pylist()
            else:
                part = self._take(np.asarray(rows[start : start + size]))
            yield ["" if t is None else t for t in part]

    def _take(self, rows: np.ndarray) -> list:
        """The texts at ``rows``, taken chunk by chunk: ``ChunkedArray.take`` joins the chunks first, which
        fails past 2 GB of ``string`` data (its 32-bit offsets overflow) and copies them all."""
        if self._offsets is None:
            self._offsets = np.cumsum([0] + [len(c) for c in self.column.chunks])
        which = np.searchsorted(self._offsets, rows, side="right") - 1
        out: list = [None] * len(rows)
        for chunk in np.unique(which):
            at = np.flatnonzero(which == chunk)
            values = self.column.chunk(int(chunk)).take(rows[at] - self._offsets[chunk]).to_pylist()
            for i, value in zip(at, values, strict=True):
                out[i] = value
        return out

    def count_empty(self) -> int:
        """Texts that are missing, empty or whitespace only (in Arrow, without making Python strings)."""
        import pyarrow.compute as pc

        if self.column.type == "null":
            return len(self.column)
        blank = 0
        for start in range(0, len(self.column), CHUNK):  # trimming copies the texts: a chunk at a time
            part = self.column.slice(start, CHUNK)
            blank += int(pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(part)), 0)).as_py() or 0)
        return blank + self.column.null_count

    def to_list(self) -> list[str]:
        return [t for chunk in self.chunks() for t in chunk]


@dataclass
class Split:
    texts: Texts
    labels: np.ndarray | None  # (N,) int64 class ids, or (N, K) uint8 label sets; None for unlabelled text


@dataclass
class Labelled:
    """A source read and checked: its splits by role (``train`` and those of ``validation``, ``test``,
    ``unlabelled`` it has), the class names from the training labels and whether they are multi-label."""

    splits: dict[str, Split]
    class_names: list[str]
    multi_label: bool = False


def load_labelled(
    dataset: Dataset,
    names: dict[str, str] | None = None,
    text_field: str = TEXT_FIELD,
    label_field: str = LABEL_FIELD,
    config_name: str | None = None,
    unlabelled: bool = False,
    cache_dir: Path | None = None,
    multi_label: bool | None = None,
) -> Labelled:
    """Read ``dataset``'s splits (``names``: {role: split name}; train/validation/test by default);
    ``multi_label``: see ``labels.multi_label_kind`` (None: the training labels decide)."""
    names = splits_wanted(names, unlabelled)
    loaded = open_splits(dataset, names, config_name, cache_dir)
    if "train" not in loaded:
        raise InputError(f"data.train_name: {dataset!r} has no split {names['train']!r}; expected {EXPECTED_SOURCE}")
    if unlabelled and "unlabelled" not in loaded:
        raise InputError(
            f"data.unlabelled: {dataset!r} has no {UNLABELLED_SPLIT!r} split; a folder needs "
            f"{UNLABELLED_SPLIT}.parquet (or .csv, .jsonl) with a {text_field!r} column, "
            f"aclImdb needs train/{ACLIMDB_UNLABELLED}"
        )
    for role, ds in loaded.items():
        if len(ds) == 0:
            raise InputError(f"data.dataset: split {names[role]!r} of {dataset!r} has no rows")
    import pyarrow.compute as pc

    where = lambda name: f"data.label_field: split {name!r} column {label_field!r}"  # noqa: E731
    column, feature = label_column(loaded["train"], label_field, names["train"])
    multi = multi_label_kind(column, multi_label, where(names["train"]))
    if multi:
        column, feature = as_lists(column, feature, where(names["train"]))
        classes = class_names(pc.list_flatten(column), feature, where(names["train"]))
        joined = [n for n in classes if LABEL_SEPARATOR in n]
        if joined:  # a prediction file's CSV cell joins a text's labels with it
            raise InputError(
                f"{where(names['train'])}: label {joined[0]!r} holds {LABEL_SEPARATOR!r}, which joins labels"
            )
    else:
        classes = class_names(column, feature, where(names["train"]))
    splits = {}
    for role, ds in loaded.items():
        name = names[role]
        labels = None
        if role != "unlabelled":
            column, feature = label_column(ds, label_field, name)
            if multi:
                multi_label_kind(column, True, where(name))  # a text column mixing lists and labels is refused
                labels = label_sets(*as_lists(column, feature, where(name)), classes, where(name))
            else:
                multi_label_kind(column, False, where(name), "the training split's labels are single")
                labels = class_ids(column, feature, classes, where(name))
        splits[role] = Split(text_split(ds, text_field, name), labels)
    counts = np.array(label_counts(splits["train"].labels, len(classes)))
    if (counts == 0).any():
        empty = [classes[i] for i in np.flatnonzero(counts == 0)]
        raise InputError(
            f"data.label_field: class(es) {empty} of {classes} have no text in split {names['train']!r}; "
            "a classifier needs examples of every class"
        )
    return Labelled(splits, classes, multi)


def splits_wanted(names: dict[str, str] | None, unlabelled: bool) -> dict[str, str]:
    """{role: split name} of the splits read: ``names`` (train/validation/test by default), and the
    unlabelled split when asked."""
    return {**(names or SPLIT_NAMES), **({"unlabelled": UNLABELLED_SPLIT} if unlabelled else {})}


def text_split(ds, text_field: str, name: str) -> Texts:
    """The text column of a loaded split, checked."""
    import pyarrow as pa

    if text_field not in ds.column_names:
        raise InputError(
            f"data.text_field: split {name!r} has no column {text_field!r}; its columns are {ds.column_names}"
        )
    column = _column(ds, text_field)
    if not (is_text(column.type) or pa.types.is_null(column.type)):
        raise InputError(f"data.text_field: column {text_field!r} of split {name!r} holds {column.type}, expected text")
    return Texts(column)


def label_column(ds, label_field: str, name: str):
    """(Arrow column, datasets feature) of a split's labels, checked to exist."""
    if label_field not in ds.column_names:
        raise InputError(
            f"data.label_field: split {name!r} has no column {label_field!r}; its columns are {ds.column_names}"
        )
    return _column(ds, label_field), ds.features[label_field]


def _column(ds, field: str):
    """A column of a ``datasets.Dataset`` as a ``pyarrow.ChunkedArray``: memory-mapped, not copied, for a
    dataset read from disk (a selected or shuffled view would be gathered; the splits here are whole)."""
    return ds.with_format("arrow")[field]
