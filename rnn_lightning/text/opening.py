"""A source's splits as ``datasets.Dataset`` (Arrow, memory-mapped from disk for files and hub data): a file
per split, a folder ``datasets`` reads, a hub id, or an aclImdb folder. Local files are copied to Arrow once,
into ``data.cache_dir`` under their content's digest."""

import os
from pathlib import Path

from rnn_lightning.errors import InputError, unreadable_file
from rnn_lightning.files import DISK_ERRORS, atomic_file, content_digests
from rnn_lightning.text import aclimdb
from rnn_lightning.text.formats import parquet_batches, wide_encoding
from rnn_lightning.text.hub import full_cache, load_dataset, load_hub, unreadable_folder
from rnn_lightning.text.identity import fingerprint
from rnn_lightning.text.locations import Dataset, check_dataset, is_aclimdb, is_local, split_file
from rnn_lightning.text.table_types import record_batches
from rnn_lightning.text.tokenizer import CHUNK

ARROW_DIR = "arrow"  # under the token cache folder: the Arrow copies datasets makes of local files
PARQUET_COPY = "parquet.arrow"  # the Arrow copy of a parquet file, in its folder under ARROW_DIR
TABLE_COPY = "table.arrow"  # and of a CSV, TSV or JSON-lines file
DELIMITERS = {".csv": ",", ".tsv": "\t", ".jsonl": None}  # the tables read row by row (None: JSON lines)
DATASETS_BUILDERS = {".json": "json", ".arrow": "arrow"}  # the file types datasets reads instead
TEXT_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".txt"}  # the text files datasets reads from a folder


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
        return _pick(load_hub(dataset, config_name), by_name)
    path = Path(dataset).expanduser()
    if is_aclimdb(path):
        return {role: aclimdb.read_split(path, name) for role, name in wanted.items() if aclimdb.has_split(path, name)}
    files = {name: split_file(path, name) for name in by_name}
    if files[wanted["train"]] is not None:
        return {by_name[name]: _read_file(f, cache_dir) for name, f in files.items() if f is not None}
    options = {}
    if cache_dir is not None:
        digest = fingerprint(dataset, wanted, config_name, exclude=cache_dir, memo_dir=cache_dir)
        options["cache_dir"] = str(_arrow_copies(cache_dir, digest))
    try:
        with unreadable_folder(dataset):
            loaded = load_dataset(path=str(path), **options)
    except InputError:  # datasets reads text as UTF-8 only, and says so in words that name no file
        for f in sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES):
            _refuse_wide_text(f)
        raise
    return _pick(loaded, by_name)


def _refuse_wide_text(path: Path) -> None:
    encoding = wide_encoding(path)
    if encoding is not None:
        raise InputError(f"data.dataset: {str(path)!r} is {encoding} text: save it as UTF-8")


def _read_file(path: Path, cache_dir: Path | None = None):
    """A file of one split as a ``datasets.Dataset``: Parquet, CSV, TSV and JSON lines through the format
    readers (``formats``) into an Arrow copy in ``cache_dir`` (in memory without one); ``.json`` and
    ``.arrow`` through ``datasets``."""
    copies = None if cache_dir is None else _arrow_copies(cache_dir, content_digests([path], cache_dir)[0])
    options = {} if copies is None else {"cache_dir": str(copies)}
    try:
        if path.suffix == ".parquet":
            return _to_arrow(lambda: _parquet(path), copies and copies / PARQUET_COPY)
        if path.suffix in DELIMITERS:
            read = lambda: record_batches(path, DELIMITERS[path.suffix], CHUNK)  # noqa: E731
            return _to_arrow(read, copies and copies / TABLE_COPY)
        return load_dataset(DATASETS_BUILDERS[path.suffix], data_files={"split": str(path)}, split="split", **options)
    except InputError:  # said by a format reader, naming the file
        raise
    except OSError as e:
        if e.errno in DISK_ERRORS:  # the Arrow copy in the cache folder could not be written: not the data's fault
            raise full_cache(e, e.filename or options.get("cache_dir")) from None
        raise unreadable_file("data.dataset", path, e) from None
    except Exception as e:  # datasets and pyarrow answer an unreadable file with many exception types
        if path.suffix in TEXT_SUFFIXES:
            _refuse_wide_text(path)
        raise unreadable_file("data.dataset", path, e) from None


def _parquet(path: Path):
    """(schema, record batches) of a parquet file, a row group at a time: ``datasets``' own conversion holds
    every row group read so far until the end, so its memory grows with the file. The schema's metadata
    carries the ``datasets`` features (a ``ClassLabel``'s names)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    if f.metadata.num_rows == 0:
        raise ValueError("no rows")  # as a CSV or JSON-lines file without rows
    return f.schema_arrow, parquet_batches(f, CHUNK)


def _to_arrow(read, target: Path | None):
    """The record batches of ``read()`` (schema, batches) as a ``datasets.Dataset``: memory-mapped from an Arrow
    copy at ``target``, written a batch at a time unless it is there already; without a target, in memory."""
    import datasets
    import pyarrow as pa

    if target is None:
        from datasets.table import InMemoryTable

        schema, batches = read()
        return datasets.Dataset(InMemoryTable(pa.Table.from_batches(list(batches), schema)))
    if not target.is_file():
        schema, batches = read()
        with atomic_file(target, "wb") as out, pa.ipc.new_stream(out, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
    return datasets.Dataset.from_file(str(target))


def _arrow_copies(cache_dir: Path, digest: str) -> Path:
    return cache_dir / ARROW_DIR / digest


def _pick(loaded, by_name: dict[str, str]) -> dict:
    return {role: loaded[name] for name, role in by_name.items() if name in loaded}
