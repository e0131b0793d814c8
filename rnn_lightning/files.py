"""Files and folders that appear complete or not at all: written beside their target, then renamed.

A rename within one folder is atomic: a reader, a second process or a run resumed after a kill sees
the old file or the new one, never half of one. Every file rnn-lightning writes for a user
(checkpoints, prediction files, the token cache, exports) goes through here.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rnn_lightning.errors import InputError


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", sync: bool = False, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``target``; on a clean exit it replaces ``target``, else it is removed.

    ``sync``: flush the file and its folder to disk before and after the rename (for checkpoints,
    which a power loss must not truncate either).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the user gets their usual permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        _fsync_dir(target.parent)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``target``, renamed to ``target`` on a clean exit.

    If ``target`` appeared meanwhile (another process finished first with the same content), the
    temporary folder is dropped and the existing one kept.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(folders, need_bytes: int, field: str) -> None:
    """Refuse, before any work, folders that cannot be created or written, or whose disk lacks
    ``need_bytes``. Creates nothing: the nearest existing parent is probed instead."""
    for folder in folders:
        folder = Path(folder).expanduser().absolute()
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise InputError(f"{field}: cannot create {folder}: {existing} is a file, not a folder")
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as e:
            raise InputError(f"{field}: cannot write under {folder} ({e.strerror or e})") from None
        free = shutil.disk_usage(existing).free
        if free < need_bytes:
            raise InputError(
                f"{field}: only {free / 2**20:.0f} MB free under {folder}; "
                f"this run needs about {need_bytes / 2**20:.0f} MB for checkpoints and logs"
            )
