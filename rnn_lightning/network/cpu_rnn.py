"""The ``rnn`` cell's time loop as a compiled float32 CPU kernel: a PyTorch extension that registers its ops.

Why it exists: on a CPU, PyTorch's own ``rnn_tanh`` kernel runs each step as a separate GEMM plus
tanh over the whole batch, which for the tutorial's shapes (80 steps, 1,024 rows, 64 units) is
latency-bound; the loop in ``csrc/cpu_kernels.cpp`` takes each block of rows through all steps with
its state in registers (docs/results.md has the side-by-side measurement through ``fit``).

Only the recurrence is custom: ``hs[t + 1] = tanh(gi[t] + bias + hs[t] @ w_hh^T)`` with the input
projections ``gi`` computed before it by an ordinary GEMM. The C++ file defines the operators
``torch.ops.rnn_lightning.tanh_recurrence`` and ``tanh_recurrence_backward`` (``TORCH_LIBRARY``) and
their CPU kernels; this module builds it on first use with ``torch.utils.cpp_extension.load`` (the
system's C++ compiler, ``-march=native``), which loads it with ``torch.ops.load_library``, and registers
the autograd formula and the fake (shape) kernels, so autograd, ``torch.compile`` and ``torch.export``
see one op. Without a compiler, or with ``RNN_LIGHTNING_NATIVE=0``, ``available()`` is False and the
layers use PyTorch's kernels.

The build folder may hold what a killed build left, or a library this module did not build: a process
builds and loads under a lock of its own (``build_lock``), and loads only the library whose digest it
recorded when it built it (``RECORD_SUFFIX``); anything else in its place is rebuilt first.
"""

import functools
import hashlib
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from rnn_lightning.runtime import cpu_signature

try:
    import fcntl
except ImportError:  # Windows: no flock, and builds there go unguarded
    fcntl = None

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"
# -fno-trapping-math: without AVX-512's masks, GCC vectorizes the tanh's selects only if a float
# comparison may not trap (nothing here reads floating-point exception flags).
CFLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"]
ENV_SWITCH, ENV_DIR = "RNN_LIGHTNING_NATIVE", "RNN_LIGHTNING_NATIVE_DIR"
RECORD_SUFFIX = ".sha256"  # <library>.sha256 beside the library: the digest of the file as this module built it
BATON = "lock"  # cpp_extension's FileBaton in the build folder: while it exists, every other load() waits


def build_folder(name: str) -> Path:
    """Where the extension ``name`` is built: ``$RNN_LIGHTNING_NATIVE_DIR/<name>``, else
    ``$TORCH_EXTENSIONS_DIR/<name>``, else ``~/.cache/torch_extensions/<name>`` (torch's own default root)."""
    root = os.environ.get(ENV_DIR) or os.environ.get("TORCH_EXTENSIONS_DIR")
    folder = Path(root) if root else Path.home() / ".cache" / "torch_extensions"
    (folder / name).mkdir(parents=True, exist_ok=True)
    return folder / name


