"""Reading labelled IMDB reviews from the Hugging Face hub, a folder of parquet files or ``aclImdb/``."""

import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from rnn_lightning.errors import InputError

Split = tuple[list[str], np.ndarray]  # texts, labels (N,) int64 in {0, 1}
LABEL_NAMES = {"neg": 0, "pos": 1}
DATA_SUFFIXES = {".parquet", ".arrow", ".csv", ".json", ".jsonl", ".txt"}  # what load_dataset reads from a folder


def is_local(dataset: str) -> bool:
    """A path (existing, or written like one) rather than a hub id such as ``stanfordnlp/imdb``."""
    return os.path.exists(dataset) or dataset.startswith((".", "/", "~")) or dataset.endswith(".parquet")


def check_dataset(dataset: str) -> None:
    """Refuse a local path that does not exist, before any work starts."""
    if is_local(dataset) and not os.path.exists(os.path.expanduser(dataset)):
        raise InputError(
            f"data.dataset: {dataset!r} does not exist; expected a hub id (stanfordnlp/imdb), "
            "a folder with train/test parquet files, or an unpacked aclImdb/ folder"
        )


def is_aclimdb(path: Path) -> bool:
    return (path / "train" / "pos").is_dir() and (path / "train" / "neg").is_dir()


def fingerprint(dataset: str, exclude: Path | None = None) -> str:
    """Identity of the source for the token cache: a hub id as is; a local one by file names, sizes, times.

    An aclImdb folder is identified by its split folders' times (they change when files come or go),
    which saves stat-ing 100,000 files at every start. Files under ``exclude`` (the token cache,
    when it lives inside the data folder) are not part of the identity.
    """
    if not is_local(dataset):
        return dataset
    path = Path(dataset).expanduser().resolve()
    if path.is_dir() and is_aclimdb(path):
        entries = [path / s / c for s in ("train", "test") for c in ("pos", "neg") if (path / s / c).is_dir()]
    elif path.is_dir():
        entries = sorted(
            p for p in path.rglob("*") if p.suffix in DATA_SUFFIXES and not _hidden_or_under(p, path, exclude)
        )
    else:
        entries = [path]
    facts = [
        (str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in entries
    ]
    return str(path) + ":" + hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def _hidden_or_under(p: Path, root: Path, exclude: Path | None) -> bool:
    if exclude is not None and p.is_relative_to(exclude.resolve()):
        return True
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def load_labelled(dataset: str, splits: tuple[str, ...] = ("train", "test")) -> dict[str, Split]:
    """Texts and 0/1 labels of the requested splits."""
    check_dataset(dataset)
    path = Path(dataset).expanduser()
    if is_local(dataset) and path.is_dir() and is_aclimdb(path):
        return {s: _read_aclimdb(path, s) for s in splits}
    ds = _load_dataset(dataset)
    out = {}
    for s in splits:
        if s not in ds:
            raise InputError(
                f"data.dataset: {dataset!r} has no {s!r} split (found {sorted(ds)}); expected train and test"
            )
        out[s] = _columns(ds[s], dataset, s)
    return out


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


UNLABELLED_SPLIT = "unsupervised"  # the hub's name for IMDB's 50,000 unlabelled reviews


def load_unlabelled(dataset: str) -> list[str]:
    """Texts of the dataset's unlabelled split (``unsupervised.parquet`` in a folder, ``train/unsup`` in aclImdb)."""
    check_dataset(dataset)
    path = Path(dataset).expanduser()
    if is_local(dataset) and path.is_dir() and is_aclimdb(path):
        folder = path / "train" / "unsup"
        if not folder.is_dir():
            raise InputError(
                f"data.unlabelled: {str(folder)!r} is missing; an aclImdb folder keeps them in train/unsup"
            )
        return [f.read_text(encoding="utf-8", errors="replace") for f in sorted(folder.glob("*.txt"))]
    ds = _load_dataset(dataset, splits=(UNLABELLED_SPLIT,))
    if UNLABELLED_SPLIT not in ds:
        raise InputError(
            f"data.unlabelled: {dataset!r} has no {UNLABELLED_SPLIT!r} split (found {sorted(ds)}); "
            f"a folder needs {UNLABELLED_SPLIT}.parquet with a 'text' column"
        )
    split = ds[UNLABELLED_SPLIT]
    if "text" not in split.column_names:
        raise InputError(f"data.unlabelled: split {UNLABELLED_SPLIT!r} of {dataset!r} has no 'text' column")
    table = split.data.table if hasattr(split.data, "table") else split.data
    return ["" if t is None else t for t in table.column("text").to_pylist()]


def _load_dataset(dataset: str, splits: tuple[str, ...] = ("train", "test")):
    import datasets

    if not is_local(dataset):
        try:
            with _offline_if_unreachable():
                return datasets.load_dataset(dataset)
        except Exception as e:  # the hub answers offline-ness with several exception types
            raise InputError(
                f"data.dataset: could not load {dataset!r} from the Hugging Face hub ({type(e).__name__}); "
                "without internet, point --data.dataset at a local copy: a folder of train/test parquet files "
                "(the stanfordnlp/imdb layout) or an unpacked aclImdb/ folder"
            ) from None
    path = os.path.expanduser(dataset)
    if os.path.isfile(path):
        return datasets.load_dataset("parquet", data_files={"train": path})
    # Only the splits asked for: IMDB's 50,000 unlabelled reviews are read only when wanted.
    files = {s: os.path.join(path, f"{s}.parquet") for s in splits}
    if all(os.path.isfile(f) for f in files.values()):
        return datasets.load_dataset("parquet", data_files=files)
    try:
        return datasets.load_dataset(path)
    except Exception as e:
        raise InputError(
            f"data.dataset: could not read {dataset!r} as a dataset folder ({e})".replace("\n", " ")
        ) from None


def _columns(split, dataset: str, name: str) -> Split:
    missing = [c for c in ("text", "label") if c not in split.column_names]
    if missing:
        raise InputError(
            f"data.dataset: split {name!r} of {dataset!r} lacks column(s) {missing} (has {split.column_names}); "
            "expected 'text' and 'label'"
        )
    table = split.data.table if hasattr(split.data, "table") else split.data
    texts = table.column("text").to_pylist()
    return texts, labels_to_ints(table.column("label").to_pylist(), f"data.dataset: split {name!r} column 'label'")


def labels_to_ints(raw: list, field: str) -> np.ndarray:
    """0/1 ints (bools and the names 'neg'/'pos' are mapped); anything else is refused."""
    try:
        labels = np.array([LABEL_NAMES[v] if isinstance(v, str) else v for v in raw], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        bad = next(v for v in raw if not (isinstance(v, str) and v in LABEL_NAMES or isinstance(v, (int, np.integer))))
        raise InputError(f"{field}: expected 0/1 or 'neg'/'pos', found {bad!r}") from None
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.size:
        raise InputError(f"{field}: expected 0/1 or 'neg'/'pos', found {bad[0].item()!r}")
    return labels


def _read_aclimdb(path: Path, split: str) -> Split:
    texts: list[str] = []
    labels: list[int] = []
    for label_name, label in LABEL_NAMES.items():
        folder = path / split / label_name
        if not folder.is_dir():
            raise InputError(
                f"data.dataset: {str(folder)!r} is missing; an aclImdb folder needs {split}/pos and {split}/neg"
            )
        for f in sorted(folder.glob("*.txt")):
            texts.append(f.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return texts, np.array(labels, dtype=np.int64)
