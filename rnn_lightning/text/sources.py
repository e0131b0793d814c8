"""Reading labelled text from the Hugging Face hub, a folder, files per split, or an unpacked ``aclImdb/``.

Every source becomes ``datasets.Dataset`` splits (Arrow, memory-mapped from disk for files and hub
data), so millions of rows are read in chunks and never held as Python objects all at once. A split
is then a ``Split``: its text column (``Texts``, read in chunks) and its labels as class ids.

Labels become ids 0..K-1 with class names, from the *training* split:
- a ``ClassLabel`` column: its ids and names;
- numbers (integers, or floats that are whole numbers): the classes are the distinct values in numeric
  order, named by them (0..K-1 keep their ids; stars 1-5 become ids 0-4); booleans: false, true;
- strings: the names are the sorted distinct strings.
A label elsewhere (validation, test) that the training split does not have is refused by name.
"""

import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from rnn_lightning.text.tokenizer import CHUNK
from rnn_lightning.errors import InputError, unreadable_file
from rnn_lightning.files import atomic_file, content_digests

ACLIMDB_CLASSES = ("neg", "pos")  # aclImdb's label folders, in class-id order
ARROW_DIR = "arrow"  # under the token cache folder: the Arrow copies datasets makes of local files
UNLABELLED_SPLIT = "unsupervised"  # the hub's name for IMDB's 50,000 unlabelled reviews
# What datasets reads each file type with (builder, options); the one list of accepted file types.
FILE_TYPES = {
    ".parquet": ("parquet", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".arrow": ("arrow", {}),
}
EXPECTED_SOURCE = (
    "a hub id (stanfordnlp/imdb), a folder with a file per split (train.parquet, test.csv, ...), "
    "files per split ({train: FILE, test: FILE}), or an unpacked aclImdb/ folder"
)

Dataset = str | dict[str, str]  # a hub id or folder, or {split name: file}


def is_local(dataset: str) -> bool:
    """A path (existing, or written like one) rather than a hub id such as ``stanfordnlp/imdb``."""
    return (
        os.path.exists(dataset) or dataset.startswith((".", "/", "~")) or Path(dataset).suffix in FILE_TYPES
    )


def check_dataset(dataset: Dataset) -> None:
    """Refuse, before any work starts, a local source that does not exist or is a single file."""
    paths = dataset.values() if isinstance(dataset, dict) else [dataset] if is_local(dataset) else []
    for p in paths:
        p = os.path.expanduser(str(p))
        if not os.path.exists(p):
            raise InputError(f"data.dataset: {p!r} does not exist; expected {EXPECTED_SOURCE}")
        if isinstance(dataset, dict) and (Path(p).suffix not in FILE_TYPES or not os.path.isfile(p)):
            raise InputError(f"data.dataset: {p!r}: expected a file ending in {', '.join(FILE_TYPES)}")
    if isinstance(dataset, str) and is_local(dataset) and os.path.isfile(os.path.expanduser(dataset)):
        raise InputError(
            f"data.dataset: {dataset!r} is a single file; name a file per split instead, "
            f"e.g. --data.dataset '{{train: {dataset}, test: TEST_FILE}}'"
        )


def is_aclimdb(path: Path) -> bool:
    return (path / "train" / "pos").is_dir() and (path / "train" / "neg").is_dir()


def fingerprint(dataset: Dataset, exclude: Path | None = None, memo_dir: Path | None = None) -> str:
    """Identity of the source for the token cache: a hub id as is; local files by their names and a hash
    of their bytes (``files.content_digests``, memoised in ``memo_dir``), so data edited in place, even
    with its size and modification time put back, is a new identity. Files under ``exclude`` (the
    token cache, when it lives inside the data folder) are not part of it.
    """
    if isinstance(dataset, dict):
        files = {k: Path(v).expanduser().resolve() for k, v in sorted(dataset.items())}
        facts = list(zip(files, map(str, files.values()), content_digests(files.values(), memo_dir), strict=True))
        return "files:" + hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]
    if not is_local(dataset):
        return dataset
    path = Path(dataset).expanduser().resolve()
    if is_aclimdb(path):
        entries = sorted(p for s in ("train", "test") for p in (path / s).rglob("*.txt"))
    else:
        entries = sorted(p for p in path.rglob("*") if p.suffix in FILE_TYPES and not _hidden_or_under(p, path, exclude))
    facts = list(zip((str(p.relative_to(path)) for p in entries), content_digests(entries, memo_dir), strict=True))
    return str(path) + ":" + hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def _hidden_or_under(p: Path, root: Path, exclude: Path | None) -> bool:
    if exclude is not None and p.is_relative_to(exclude.resolve()):
        return True
    return any(part.startswith(".") for part in p.relative_to(root).parts)