@functools.cache
def library() -> str | None:
    """The path of the compiled extension, built and loaded on first call; None (with one warning) where it
    cannot be built or is switched off. A process loads one build: a second, from another folder, would
    register the ops again, which PyTorch refuses by ending the process."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    try:
        if not shutil.which(os.environ.get("CXX") or "c++"):
            raise OSError("no C++ compiler found (set CXX)")
        from torch.utils import cpp_extension

        # -march=native code runs only on CPUs with the builder's features: the name carries them, so a
        # cache folder shared by different machines (a cluster's home) keeps one build per CPU kind.
        name = "rnnl_cpu_kernels_" + hashlib.sha256(cpu_signature().encode()).hexdigest()[:12]
        folder = build_folder(name)
        built = folder / f"{name}{cpp_extension.LIB_EXT}"
        if os.path.realpath(built) in torch.ops.loaded_libraries:  # loaded by an earlier call: nothing to do
            return str(built)
        with build_lock(folder):
            # Its builder held this lock, so a baton found now is a killed build's, which nobody will remove.
            (folder / BATON).unlink(missing_ok=True)
            if built.exists() and not _as_recorded(built):
                # load() would dlopen whatever is there (ninja only compares times): another program's library,
                # one cut short (mapping past a file's end is SIGBUS), or one built without a record
                _clear(folder)
            for attempt in range(2):  # a damaged build (a full disk, a killed link) is rebuilt once from scratch
                try:
                    path = cpp_extension.load(
                        name,
                        [str(SOURCE)],
                        extra_cflags=CFLAGS,
                        extra_ldflags=["-fopenmp"],
                        build_directory=str(folder),
                        is_python_module=False,  # torch.ops.load_library: the ops register themselves
                    )
                    break
                except OSError:  # the dynamic loader refused the built file: build it again, once
                    if attempt:
                        raise
                    _clear(folder)
            _record(Path(path))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        warnings.warn(
            f"the compiled rnn loop is unavailable ({' '.join(str(err).split())[-200:]}); using PyTorch's rnn kernel",
            stacklevel=2,
        )
        return None
    _register_python_kernels()
    return path


@contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Hold ``<folder>.lock`` (beside the folder, which ``_clear`` empties) while building and loading: an
    ``flock``, which the kernel releases when its holder ends, by ``kill -9`` too. A second process waits
    here for the first to finish, then loads what it built."""
    if fcntl is None:
        yield
        return
    with open(folder.with_name(f"{folder.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + RECORD_SUFFIX)


def _as_recorded(library: Path) -> bool:
    """Whether ``library`` is, byte for byte, the file this module recorded when it built it."""
    try:
        return _record_path(library).read_text().strip() == _digest(library)
    except OSError:
        return False


def _record(library: Path) -> None:
    """Write the digest of the library just built and loaded beside it (a record cut short by a kill
    matches nothing: the next process builds again)."""
    _record_path(library).write_text(_digest(library) + "\n")


def _clear(folder: Path) -> None:
    """Empty a build folder, so that load() compiles and links everything again."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the compiled loop is built (building it on first call); a constant to torch.compile and export."""
    return library() is not None


@functools.cache  # once per process, as the ops themselves: a later library() call (another folder) reuses them
def _register_python_kernels() -> None:
    """The ops' fake (shape) kernels and the autograd formula of ``tanh_recurrence``."""
    torch.library.register_fake("rnn_lightning::tanh_recurrence", _tanh_recurrence_fake)
    torch.library.register_fake("rnn_lightning::tanh_recurrence_backward", _tanh_recurrence_backward_fake)
    torch.library.register_autograd("rnn_lightning::tanh_recurrence", _backward, setup_context=_setup_context)


def _tanh_recurrence_fake(gi: Tensor, bias: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    T, B, H = gi.shape
    return gi.new_empty(B, H), gi.new_empty(T + 1, B, H)


def _tanh_recurrence_backward_fake(hs: Tensor, gout: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    return hs.new_empty(hs.shape[0] - 1, hs.shape[1], hs.shape[2]), hs.new_empty(hs.shape[2])


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[2], output[1])  # w_hh, hs
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no (T + 1, B, H) zeros


def _backward(ctx, g_last: Tensor | None, g_hs: Tensor | None):
    w_hh, hs = ctx.saved_tensors
    if g_hs is None:  # only the final state was used (the last layer under ``last`` pooling)
        gout = g_last if g_last is not None else hs.new_zeros(hs.shape[1:])
    elif g_last is None:
        gout = g_hs[1:]
    else:  # both used: the final state's gradient joins the last step's
        gout = g_hs[1:].clone()
        gout[-1] += g_last
    dz, db = torch.ops.rnn_lightning.tanh_recurrence_backward(hs, gout.float(), w_hh)
    dw_hh = dz.flatten(0, 1).t() @ hs[:-1].flatten(0, 1)  # (H, H): one GEMM over all steps and rows
    return dz, db, dw_hh


def tanh_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor, reverse: bool, last_only: bool) -> Tensor:
    """One direction of an ``rnn`` layer through the compiled loop (``available()`` must be True): x (T, B, in)
    -> outputs (T, B, H), or the final state (B, H) if ``last_only`` (for ``reverse``, the state after reading
    x[0]). The projections run as PyTorch GEMMs (in bfloat16 under bf16 autocast); the recurrence in float32."""
    if reverse:
        x = x.flip(0)
    gi = (x.flatten(0, 1) @ w_ih.t()).view(x.shape[0], x.shape[1], -1)  # (T, B, H): one GEMM for all steps
    # custom ops are outside autocast's lists: float32 in, float32 out
    last, hs = torch.ops.rnn_lightning.tanh_recurrence(gi.float(), bias.float(), w_hh.float())
    if last_only:
        return last
    return hs[1:].flip(0) if reverse else hs[1:]
