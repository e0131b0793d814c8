"""The identity of a source's splits for the token cache: a hub dataset by its id, configuration and
revision; local data by the bytes of every file read."""

import hashlib
import json
import os
from pathlib import Path

from rnn_lightning.errors import InputError
from rnn_lightning.files import content_digests
from rnn_lightning.text import aclimdb
from rnn_lightning.text.hub import hub_error, offline_if_unreachable, quiet_datasets, unreadable_folder
from rnn_lightning.text.locations import Dataset, is_aclimdb, is_local, split_file


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
        return f"hub:{dataset}:{config_name}:{hub_revision(dataset, config_name)}"
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
        return [(name, f) for name in split_names for f in aclimdb.split_files(path, name)]
    files = {name: split_file(path, name) for name in split_names}
    if files[wanted["train"]] is not None:
        return [(name, f) for name, f in files.items() if f is not None]
    import datasets

    with unreadable_folder(str(dataset)), quiet_datasets():
        data_files = datasets.load_dataset_builder(str(path), config_name).config.data_files or {}
    listed = [(str(split), Path(f)) for split, fs in data_files.items() if str(split) in split_names for f in fs]
    meta = [
        ("", path / name) for name in (datasets.config.REPOCARD_FILENAME, datasets.config.DATASETDICT_INFOS_FILENAME)
    ]
    return sorted(listed) + [(name, f) for name, f in meta if f.is_file()]


def hub_revision(dataset: str, config_name: str | None) -> str:
    """The revision (commit) of a hub dataset that ``datasets`` would read: the hub's newest, or offline
    the one in its local cache."""
    import datasets

    try:
        with offline_if_unreachable(), quiet_datasets():
            return str(datasets.load_dataset_builder(dataset, config_name).hash)
    except Exception as e:  # the hub answers offline-ness with several exception types
        raise hub_error(dataset, e) from None
