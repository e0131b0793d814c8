"""Files and folders that appear complete or not at all: written beside their target, then renamed.

A rename within one folder is atomic: a reader, a second process or a run resumed after a kill sees
the old file or the new one, never half of one. Every file rnn-lightning writes for a user
(checkpoints, prediction files, the token cache, exports) goes through here.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rnn_lightning.errors import InputError

CACHE_ENV = "RNN_LIGHTNING_CACHE"  # names another default cache folder (tests: a temporary one); read only here
# The token cache's default folder, and with it the memo of content_digests kept there.
CACHE_ROOT = os.environ.get(CACHE_ENV) or "~/.cache/rnn_lightning"
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}  # what a full or failing disk answers
# The temporary file or folder of a write to <target>: ".<target>.<host>-<pid>.<random>.tmp", beside it.
TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.tmp")
FORMER_TEMPORARY = re.compile(r"\.tmp-[a-z0-9_]{8}")  # a folder's, as earlier versions named it (no writer)
# A temporary whose writer cannot be asked (another host's, or one without a pid) that has not changed for
# this long is abandoned: every writer here writes its file or folder without pauses that long.
ABANDONED_AFTER_S = 3600


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", sync: bool = False, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``target``; on a clean exit it replaces ``target``, else it is removed.

    ``sync``: flush the file and its folder to disk before and after the rename (for checkpoints,
    which a power loss must not truncate either).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(target.parent)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{_writer()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the user gets their usual permissions
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = e if isinstance(e, OSError) else _disk_error(e)
        if cause is not None and (cause is not e or e.filename is None):  # name the file the user asked for
            raise OSError(cause.errno, cause.strerror, str(target)) from e
        raise
    if sync:
        _fsync_dir(target.parent)


def _disk_error(error: BaseException) -> OSError | None:
    """A full or failing disk (``DISK_ERRORS``) behind ``error``: itself, or what it was raised from or while
    handling (``torch.save`` answers a file object's ENOSPC with a RuntimeError raised while handling it)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in DISK_ERRORS:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # a host name's dots are kept out of temporary names


def _writer() -> str:
    """Who writes a temporary file or folder: this host and process."""
    return f"{_host()}-{os.getpid()}"


def _remove_abandoned_temporaries(folder: Path, former: bool = False) -> None:
    """Remove the temporary files and folders in ``folder`` whose writer was killed mid-write: those of a
    process of this host that is gone, and those of another host (or, with ``former``, of an earlier
    version's folders, which name no writer) unchanged for ``ABANDONED_AFTER_S``. A temporary still being
    written (two writers of one target, a second process) is left alone."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    host, now = _host(), time.time()
    for entry in entries:
        named = TEMPORARY.fullmatch(entry.name)
        if named is not None and named["host"] == host:
            abandoned = not _alive(int(named["pid"]))
        elif named is not None or (former and FORMER_TEMPORARY.fullmatch(entry.name)):
            abandoned = now - _last_change(entry) > ABANDONED_AFTER_S
        else:
            continue
        if abandoned and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif abandoned:
            Path(entry.path).unlink(missing_ok=True)


def _last_change(entry: os.DirEntry) -> float:
    """When a temporary file, or a temporary folder or a file in it, last changed (a writer fills a folder
    file by file)."""
    try:
        times = [entry.stat(follow_symlinks=False).st_mtime]
        if entry.is_dir(follow_symlinks=False):
            times += [child.stat(follow_symlinks=False).st_mtime for child in os.scandir(entry.path)]
    except OSError:
        return time.time()  # changing as we look: not abandoned
    return max(times)


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
    _remove_abandoned_temporaries(target.parent, former=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{_writer()}.", suffix=".tmp"))
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
