"""Label columns to class ids 0..K-1 and class names, from the *training* split:

- a ``ClassLabel`` column: its ids and names;
- numbers (integers, or floats that are whole numbers): the classes are the distinct values in numeric
  order, named by them (0..K-1 keep their ids; stars 1-5 become ids 0-4); booleans: false, true;
- strings: the names are the sorted distinct strings.

A label elsewhere (validation, test) that the training split does not have is refused by name.
Columns are Arrow (``pyarrow.ChunkedArray``) with their ``datasets`` feature.

Multi-label (``multi_label_kind`` decides): a column of lists (a ``Sequence``/``List`` of ``ClassLabel``,
lists of names or of ids), or, when multi-label is asked for, text cells of names joined by
``LABEL_SEPARATOR`` (a CSV's) or single labels (one each). An empty list, or an empty cell, is a text
with none of the labels. Its labels become an (N, K) array of 0/1 (``label_sets``).
"""

import numpy as np

from rnn_lightning.errors import InputError
from rnn_lightning.limits import check_class_names
from rnn_lightning.text.table_types import WHOLE  # a class id written as text

LABEL_SEPARATOR = "|"  # between the labels of a multi-label text in a CSV cell, read and written
OTHER_SEPARATORS = (",", ";", "|")  # a cell holding one of these but not the separator is ambiguous


def is_text(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def class_names(column, feature, field: str) -> list[str]:
    """The class names a training label column defines; K >= 2."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if _is_class_label(feature):
        names = [str(n) for n in feature.names]
    elif is_text(column.type):
        names = sorted(v for v in pc.unique(column).to_pylist() if v is not None)
        numbers = [n for n in names if WHOLE.fullmatch(n)]
        if numbers and len(numbers) < len(names):  # a JSON lines file mixing 1 and "pos" reads as text
            named = next(n for n in names if not WHOLE.fullmatch(n))
            raise InputError(
                f"{field}: mixes class ids ({numbers[0]!r}, row {_row_of(column, numbers[0])}) and class names "
                f"({named!r}, row {_row_of(column, named)}); expected one or the other"
            )
        if numbers:  # ids read as text (split from a CSV cell): in numeric order
            names.sort(key=int)
    elif pa.types.is_boolean(column.type):
        names = ["false", "true"]
    else:  # the distinct numbers in numeric order: 0..K-1 keep their ids, stars 1-5 become ids 0-4
        names = [str(v) for v in np.unique(_numeric_ids(column, field))]
    check_class_names(names, field)  # before the names reach the model, its metrics and the CLI's parser
    if len(names) < 2:
        raise InputError(
            f"{field}: the training split holds only the class(es) {names}; a classifier needs two or more"
        )
    return names


def class_ids(column, feature, names: list[str], field: str) -> np.ndarray:
    """A label column as (N,) int64 ids into ``names``; a null, or a class not in ``names``, is refused by value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        raise InputError(f"{field}: row {_first(pc.is_null(column))} has no label")
    if is_text(column.type):
        ids = pc.index_in(column, value_set=pa.array(names, type=column.type))
        if ids.null_count:
            bad = column[_first(pc.is_null(ids))].as_py()
            raise InputError(f"{field}: label {bad!r} is not one of the training split's classes {names}")
        return ids.to_numpy(zero_copy_only=False).astype(np.int64)
    values = _numeric_ids(column, field)
    if _is_class_label(feature) or pa.types.is_boolean(column.type):  # already ids
        bad = values[(values < 0) | (values >= len(names))]
        if bad.size:
            what = "the ClassLabel value -1 (no label)" if bad[0] == -1 else f"class id {int(bad[0])}"
            raise InputError(
                f"{field}: {what} is not one of the training split's classes 0..{len(names) - 1} ({names})"
            )
        return values
    try:
        keys = np.array([int(n) for n in names])
    except ValueError:
        raise InputError(f"{field}: numbers, but the training split's classes are names {names}") from None
    ids = np.searchsorted(keys, values).clip(max=len(keys) - 1)
    bad = values[keys[ids] != values]
    if bad.size:
        raise InputError(f"{field}: label {int(bad[0])} is not one of the training split's classes {names}")
    return ids.astype(np.int64)


def _numeric_ids(column, field: str) -> np.ndarray:
    import pyarrow as pa

    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type)):
        raise InputError(f"{field}: expected class ids, class names or a ClassLabel column, found type {column.type}")
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise InputError(f"{field}: row {row} has no label ({values[row]})")
        fractional = values[values != np.round(values)]
        if fractional.size:
            raise InputError(f"{field}: expected whole-number class ids, found {fractional[0].item()!r}")
    return values.astype(np.int64)


def _row_of(column, value: str) -> int:
    import pyarrow.compute as pc

    return _first(pc.fill_null(pc.equal(column, value), False))


def _first(mask) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _is_class_label(feature) -> bool:
    import datasets  # loaded already: the feature comes from a datasets.Dataset

    return isinstance(feature, datasets.ClassLabel)


# ---------------------------------------------------------------- multi-label


def holds_lists(column) -> bool:
    import pyarrow as pa

    return pa.types.is_list(column.type) or pa.types.is_large_list(column.type)


