"""The token cache: every split of a source encoded once, in a folder named by a hash of all that changes it.

A cache folder appears whole or not at all (``files.atomic_folder``) and holds:

- ``<split>_ids.npy`` (N, max_len) int32 token ids and ``<split>_labels.npy``, (N,) int64 class ids
  (``NO_LABEL`` for unlabelled text) or (N, K) uint8 multi-label sets, per source split (train,
  validation, test, unlabelled);
- ``fit_rows.npy`` and ``val_rows.npy``, the rows of train for fit and val, when validation is carved out of train;
- ``tokenizer.json``, the tokenizer that encoded them;
- ``meta.json``: the class names and counts, whether the labels are multi-label, the dataset, ``views`` (for each of fit/val/test/unlabelled:
  its split and, if a part of it, its rows file), the split ``sizes``, the ``digests`` of every
  other file and its own digest (``SELF``), all checked on each read, so a damaged cache is rebuilt
  rather than trained on.

Files are written with plain writes (a memory map of a file the disk cannot hold ends the process with
SIGBUS), after a check that the disk has room for them all.
"""

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tokenizers import Tokenizer

from rnn_lightning.errors import InputError
from rnn_lightning.files import DISK_ERRORS, atomic_folder, content_digests
from rnn_lightning.text.dataset import TokenizedReviews
from rnn_lightning.text.sources import Labelled, Texts
from rnn_lightning.text.tokenizer import digest, encode, length

CACHE_VERSION = 4  # bump when the tokenizer recipe, the split or the cache layout changes
META = "meta.json"
SELF = "meta_digest"  # the key in meta.json of the digest of the rest of it
TOKENIZER = "tokenizer.json"
ROWS = {"fit": "fit_rows.npy", "val": "val_rows.npy"}
NO_LABEL = -1
DAMAGED = (OSError, ValueError, KeyError)  # what reading a truncated, altered or missing file raises


def ids_file(split: str) -> str:
    return f"{split}_ids.npy"


def labels_file(split: str) -> str:
    return f"{split}_labels.npy"


def folder(cache_dir: Path, key: dict) -> Path:
    """The cache folder for ``key``: everything that changes the encoded data (JSON values)."""
    key = {"version": CACHE_VERSION, **key}
    return cache_dir / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def folder_for_tokenizer(path: Path, tokenizer_json: str) -> Path:
    """Beside the cache folder ``path``: the same data encoded with another tokenizer (a checkpoint's)."""
    return path.with_name(f"{path.name}-{digest(tokenizer_json)}")


def exists(path: Path) -> bool:
    return (path / META).exists()


def _meta_digest(meta: dict) -> str:
    body = {key: value for key, value in meta.items() if key != SELF}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def _checked_meta(path: Path) -> dict:
    """The cache's ``meta.json``, checked against its own digest (raises one of ``DAMAGED``)."""
    meta = json.loads((path / META).read_text())
    if not isinstance(meta, dict) or meta.get(SELF) != _meta_digest(meta):
        raise ValueError(f"{META} changed since it was written")
    return meta


def read_meta(path: Path) -> dict | None:
    """The cache's ``meta.json``; None when there is none, it cannot be read or it was altered (then the
    cache is rebuilt)."""
    try:
        return _checked_meta(path)
    except DAMAGED:
        return None


def encode_to_file(path: Path, tokenizer: Tokenizer, texts: Texts, rows: np.ndarray | None = None) -> None:
    """Encode ``texts`` (those at ``rows``) chunk by chunk into ``path``, an (N, max_len) int32 ``.npy``.

    Memory stays bounded by one chunk whatever N is; the file is read back memory-mapped.
    """
    n = len(texts) if rows is None else len(rows)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False}
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {**header, "shape": (n, length(tokenizer))})
        for chunk in texts.chunks(rows):
            out.write(np.ascontiguousarray(encode(tokenizer, chunk), dtype=np.int32).tobytes())


def bytes_needed(source: Labelled, tokenizer: Tokenizer) -> int:
    """About the size of the cache of ``source``: ids, labels and rows of every split, and the tokenizer."""
    rows = sum(len(split.texts) for split in source.splits.values())
    label_bytes = max(8, len(source.class_names))  # an int64 id, or a byte per label
    return rows * (4 * length(tokenizer) + label_bytes) + len(source.splits["train"].texts) * 8 + 2**20


