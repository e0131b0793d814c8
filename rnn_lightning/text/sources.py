"""Reading labelled text (from any source ``locations`` accepts) into splits of texts and class ids.

Every source becomes ``datasets.Dataset`` splits (Arrow, memory-mapped from disk for files and hub
data), so millions of rows are read in chunks and never held as Python objects all at once. A split
is then a ``Split``: its text column (``Texts``, read in chunks) and its labels as class ids (``labels``).
"""

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnn_lightning.errors import InputError, unreadable_file
from rnn_lightning.files import DISK_ERRORS, atomic_file, content_digests
from rnn_lightning.text.hub import offline_if_unreachable
from rnn_lightning.text.labels import class_ids, class_names, is_text
from rnn_lightning.text.locations import (
    ACLIMDB_CLASSES,
    ACLIMDB_UNLABELLED,
    DEFAULT_DATASET,
    EXPECTED_SOURCE,
    FILE_TYPES,
    LABEL_FIELD,
    SPLIT_NAMES,
    TEXT_FIELD,
    UNLABELLED_SPLIT,
    Dataset,
    check_dataset,
    is_aclimdb,
    is_local,
)
from rnn_lightning.text.tokenizer import CHUNK

ARROW_DIR = "arrow"  # under the token cache folder: the Arrow copies datasets makes of local files
PARQUET_COPY = "parquet.arrow"  # the Arrow copy of a parquet file, in its folder under ARROW_DIR


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


@dataclass
class Labelled:
    """A source read and checked: its splits by role (``train`` and those of ``validation``, ``test``,
    ``unlabelled`` it has) and the class names from the training labels."""

    splits: dict[str, Split]
    class_names: list[str]


def load_labelled(
    dataset: Dataset,
    names: dict[str, str] | None = None,
    text_field: str = TEXT_FIELD,
    label_field: str = LABEL_FIELD,
    config_name: str | None = None,
    unlabelled: bool = False,
    cache_dir: Path | None = None,
) -> Labelled:
    """Read ``dataset``'s splits (``names``: {role: split name}; train/validation/test by default)."""
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


# ---------------------------------------------------------------- sources -> datasets.Dataset splits


def open_splits(
    dataset: Dataset, wanted: dict[str, str], config_name: str | None = None, cache_dir: Path | None = None
) -> dict:
    """The splits among ``wanted`` ({role: split name}) that the source has, as ``datasets.Dataset`` by role.

    A folder with one file per wanted split (``train.parquet``, ``test.csv``, ...) or files given per
    split are read file by file (only the splits asked for: IMDB's 50,000 unlabelled reviews are read
    only when wanted); any other folder or a hub id goes through ``datasets.load_dataset``.

    ``cache_dir``: its ``arrow/`` folder holds the Arrow copies of local files, one folder per content
    digest (the digests are memoised in ``cache_dir``). ``datasets`` keys its own copies by path and
    modification time, and would hand back the old rows of a file rewritten with its time put back;
    keyed by content, it cannot.
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
    options = {}
    if cache_dir is not None:
        digest = fingerprint(dataset, wanted, config_name, exclude=cache_dir, memo_dir=cache_dir)
        options["cache_dir"] = str(_arrow_copies(cache_dir, digest))
    with _unreadable_folder(dataset):
        loaded = _load(path=str(path), **options)
    return _pick(loaded, by_name)


@contextmanager
def _unreadable_folder(dataset: str) -> Iterator[None]:
    """What ``datasets`` raises for a folder it cannot read, as one line; a full disk stays itself."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_ERRORS:
            raise full_cache(e, e.filename or "data.cache_dir") from None
        raise InputError(
            f"data.dataset: could not read {dataset!r} as a dataset folder ({e})".replace("\n", " ")
        ) from None
    except Exception as e:
        raise InputError(
            f"data.dataset: could not read {dataset!r} as a dataset folder ({e})".replace("\n", " ")
        ) from None


