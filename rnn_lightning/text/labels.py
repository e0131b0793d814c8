"""Label columns to class ids 0..K-1 and class names, from the *training* split:

- a ``ClassLabel`` column: its ids and names;
- numbers (integers, or floats that are whole numbers): the classes are the distinct values in numeric
  order, named by them (0..K-1 keep their ids; stars 1-5 become ids 0-4); booleans: false, true;
- strings: the names are the sorted distinct strings.

A label elsewhere (validation, test) that the training split does not have is refused by name.
Columns are Arrow (``pyarrow.ChunkedArray``) with their ``datasets`` feature.
"""

import numpy as np

from rnn_lightning.errors import InputError
from rnn_lightning.limits import check_class_names


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


def _first(mask) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _is_class_label(feature) -> bool:
    import datasets  # loaded already: the feature comes from a datasets.Dataset

    return isinstance(feature, datasets.ClassLabel)