def write(
    target: Path,
    source: Labelled,
    tokenizer: Tokenizer,
    fit_val: tuple[np.ndarray, np.ndarray] | None,
    facts: dict,
) -> None:
    """Encode every split of ``source`` with ``tokenizer`` into the cache folder ``target``.

    ``fit_val``: the rows of train for fit and val, when validation is carved out of train (None: the
    source's validation split is val). ``facts`` (class names and counts, the dataset) go into ``meta.json``.
    """
    views: dict[str, dict] = {"fit": {"split": "train"}}
    if fit_val is None:
        views["val"] = {"split": "validation"}
    else:
        views["fit"]["rows"], views["val"] = ROWS["fit"], {"split": "train", "rows": ROWS["val"]}
    for role in ("test", "unlabelled"):
        if role in source.splits:
            views[role] = {"split": role}
    need = bytes_needed(source, tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < need:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({_space(need, free)})", str(target))
    try:
        _write_files(target, source, tokenizer, fit_val, {**facts, "views": views})
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        free = shutil.disk_usage(target.parent).free
        raise OSError(e.errno, f"{e.strerror} ({_space(need, free)})", str(target)) from None


def _space(need: int, free: int) -> str:
    return f"the token cache needs about {need / 2**20:.1f} MB, {free / 2**20:.1f} MB free"


def _write_files(target: Path, source: Labelled, tokenizer: Tokenizer, fit_val, facts: dict) -> None:
    with atomic_folder(target) as tmp:  # a crash or a second process never sees half a cache
        for role, split in source.splits.items():
            encode_to_file(tmp / ids_file(role), tokenizer, split.texts)
            labels = split.labels if split.labels is not None else np.full(len(split.texts), NO_LABEL, dtype=np.int64)
            np.save(tmp / labels_file(role), labels)
        if fit_val is not None:
            np.save(tmp / ROWS["fit"], fit_val[0])
            np.save(tmp / ROWS["val"], fit_val[1])
        (tmp / TOKENIZER).write_text(tokenizer.to_str())
        files = sorted(f.name for f in tmp.iterdir())
        meta = {**facts, "sizes": {role: len(split.texts) for role, split in source.splits.items()},
                "digests": dict(zip(files, content_digests([tmp / f for f in files]), strict=True))}  # fmt: skip
        (tmp / META).write_text(json.dumps({**meta, SELF: _meta_digest(meta)}))


@dataclass
class Cached:
    tokenizer_json: str
    views: dict[str, TokenizedReviews]  # fit, val and those of test, unlabelled the source has


def read(path: Path, memo_dir: Path | None = None) -> Cached:
    """The cache at ``path``, every file checked against its digest (memoised in ``memo_dir``); a damaged
    cache raises one of ``DAMAGED``. The ids are memory-mapped, not read."""
    meta = _checked_meta(path)
    names = sorted(meta["digests"])
    found = content_digests([path / n for n in names], memo_dir=memo_dir)
    bad = [n for n, want, got in zip(names, (meta["digests"][n] for n in names), found, strict=True) if want != got]
    if bad:
        raise ValueError(f"{bad[0]} changed since it was written")
    views = {}
    for view, spec in meta["views"].items():
        ids = np.load(path / ids_file(spec["split"]), mmap_mode="r")
        labels = np.load(path / labels_file(spec["split"]))
        rows = np.load(path / spec["rows"]) if "rows" in spec else None
        views[view] = TokenizedReviews(ids, labels, rows)
    return Cached((path / TOKENIZER).read_text(), views)


def read_or_rebuild(path: Path, rebuild: Callable[[Path], None], memo_dir: Path | None = None) -> Cached:
    """``read``; a damaged cache (truncated, altered, unreadable) is removed, written again by
    ``rebuild(path)`` and read, with a one-line notice."""
    try:
        return read(path, memo_dir)
    except DAMAGED as e:
        rank_zero_warn(f"data: the token cache {path} is damaged ({str(e).splitlines()[0][:120]}); rebuilding it")
    shutil.rmtree(path, ignore_errors=True)
    rebuild(path)
    return read(path, memo_dir)


def check_same_tokenizer_everywhere(trainer, tokenizer_json: str) -> None:
    """Under DDP, gather every process's tokenizer digest and refuse to go on if any differs
    (e.g. nodes whose caches were built from different copies of the data)."""
    if trainer is None or trainer.world_size < 2:
        return
    mine_hex = digest(tokenizer_json)
    mine = torch.tensor([int(mine_hex[i : i + 4], 16) for i in range(0, len(mine_hex), 4)], dtype=torch.int64)
    everyone = trainer.strategy.all_gather(mine.to(trainer.strategy.root_device)).view(-1, len(mine)).cpu()
    if not torch.all(everyone == mine):
        raise InputError(
            f"data: the processes hold different tokenizers ({everyone.tolist()}); clear data.cache_dir and rerun"
        )
    rank_zero_info(f"Tokenizer {mine_hex} identical on all {trainer.world_size} processes")