def full_cache(error: OSError, filename) -> InputError:
    """A full or failing disk under ``data.cache_dir`` while ``datasets`` copies the data there, as one line
    (the class names are read while the command line is parsed, where only an ``InputError`` is one line)."""
    return InputError(
        f"data.cache_dir: {error.strerror or error} writing {filename}; free space or set another data.cache_dir"
    )


# ---------------------------------------------------------------- identity for the token cache


def fingerprint(
    dataset: Dataset,
    wanted: dict[str, str],
    config_name: str | None = None,
    exclude: Path | None = None,
    memo_dir: Path | None = None,
) -> str:
    """Identity of the source's splits ``wanted`` ({role: split name}) for the token cache. A hub dataset: its id,
    configuration and revision. Local data: every file read for those splits (a hub-layout folder's
    card and info files too, which can map splits to files and name classes), each named by its path
    with links followed and hashed by its bytes (``files.content_digests``, memoised in ``memo_dir``),
    so data edited in place, even with its size and modification time put back, is a new identity.
    Files under ``exclude`` (the token cache, when it lives inside the data folder) are left out.
    """
    if isinstance(dataset, str) and not is_local(dataset):
        return f"hub:{dataset}:{config_name}:{_hub_revision(dataset, config_name)}"
    read = files_read(dataset, wanted, config_name)
    if exclude is not None:
        read = [(name, f) for name, f in read if not f.resolve().is_relative_to(exclude.resolve())]
    for _, f in read:
        if not f.exists():
            what = f"is a link to {os.readlink(f)!r}, which does not exist" if f.is_symlink() else "is missing"
            raise InputError(f"data.dataset: {str(f)!r} {what}")
    digests = content_digests([f for _, f in read], memo_dir)
    facts = [[name, str(f.resolve()), d] for (name, f), d in zip(read, digests, strict=True)]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def files_read(dataset: Dataset, wanted: dict[str, str], config_name: str | None = None) -> list[tuple[str, Path]]:
    """(split name, file) for every local file ``open_splits`` reads for ``wanted``, in a fixed order;
    files a hub-layout folder's configuration reads for all splits are listed under the name ``""``."""
    split_names = sorted(set(wanted.values()))
    if isinstance(dataset, dict):
        return [(name, Path(os.path.expanduser(f))) for name, f in sorted(dataset.items()) if name in split_names]
    path = Path(dataset).expanduser()
    if is_aclimdb(path):
        return [(name, f) for name in split_names for f in _aclimdb_files(path, name)]
    files = {name: _split_file(path, name) for name in split_names}
    if files[wanted["train"]] is not None:
        return [(name, f) for name, f in files.items() if f is not None]
    import datasets

    with _unreadable_folder(str(dataset)), _quiet_datasets():
        data_files = datasets.load_dataset_builder(str(path), config_name).config.data_files or {}
    listed = [(str(split), Path(f)) for split, fs in data_files.items() if str(split) in split_names for f in fs]
    meta = [
        ("", path / name) for name in (datasets.config.REPOCARD_FILENAME, datasets.config.DATASETDICT_INFOS_FILENAME)
    ]
    return sorted(listed) + [(name, f) for name, f in meta if f.is_file()]


def _hub_revision(dataset: str, config_name: str | None) -> str:
    """The revision (commit) of a hub dataset that ``datasets`` would read: the hub's newest, or offline
    the one in its local cache."""
    import datasets

    try:
        with offline_if_unreachable(), _quiet_datasets():
            return str(datasets.load_dataset_builder(dataset, config_name).hash)
    except Exception as e:  # the hub answers offline-ness with several exception types
        raise _hub_error(dataset, e) from None


def _arrow_copies(cache_dir: Path, digest: str) -> Path:
    return cache_dir / ARROW_DIR / digest


def _split_file(folder: Path, name: str) -> Path | None:
    for suffix in FILE_TYPES:
        link = folder / f"{name}{suffix}"
        if link.is_symlink() and not link.exists():
            raise InputError(f"data.dataset: {str(link)!r} is a link to {os.readlink(link)!r}, which does not exist")
    found = [folder / f"{name}{suffix}" for suffix in FILE_TYPES if (folder / f"{name}{suffix}").is_file()]
    if len(found) > 1:
        raise InputError(
            f"data.dataset: {str(folder)!r} holds several files for split {name!r}: {[f.name for f in found]}"
        )
    return found[0] if found else None


