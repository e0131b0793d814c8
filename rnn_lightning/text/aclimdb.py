"""An unpacked aclImdb folder (``<split>/neg``, ``<split>/pos``, ``train/unsup``): which splits it has, the
files a split reads, and a split read into a ``datasets.Dataset``."""

from pathlib import Path

from rnn_lightning.errors import InputError
from rnn_lightning.text.locations import ACLIMDB_CLASSES, ACLIMDB_UNLABELLED, LABEL_FIELD, TEXT_FIELD, UNLABELLED_SPLIT


def has_split(path: Path, name: str) -> bool:
    return (path / name).is_dir() or name == UNLABELLED_SPLIT and (path / "train" / ACLIMDB_UNLABELLED).is_dir()


def _folders(path: Path, name: str) -> list[Path]:
    """The folders of an aclImdb split: ``train/unsup`` for the unlabelled reviews, else ``<split>/neg``,
    ``<split>/pos`` (in class-id order)."""
    if name == UNLABELLED_SPLIT:
        return [path / "train" / ACLIMDB_UNLABELLED]
    return [path / name / class_name for class_name in ACLIMDB_CLASSES]


def split_files(path: Path, name: str) -> list[Path]:
    """The review files an aclImdb split reads (none for a split the folder lacks)."""
    if not has_split(path, name):
        return []
    return [f for folder in _folders(path, name) for f in sorted(folder.glob("*.txt"))]


def read_split(path: Path, name: str):
    """aclImdb's ``<split>/pos``, ``<split>/neg`` (``train/unsup`` for the unlabelled reviews) as a Dataset."""
    import datasets

    def read(folder: Path) -> list[str]:
        return [f.read_text(encoding="utf-8", errors="replace") for f in sorted(folder.glob("*.txt"))]

    if name == UNLABELLED_SPLIT:
        return datasets.Dataset.from_dict({TEXT_FIELD: read(_folders(path, name)[0])})
    texts, labels = [], []
    for label, folder in enumerate(_folders(path, name)):
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