# ---------------------------------------------------------------- one split: texts and class ids


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
    labels: np.ndarray | None  # (N,) int64 class ids; None for unlabelled text


def class_names(column, feature, field: str) -> list[str]:
    """The class names a training label column defines (see the module's docstring); K >= 2."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if _is_class_label(feature):
        names = [str(n) for n in feature.names]
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        names = sorted(v for v in pc.unique(column).to_pylist() if v is not None)
    elif pa.types.is_boolean(column.type):
        names = ["false", "true"]
    else:  # the distinct numbers in numeric order: 0..K-1 keep their ids, stars 1-5 become ids 0-4
        names = [str(v) for v in np.unique(_numeric_ids(column, field))]
    if len(names) < 2:
        raise InputError(f"{field}: the training split holds only the class(es) {names}; a classifier needs two or more")
    return names


def class_ids(column, feature, names: list[str], field: str) -> np.ndarray:
    """A label column as (N,) int64 ids into ``names``; a null, or a class not in ``names``, is refused by value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        raise InputError(f"{field}: row {_first(pc.is_null(column))} has no label")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
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
            raise InputError(f"{field}: {what} is not one of the training split's classes 0..{len(names) - 1} ({names})")
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
    return type(feature).__name__ == "ClassLabel"


# ---------------------------------------------------------------- sources -> datasets.Dataset splits


def open_splits(
    dataset: Dataset, wanted: dict[str, str], config_name: str | None = None, cache_dir: Path | None = None
) -> dict:
    """The splits among ``wanted`` ({role: split name}) that the source has, as ``datasets.Dataset`` by role.

    A folder with one file per wanted split (``train.parquet``, ``test.csv``, ...) or files given per
    split are read file by file (only the splits asked for: IMDB's 50,000 unlabelled reviews are read
    only when wanted); any other folder or a hub id goes through ``datasets.load_dataset``.

    ``cache_dir``: its ``arrow/`` folder holds the Arrow copies of local files, one folder per content
    digest (the digests are memoised in ``cache_dir``). ``datasets``
    keys its own copies by path and modification time, and would hand back the old rows of a file
    rewritten with its time put back; keyed by content, it cannot.
    """
    check_dataset(dataset)
    by_name = {name: role for role, name in wanted.items()}
    if isinstance(dataset, dict):
        unknown = sorted(set(dataset) - set(by_name))
        if unknown:
            raise InputError(
                f"data.dataset: split(s) {unknown} are not among the splits used ({sorted(by_name)}); "
                "rename them or set data.train_name / data.validation_name / data.test_name"
            )
        return {by_name[name]: _read_file(Path(os.path.expanduser(f)), cache_dir) for name, f in dataset.items()}
    if not is_local(dataset):
        return _pick(_load_hub(dataset, config_name), by_name)
    path = Path(dataset).expanduser()
    if is_aclimdb(path):
        return {role: _aclimdb_split(path, name) for role, name in wanted.items() if _aclimdb_has(path, name)}
    files = {name: _split_file(path, name) for name in by_name}
    if files[wanted["train"]] is not None:
        return {by_name[name]: _read_file(f, cache_dir) for name, f in files.items() if f is not None}
    try:
        options = {}
        if cache_dir is not None:
            digest = fingerprint(str(path), exclude=cache_dir, memo_dir=cache_dir).split(":")[-1]
            options["cache_dir"] = str(cache_dir / ARROW_DIR / digest)
        loaded = _load(path=str(path), **options)
    except Exception as e:
        raise InputError(f"data.dataset: could not read {dataset!r} as a dataset folder ({e})".replace("\n", " ")) from None
    return _pick(loaded, by_name)