def _read_file(path: Path, cache_dir: Path | None = None):
    builder, options = FILE_TYPES[path.suffix]
    if cache_dir is not None:
        options = {**options, "cache_dir": str(_arrow_copies(cache_dir, content_digests([path], cache_dir)[0]))}
    try:
        if path.suffix == ".parquet" and cache_dir is not None:
            return _parquet_to_arrow(path, Path(options["cache_dir"]) / PARQUET_COPY)
        return _load(builder, data_files={"split": str(path)}, split="split", **options)
    except OSError as e:
        if e.errno in DISK_ERRORS:  # the Arrow copy in the cache folder could not be written: not the data's fault
            raise full_cache(e, e.filename or options.get("cache_dir")) from None
        raise unreadable_file("data.dataset", path, e) from None
    except Exception as e:  # datasets and pyarrow answer an unreadable file with many exception types
        raise unreadable_file("data.dataset", path, e) from None


def _parquet_to_arrow(path: Path, target: Path):
    """A parquet file as a memory-mapped ``datasets.Dataset``, through an Arrow copy at ``target``
    written one row group at a time: ``datasets``' own conversion holds every row group read so far
    until the end, so its memory grows with the file."""
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
        with offline_if_unreachable():
            return _load(dataset, config_name)
    except Exception as e:  # the hub answers offline-ness with several exception types
        raise _hub_error(dataset, e) from None


def _hub_error(dataset: str, e: Exception) -> InputError:
    return InputError(
        f"data.dataset: could not load {dataset!r} from the Hugging Face hub ({type(e).__name__}); "
        "without internet, point --data.dataset at a local copy: a folder of train/test parquet files "
        f"(the {DEFAULT_DATASET} layout) or an unpacked aclImdb/ folder"
    )


def _aclimdb_has(path: Path, name: str) -> bool:
    return (path / name).is_dir() or name == UNLABELLED_SPLIT and (path / "train" / ACLIMDB_UNLABELLED).is_dir()


def _aclimdb_folders(path: Path, name: str) -> list[Path]:
    """The folders of an aclImdb split: ``train/unsup`` for the unlabelled reviews, else ``<split>/neg``,
    ``<split>/pos`` (in class-id order)."""
    if name == UNLABELLED_SPLIT:
        return [path / "train" / ACLIMDB_UNLABELLED]
    return [path / name / class_name for class_name in ACLIMDB_CLASSES]


def _aclimdb_files(path: Path, name: str) -> list[Path]:
    """The review files an aclImdb split reads (none for a split the folder lacks)."""
    if not _aclimdb_has(path, name):
        return []
    return [f for folder in _aclimdb_folders(path, name) for f in sorted(folder.glob("*.txt"))]


def _aclimdb_split(path: Path, name: str):
    """aclImdb's ``<split>/pos``, ``<split>/neg`` (``train/unsup`` for the unlabelled reviews) as a Dataset."""
    import datasets

    def read(folder: Path) -> list[str]:
        return [f.read_text(encoding="utf-8", errors="replace") for f in sorted(folder.glob("*.txt"))]

    if name == UNLABELLED_SPLIT:
        return datasets.Dataset.from_dict({TEXT_FIELD: read(_aclimdb_folders(path, name)[0])})
    texts, labels = [], []
    for label, folder in enumerate(_aclimdb_folders(path, name)):
        if not folder.is_dir():
            raise InputError(
                f"data.dataset: {str(folder)!r} is missing; an aclImdb folder needs {name}/pos and {name}/neg"
            )
        part = read(folder)
        texts += part
        labels += [label] * len(part)
    classes = datasets.ClassLabel(names=list(ACLIMDB_CLASSES))
    features = datasets.Features({TEXT_FIELD: datasets.Value("string"), LABEL_FIELD: classes})
    return datasets.Dataset.from_dict({TEXT_FIELD: texts, LABEL_FIELD: labels}, features=features)