def multi_label_kind(
    column, multi_label: bool | None, field: str, single: str = "data.multi_label is false (a single-label preset)"
) -> bool:
    """Whether a training label column is multi-label: a column of lists is; ``multi_label`` true makes
    any column so, false refuses lists. A text column whose cells hold JSON lists beside single labels
    (what a JSON lines file mixing both reads as) is refused, naming a row of each."""
    import pyarrow.compute as pc

    lists = holds_lists(column)
    if is_text(column.type):
        listed = pc.starts_with(pc.utf8_trim_whitespace(column), "[")
        if pc.any(listed).as_py():
            row = _first(pc.fill_null(listed, False))
            singles = pc.invert(pc.fill_null(listed, True))
            if not pc.any(singles).as_py():
                raise InputError(
                    f"{field}: row {row} holds a list of labels ({str(column[row].as_py())[:80]}) unlike the "
                    "other rows' lists; expected lists of names or lists of ids"
                )
            other = _first(singles)
            raise InputError(
                f"{field}: row {row} holds a list of labels ({str(column[row].as_py())[:80]}) but row {other} a "
                f"single one ({str(column[other].as_py())[:80]!r}); a label column holds lists in every row "
                "(multi-label) or in none"
            )
    if lists and multi_label is False:
        raise InputError(
            f"{field}: holds lists of labels (multi-label), but {single}; use a multi-label config "
            "(e.g. configs/goemotions.yaml) or --data.multi_label true"
        )
    return lists or bool(multi_label)


def as_lists(column, feature, field: str, separator: str = LABEL_SEPARATOR):
    """(a list column, the feature of its items) from a multi-label training column: lists as they are,
    text cells split at ``separator`` (a null or empty cell: no label), anything else one label a row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if holds_lists(column):
        return column, getattr(feature, "feature", None)
    if is_text(column.type):
        cells = pc.fill_null(column, "")
        _check_separated(cells, field, separator)
        empty = pc.equal(pc.utf8_length(cells), 0)
        parts = pc.split_pattern(cells, separator)
        return pc.if_else(empty, pa.scalar([], pa.list_(pa.string())), parts), None
    if column.null_count:
        raise InputError(f"{field}: row {_first(pc.is_null(column))} has no label")
    column = column.combine_chunks()
    offsets = pa.array(np.arange(len(column) + 1, dtype=np.int32))
    return pa.chunked_array([pa.ListArray.from_arrays(offsets, column)]), feature


def label_sets(column, item_feature, names: list[str], field: str) -> np.ndarray:
    """A list column (``as_lists``) as (N, K) uint8: 1 where the row holds the class. A null list holds
    none; a label not in ``names`` is refused naming its row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pa.chunked_array([c for c in column.chunks], type=column.type).combine_chunks()
    values, rows = pc.list_flatten(column), pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    out = np.zeros((len(column), len(names)), dtype=np.uint8)
    if len(values) == 0:
        return out
    if values.null_count:
        raise InputError(f"{field}: row {int(rows[_first(pc.is_null(values))])} holds a null label in its list")
    try:
        ids = class_ids(pa.chunked_array([values]), item_feature, names, field)
    except InputError:  # the same check label by label, to name the row
        for i in range(len(values)):
            try:
                class_ids(pa.chunked_array([values.slice(i, 1)]), item_feature, names, field)
            except InputError as e:
                raise InputError(f"{field}: row {int(rows[i])}: {str(e)[len(field) + 2 :]}") from None
        raise
    out[rows, ids] = 1
    return out


def label_counts(labels: np.ndarray, k: int) -> list[int]:
    """Texts per class: of class ids (N,), or of (N, K) label sets (texts carrying each label)."""
    counts = labels.sum(0) if labels.ndim == 2 else np.bincount(labels, minlength=k)
    return [int(c) for c in counts]


def strata(labels: np.ndarray) -> np.ndarray:
    """(N,) groups to draw a validation split from evenly: class ids as they are; label sets: each
    text's first label, K for a text with none."""
    if labels.ndim == 1:
        return labels
    return np.where(labels.any(1), labels.argmax(1), labels.shape[1])


def _check_separated(cells, field: str, separator: str) -> None:
    """Each cell's labels, split at ``separator``, must be whole names: no empty part, no space around
    one, and no other separator in a cell (``joy,love`` with ``|``) that would make one class of two."""
    import pyarrow.compute as pc

    for other in OTHER_SEPARATORS:
        holds = pc.match_substring(cells, other)
        if other != separator and pc.any(holds).as_py():
            row = _first(holds)
            raise InputError(
                f"{field}: row {row}'s cell {str(cells[row].as_py())[:80]!r} holds {other!r}, but labels are "
                f"separated by {separator!r}"
            )
    parts = pc.split_pattern(cells, separator)
    flat = pc.list_flatten(parts)
    bad = pc.or_(pc.equal(pc.utf8_length(flat), 0), pc.not_equal(flat, pc.utf8_trim_whitespace(flat)))
    blank = pc.equal(pc.utf8_length(cells), 0).to_numpy(zero_copy_only=False)
    if pc.any(bad).as_py():
        rows = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(bad.to_numpy(zero_copy_only=False)):
            row = int(rows[i])
            if not blank[row]:  # an empty cell is a text without labels
                raise InputError(
                    f"{field}: row {row}'s cell {str(cells[row].as_py())[:80]!r} has an empty label or space "
                    f"around one (labels are separated by {separator!r})"
                )