def _split_file(folder: Path, name: str) -> Path | None:
    found = [folder / f"{name}{suffix}" for suffix in FILE_TYPES if (folder / f"{name}{suffix}").is_file()]
    if len(found) > 1:
        raise InputError(f"data.dataset: {str(folder)!r} holds several files for split {name!r}: {[f.name for f in found]}")
    return found[0] if found else None


def _read_file(path: Path, cache_dir: Path | None = None):
    builder, options = FILE_TYPES[path.suffix]
    if cache_dir is not None:
        options = {**options, "cache_dir": str(cache_dir / ARROW_DIR / content_digests([path], cache_dir)[0])}
    try:
        if path.suffix == ".parquet" and cache_dir is not None:
            return _parquet_to_arrow(path, Path(options["cache_dir"]) / PARQUET_COPY)
        return _load(builder, data_files={"split": str(path)}, split="split", **options)
    except Exception as e:  # datasets and pyarrow answer an unreadable file with many exception types
        raise unreadable_file("data.dataset", path, e) from None


PARQUET_COPY = "parquet.arrow"


def _parquet_to_arrow(path: Path, target: Path):
    """A parquet file as a memory-mapped ``datasets.Dataset``, through an Arrow copy at ``target``
    written one row group at a time. ``datasets``' own conversion holds every row group read so far
    until the end: ~1 GB more per million reviews."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not target.is_file():
        f = pq.ParquetFile(path)
        with atomic_file(target, "wb") as out, pa.ipc.new_stream(out, f.schema_arrow) as writer:
            for batch in parquet_batches(f, CHUNK):
                writer.write_batch(batch)
    return datasets.Dataset.from_file(str(target))  # the schema's metadata carries the features (ClassLabel)


def parquet_batches(f, batch_size: int, columns: list[str] | None = None) -> Iterator:
    """The record batches of an open ``pyarrow.parquet.ParquetFile``, read one row group at a time:
    one reader over the whole file keeps every row group it has decoded until it is done."""
    for group in range(f.num_row_groups):
        yield from f.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns)


def _load(*args, **kwargs):
    import datasets

    with _quiet_datasets():
        return datasets.load_dataset(*args, **kwargs)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No per-split progress bars from ``datasets`` for files it converts to Arrow (Lightning's are enough),
    and none of its error logs: a file it cannot read becomes our one line naming the file."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not was_disabled:
            datasets.enable_progress_bars()


def _pick(loaded, by_name: dict[str, str]) -> dict:
    return {role: loaded[name] for name, role in by_name.items() if name in loaded}


def _load_hub(dataset: str, config_name: str | None):
    try:
        with _offline_if_unreachable():
            return _load(dataset, config_name)
    except Exception as e:  # the hub answers offline-ness with several exception types
        raise InputError(
            f"data.dataset: could not load {dataset!r} from the Hugging Face hub ({type(e).__name__}); "
            "without internet, point --data.dataset at a local copy: a folder of train/test parquet files "
            "(the stanfordnlp/imdb layout) or an unpacked aclImdb/ folder"
        ) from None


def _aclimdb_has(path: Path, name: str) -> bool:
    return (path / name).is_dir() or name == UNLABELLED_SPLIT and (path / "train" / "unsup").is_dir()


def _aclimdb_split(path: Path, name: str):
    """aclImdb's ``<split>/pos``, ``<split>/neg`` (``train/unsup`` for the unlabelled reviews) as a Dataset."""
    import datasets

    def read(folder: Path) -> list[str]:
        return [f.read_text(encoding="utf-8", errors="replace") for f in sorted(folder.glob("*.txt"))]

    if name == UNLABELLED_SPLIT:
        return datasets.Dataset.from_dict({"text": read(path / "train" / "unsup")})
    texts, labels = [], []
    for label, class_name in enumerate(ACLIMDB_CLASSES):
        folder = path / name / class_name
        if not folder.is_dir():
            raise InputError(f"data.dataset: {str(folder)!r} is missing; an aclImdb folder needs {name}/pos and {name}/neg")
        part = read(folder)
        texts += part
        labels += [label] * len(part)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(ACLIMDB_CLASSES))})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def text_split(ds, text_field: str, name: str) -> Texts:
    """The text column of a loaded split, checked."""
    import pyarrow as pa

    if text_field not in ds.column_names:
        raise InputError(
            f"data.text_field: split {name!r} has no column {text_field!r}; its columns are {ds.column_names}"
        )
    column = _arrow(ds).column(text_field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)):
        raise InputError(f"data.text_field: column {text_field!r} of split {name!r} holds {column.type}, expected text")
    return Texts(column)


