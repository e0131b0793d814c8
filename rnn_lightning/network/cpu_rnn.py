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
"""

import functools
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor

from rnn_lightning.runtime import cpu_signature

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"
# -fno-trapping-math: without AVX-512's masks, GCC vectorizes the tanh's selects only if a float
# comparison may not trap (nothing here reads floating-point exception flags).
CFLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"]
ENV_SWITCH, ENV_DIR = "RNN_LIGHTNING_NATIVE", "RNN_LIGHTNING_NATIVE_DIR"


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
        for attempt in range(2):  # a damaged build (a full disk, a killed link) is rebuilt once from scratch
            if attempt == 0 and built.exists() and not (folder / "lock").exists() and not _whole_library(built):
                _clear(folder)  # load() would dlopen it, and mapping past a truncated file's end is SIGBUS
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
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        warnings.warn(
            f"the compiled rnn loop is unavailable ({' '.join(str(err).split())[-200:]}); using PyTorch's rnn kernel",
            stacklevel=2,
        )
        return None
    _register_python_kernels()
    return path


def _whole_library(path: Path) -> bool:
    """Whether the shared library at ``path`` holds every byte its ELF headers point to (False for a file
    cut short); other formats than ELF (macOS) are taken as they are."""
    with open(path, "rb") as f:
        head = f.read(64)
        if not sys.platform.startswith("linux"):
            return bool(head)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only (what x86-64/arm64 build)
            return False
        order = "<" if head[5] == 1 else ">"
        phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54)
        size = os.fstat(f.fileno()).st_size
        end = max(phoff + phnum * phentsize, shoff + shnum * shentsize)
        if end > size:
            return False
        f.seek(phoff)
        table = f.read(phnum * phentsize)
    if len(table) < phnum * phentsize:
        return False
    for i in range(phnum):  # each segment's p_offset and p_filesz, at bytes 8 and 32 of its entry
        (offset,) = struct.unpack_from(order + "Q", table, i * phentsize + 8)
        (filesz,) = struct.unpack_from(order + "Q", table, i * phentsize + 32)
        end = max(end, offset + filesz)
    return end <= size


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
