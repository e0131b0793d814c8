"""Building the compiled loop (``cpu_rnn.library``) from a folder a killed build or another program left:
a stale cpp_extension lock does not make every later build wait for ever, and a library this module did
not record is rebuilt before it is loaded."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from rnn_lightning.network import cpu_rnn
from tests.helpers import ROOT, SUBPROCESS_ENV

FOREIGN = Path(torch._C.__file__)  # a whole shared library that is not the compiled loop


@pytest.fixture
def fake_build(tmp_path, monkeypatch) -> list[list[str]]:
    """``cpp_extension.load`` replaced by what it does to the build folder, as ninja does it: a missing library is
    built, an existing one kept, and a FileBaton left in the folder is waited on (here: an error). Returns the
    folder's contents at each call."""
    calls: list[list[str]] = []

    def load(name, sources, build_directory, **kwargs):
        folder = Path(build_directory)
        if (folder / cpu_rnn.BATON).exists():
            raise RuntimeError("cpp_extension would wait for ever on the lock file")
        calls.append(sorted(p.name for p in folder.iterdir()))
        library = folder / f"{name}{cpp_extension.LIB_EXT}"
        if not library.exists():
            library.write_bytes(b"the compiled loop")
        return str(library)

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(cpu_rnn, "_register_python_kernels", lambda: None)  # no ops in a fake library
    monkeypatch.setenv(cpu_rnn.ENV_DIR, str(tmp_path))
    cpu_rnn.library.cache_clear()
    yield calls
    cpu_rnn.library.cache_clear()  # the next user builds it again from the session's folder


def build_again() -> Path:
    cpu_rnn.library.cache_clear()
    return Path(cpu_rnn.library())


def test_a_lock_file_a_killed_build_left_is_removed_before_building(fake_build):
    library = build_again()
    (library.parent / cpu_rnn.BATON).touch()  # what a build killed inside cpp_extension.load leaves
    assert build_again() == library and not (library.parent / cpu_rnn.BATON).exists()


def test_a_library_this_module_did_not_build_is_rebuilt_before_it_is_loaded(fake_build):
    library = build_again()
    assert fake_build[-1] == [] and cpu_rnn._as_recorded(library)
    library.write_bytes(FOREIGN.read_bytes())  # another whole library, newer than the sources: ninja keeps it
    assert build_again() == library
    assert fake_build[-1] == []  # the folder was emptied before load() could dlopen the foreign file
    assert library.read_bytes() == b"the compiled loop" and cpu_rnn._as_recorded(library)


def test_a_library_built_and_recorded_is_loaded_as_it_is(fake_build):
    library = build_again()
    assert build_again() == library
    assert library.name in fake_build[-1]  # kept, not rebuilt


LOAD = "from rnn_lightning.network import cpu_rnn; print('LOADED', cpu_rnn.library() is not None)"


@pytest.mark.slow
def test_a_build_killed_with_sigkill_leaves_a_lock_the_next_build_gets_past(tmp_path):
    if cpu_rnn.library() is None:
        pytest.skip("no C++ compiler")
    env = {**SUBPROCESS_ENV, cpu_rnn.ENV_DIR: str(tmp_path)}
    first = subprocess.Popen([sys.executable, "-c", LOAD], cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while not list(tmp_path.glob(f"*/{cpu_rnn.BATON}")) and first.poll() is None:
            time.sleep(0.05)  # until cpp_extension holds its lock: the compiler is running
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the process and its compilers, as kill -9 of a job does
        first.wait()
    assert len(list(tmp_path.glob(f"*/{cpu_rnn.BATON}"))) == 1, "the build ended before it could be killed"
    second = subprocess.run([sys.executable, "-c", LOAD], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert second.returncode == 0 and "LOADED True" in second.stdout, second.stderr[-2000:]
    assert not list(tmp_path.glob(f"*/{cpu_rnn.BATON}"))


LOAD_OPS = (
    "import torch; from rnn_lightning.network import cpu_rnn; cpu_rnn.library(); "
    "print('OPS', hasattr(torch.ops.rnn_lightning, 'tanh_recurrence'))"
)


@pytest.mark.slow
def test_a_foreign_library_in_place_of_the_compiled_loop_is_rebuilt(tmp_path):
    if cpu_rnn.library() is None:
        pytest.skip("no C++ compiler")
    built = Path(cpu_rnn.library())
    subprocess.run(["cp", "-a", str(built.parent), str(tmp_path)], check=True)  # the session's build, times kept
    library = tmp_path / built.parent.name / built.name
    library.write_bytes(FOREIGN.read_bytes())
    env = {**SUBPROCESS_ENV, cpu_rnn.ENV_DIR: str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", LOAD_OPS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "OPS True" in proc.stdout, proc.stderr[-2000:]
    assert library.read_bytes() != FOREIGN.read_bytes() and cpu_rnn._as_recorded(library)