def label_column(ds, label_field: str, name: str):
    """(Arrow column, datasets feature) of a split's labels, checked to exist."""
    if label_field not in ds.column_names:
        raise InputError(
            f"data.label_field: split {name!r} has no column {label_field!r}; its columns are {ds.column_names}"
        )
    return _arrow(ds).column(label_field), ds.features[label_field]


def _arrow(ds):
    if getattr(ds, "_indices", None) is not None:  # a selected/shuffled view: make its rows contiguous
        ds = ds.flatten_indices()
    return ds.data.table if hasattr(ds.data, "table") else ds.data


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host name resolves, within ``timeout`` seconds.

    Without it, ``datasets`` retries every request with back-off for about half a minute before
    failing; a machine without internet is known after one name lookup.
    """
    from huggingface_hub import constants

    host, answers = urlparse(constants.ENDPOINT).hostname, []

    def lookup() -> None:
        try:
            answers.append(socket.getaddrinfo(host, 443))
        except OSError:
            pass

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answers)


@contextmanager
def _offline_if_unreachable() -> Iterator[None]:
    """Hub offline mode (a locally cached copy still loads) when the hub cannot be reached."""
    import datasets
    from huggingface_hub import constants

    if datasets.config.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    # The documented switch is the HF_HUB_OFFLINE variable, read at import; these are its values.
    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


# ---------------------------------------------------------------- all of it


@dataclass
class Labelled:
    """A source read and checked: its splits by role (``train`` and those of ``validation``, ``test``,
    ``unlabelled`` it has) and the class names from the training labels."""

    splits: dict[str, Split]
    class_names: list[str]


def load_labelled(
    dataset: Dataset,
    names: dict[str, str] | None = None,
    text_field: str = "text",
    label_field: str = "label",
    config_name: str | None = None,
    unlabelled: bool = False,
    cache_dir: Path | None = None,
) -> Labelled:
    """Read ``dataset``'s splits (``names``: {role: split name}; train/validation/test by default)."""
    names = dict(names or {"train": "train", "validation": "validation", "test": "test"})
    if unlabelled:
        names["unlabelled"] = UNLABELLED_SPLIT
    loaded = open_splits(dataset, names, config_name, cache_dir)
    if "train" not in loaded:
        raise InputError(f"data.train_name: {dataset!r} has no split {names['train']!r}; expected {EXPECTED_SOURCE}")
    if unlabelled and "unlabelled" not in loaded:
        raise InputError(
            f"data.unlabelled: {dataset!r} has no {UNLABELLED_SPLIT!r} split; a folder needs "
            f"{UNLABELLED_SPLIT}.parquet (or .csv, .jsonl) with a {text_field!r} column, aclImdb needs train/unsup"
        )
    for role, ds in loaded.items():
        if len(ds) == 0:
            raise InputError(f"data.dataset: split {names[role]!r} of {dataset!r} has no rows")
    column, feature = label_column(loaded["train"], label_field, names["train"])
    classes = class_names(column, feature, f"data.label_field: split {names['train']!r} column {label_field!r}")
    splits = {}
    for role, ds in loaded.items():
        name = names[role]
        labels = None
        if role != "unlabelled":
            column, feature = label_column(ds, label_field, name)
            labels = class_ids(column, feature, classes, f"data.label_field: split {name!r} column {label_field!r}")
        splits[role] = Split(text_split(ds, text_field, name), labels)
    counts = np.bincount(splits["train"].labels, minlength=len(classes))
    if (counts == 0).any():
        empty = [classes[i] for i in np.flatnonzero(counts == 0)]
        raise InputError(
            f"data.label_field: class(es) {empty} of {classes} have no text in split {names['train']!r}; "
            "a classifier needs examples of every class"
        )
    return Labelled(splits, classes)
