"""What ``data.dataset`` names (a hub id, a folder, files per split, an unpacked ``aclImdb/``), checked
before any work starts (its identity for the token cache is ``identity.fingerprint``)."""

import os
from pathlib import Path

from rnn_lightning.errors import InputError

DEFAULT_DATASET = "stanfordnlp/imdb"
TEXT_FIELD, LABEL_FIELD = "text", "label"  # the default columns, and those an aclImdb folder reads into
SPLIT_NAMES = {"train": "train", "validation": "validation", "test": "test"}  # {role: the source's split name}
UNLABELLED_SPLIT = "unsupervised"  # the hub's name for IMDB's 50,000 unlabelled reviews
ACLIMDB_CLASSES = ("neg", "pos")  # aclImdb's label folders, in class-id order
ACLIMDB_UNLABELLED = "unsup"  # aclImdb's folder of unlabelled reviews, under train/
FILE_TYPES = (".parquet", ".csv", ".tsv", ".jsonl", ".json", ".arrow")  # the one list of accepted file types
EXPECTED_SOURCE = (
    f"a hub id ({DEFAULT_DATASET}), a folder with a file per split (train.parquet, test.csv, ...), "
    "files per split ({train: FILE, test: FILE}), or an unpacked aclImdb/ folder"
)

Dataset = str | dict[str, str]  # a hub id or folder, or {split name: file}


def is_local(dataset: str) -> bool:
    """A path (existing, or written like one) rather than a hub id such as ``stanfordnlp/imdb``."""
    return os.path.exists(dataset) or dataset.startswith((".", "/", "~")) or Path(dataset).suffix in FILE_TYPES


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
    return all((path / "train" / name).is_dir() for name in ACLIMDB_CLASSES)


def split_file(folder: Path, name: str) -> Path | None:
    """The one file of split ``name`` in a folder with a file per split (``train.parquet``, ...), or None."""
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
