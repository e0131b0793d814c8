"""Files and folders that appear complete or not at all: written beside their target, then renamed.

A rename within one folder is atomic: a reader, a second process or a run resumed after a kill sees
the old file or the new one, never half of one. Every file rnn-lightning writes for a user
(checkpoints, prediction files, the token cache, exports) goes through here.
"""

import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rnn_lightning.errors import InputError

CACHE_ENV = "RNN_LIGHTNING_CACHE"  # names another default cache folder (tests: a temporary one); read only here
# The token cache's default folder, and with it the memo of content_digests kept there.
CACHE_ROOT = os.environ.get(CACHE_ENV) or "~/.cache/rnn_lightning"
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}  # what a full or failing disk answers


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", sync: bool = False, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``target``; on a clean exit it replaces ``target``, else it is removed.

    ``sync``: flush the file and its folder to disk before and after the rename (for checkpoints,
    which a power loss must not truncate either).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{_writer()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the user gets their usual permissions
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # e.g. a full disk while writing: name the file the user asked for
            raise OSError(e.errno, e.strerror, str(target)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        _fsync_dir(target.parent)
    _remove_stale_temporaries(target)


def _writer() -> str:
    """Who writes a temporary file: this host and process (a host name's dots are kept out of it)."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _remove_stale_temporaries(target: Path) -> None:
    """Remove the temporary files of ``target`` left by processes of this host that were killed mid-write;
    another process's file that is still being written (two writers of one target) is left alone."""
    host = socket.gethostname().replace(".", "_")
    for stale in target.parent.glob(f".{glob.escape(target.name)}.{glob.escape(host)}-*.tmp"):
        pid = stale.name[len(f".{target.name}.{host}-") :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


DIGESTS_NAME = "digests.json"  # the memo of content_digest, in the folder it is given


def content_digests(paths, memo_dir: Path | None = None) -> list[str]:
    """SHA-256 of each file's bytes (hex, 32 characters kept), in order.

    ``memo_dir`` keeps, per file, its digest with its size, modification and change times and inode:
    a file whose bytes changed has a new change time even when its size and modification time were
    put back (which a plain size-and-time key misses), so only new or changed files are read again.
    One entry per path: a changed file replaces its old entry.
    """
    memo_file = memo_dir / DIGESTS_NAME if memo_dir is not None else None
    memo: dict = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}  # a damaged memo is only a slower start
    out, changed = [], False
    for path in paths:
        path = Path(path).resolve()
        st = path.stat()
        stamp = f"{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
        known = memo.get(str(path))
        if not (isinstance(known, list) and len(known) == 2 and known[0] == stamp):
            with open(path, "rb") as f:
                memo[str(path)] = [stamp, hashlib.file_digest(f, "sha256").hexdigest()[:32]]
            changed = True
        out.append(memo[str(path)][1])
    if memo_file is not None and changed:
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(memo_file) as f:
                json.dump(memo, f)
        except OSError:
            pass  # a read-only cache folder: no memo, same digests
    return out
