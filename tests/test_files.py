"""Atomic writes (``files.py``): temporaries a killed writer left are removed at the next write into their
folder, and a disk that fills while ``torch.save`` writes is one line that keeps the file written before."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnn_lightning import files
from tests.helpers import ROOT, SUBPROCESS_ENV, ckpt_dir, one_line_error

HOUR = 3600


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temporary(folder: Path, target: str, host: str, pid: int, is_folder: bool = False) -> Path:
    """A temporary as ``atomic_file``/``atomic_folder`` name theirs, left by ``pid`` of ``host``."""
    path = folder / f".{target}.{host}-{pid}.abc123_x.tmp"
    if is_folder:
        path.mkdir()
        (path / "part.npy").write_bytes(b"half")
    else:
        path.write_bytes(b"half")
    return path


def hours_old(path: Path, hours: float) -> Path:
    then = time.time() - hours * HOUR
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(p, (then, then))
    return path


def test_a_write_removes_the_temporaries_of_killed_writers_in_its_folder(tmp_path):
    host = files._host()
    killed = [
        temporary(tmp_path, "last.ckpt", host, dead_pid()),
        temporary(tmp_path, "out.csv", host, dead_pid()),  # another target in the same folder
        temporary(tmp_path, "0123abcd", host, dead_pid(), is_folder=True),  # a token cache folder's
    ]
    writing = temporary(tmp_path, "best.ckpt", host, os.getpid())  # a live writer's: kept
    with files.atomic_file(tmp_path / "meta.json") as f:
        f.write("{}")
    assert [p.exists() for p in killed] == [False, False, False]
    assert writing.exists() and (tmp_path / "meta.json").read_text() == "{}"


def test_temporaries_of_another_host_go_once_unchanged_for_an_hour(tmp_path):
    fresh = temporary(tmp_path, "last.ckpt", "other-host", 123)
    old = hours_old(temporary(tmp_path, "out.csv", "other-host", 123), 2)
    old_folder = temporary(tmp_path, "0123abcd", "other-host", 123, is_folder=True)
    hours_old(old_folder, 2)
    busy_folder = temporary(tmp_path, "4567cdef", "other-host", 123, is_folder=True)
    hours_old(busy_folder, 2)
    (busy_folder / "ids.npy").write_bytes(b"being written")  # a file in it changed just now
    with files.atomic_folder(tmp_path / "cache") as tmp:
        (tmp / "x").write_text("x")
    assert fresh.exists() and busy_folder.exists()
    assert not old.exists() and not old_folder.exists()


def test_token_cache_folders_of_earlier_versions_go_once_unchanged_for_an_hour(tmp_path):
    old, fresh = tmp_path / ".tmp-ab12cd34", tmp_path / ".tmp-ef56gh78"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "train_ids.npy").write_bytes(b"half")
    hours_old(old, 2)
    users = tmp_path / ".tmp-mine"  # not a name atomic_folder made: not ours to remove
    users.mkdir()
    hours_old(users, 2)
    with files.atomic_folder(tmp_path / "0123abcd") as tmp:
        (tmp / "meta.json").write_text("{}")
    assert not old.exists() and fresh.exists() and users.exists()
    assert (tmp_path / "0123abcd" / "meta.json").exists()


WRITERS = {  # a write that stops half-way: a folder with one file of two, a file with half its text
    "atomic_folder": "with files.atomic_folder(target) as out:\n    (out / 'ids.npy').write_bytes(b'half')",
    "atomic_file": "with files.atomic_file(target) as out:\n    out.write('half'); out.flush()",
}


@pytest.mark.slow
@pytest.mark.parametrize("how", sorted(WRITERS))
def test_a_writer_killed_mid_write_leaves_a_temporary_the_next_write_removes(tmp_path, how):
    code = "\n".join([
        "import sys, time", "from pathlib import Path", "from rnn_lightning import files",
        "target = Path(sys.argv[1])", WRITERS[how], "    print('WRITING', flush=True)", "    time.sleep(600)",
    ])  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "target")], cwd=ROOT, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "WRITING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".target.") and left[0].endswith(".tmp")
    with files.atomic_file(tmp_path / "another") as f:
        f.write("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["another"]


class FullDisk:
    """A file whose disk fills after ``room`` bytes: writes past it raise ENOSPC, as a real full disk does."""

    def __init__(self, f, room: int = 4096) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def test_a_disk_that_fills_during_torch_save_names_the_file_and_keeps_the_one_before(tmp_path):
    target = tmp_path / "last.ckpt"
    torch.save({"w": torch.zeros(3)}, target)
    before = target.read_bytes()
    with pytest.raises(OSError) as raised:
        with files.atomic_file(target, "wb", sync=True) as f:
            torch.save({"w": torch.zeros(100_000)}, FullDisk(f))  # torch answers with a RuntimeError
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_disk_that_fills_while_a_fit_checkpoints_is_one_line(cli, tiny_args, tmp_path, monkeypatch):
    cli("fit", *tiny_args, "--trainer.max_epochs", "1")
    before = {p.name: p.read_bytes() for p in ckpt_dir(tmp_path).iterdir()}
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **kw: real_save(obj, FullDisk(f), *a, **kw))
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    result = cli("fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs", "2", check=False)
    monkeypatch.setattr(torch, "save", real_save)
    line = one_line_error(result)
    assert line.startswith(f"error: No space left on device writing {ckpt_dir(tmp_path)}{os.sep}")
    assert "files written before are intact" in line
    assert {p.name: p.read_bytes() for p in ckpt_dir(tmp_path).iterdir()} == before  # whole, and nothing else
