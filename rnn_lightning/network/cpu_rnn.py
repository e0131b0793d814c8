"""The ``rnn`` cell's time loop as a compiled float32 CPU kernel, registered as a PyTorch custom op.

Why it exists: on a CPU, PyTorch's own ``rnn_tanh`` kernel runs each step as a separate GEMM plus
tanh over the whole batch, which for the tutorial's shapes (80 steps, 1,024 rows, 64 units) is
latency-bound; the loop in ``csrc/cpu_kernels.cpp`` takes each block of rows through all steps with
its state in registers (docs/results.md has the side-by-side measurement through ``fit``).

Only the recurrence is custom: ``hs[t + 1] = tanh(gi[t] + bias + hs[t] @ w_hh^T)`` with the input
projections ``gi`` computed before it by an ordinary GEMM. The ops are ``torch.library`` custom ops
with autograd and fake (shape) kernels, so autograd, ``torch.compile`` and ``torch.export`` see them.
The source is built on first use with ``torch.utils.cpp_extension`` (the system's C++ compiler,
``-march=native``) into ``$RNN_LIGHTNING_NATIVE_DIR`` or torch's extension cache; without a compiler,
or with ``RNN_LIGHTNING_NATIVE=0``, ``available()`` is False and layers use PyTorch's kernels.
"""

import ctypes
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

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first call; None (with one warning) where they cannot be built or are off."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    try:
        if not (os.environ.get("CXX") or shutil.which("c++")):
            raise OSError("no C++ compiler found (set CXX)")
        from torch.utils import cpp_extension

        # -march=native code runs only on CPUs with the builder's features: the name carries them, so a
        # cache folder shared by different machines (a cluster's home) keeps one build per CPU kind.
        name = "rnnl_cpu_kernels_" + hashlib.sha256(cpu_signature().encode()).hexdigest()[:12]
        build_dir = os.environ.get(ENV_DIR)
        if build_dir:
            folder = Path(build_dir, name)
            folder.mkdir(parents=True, exist_ok=True)
        else:  # torch 2.13 has no public name for the folder load() picks when given none
            folder = Path(cpp_extension._get_build_directory(name, verbose=False))
        for attempt in range(2):  # a damaged build (a full disk, a killed link) is rebuilt once from scratch
            built = folder / f"{name}{cpp_extension.LIB_EXT}"
            if attempt == 0 and built.exists() and not (folder / "lock").exists() and not _whole_library(built):
                _clear(folder)  # load() would dlopen it, and mapping past a truncated file's end is SIGBUS
            try:
                path = cpp_extension.load(
                    name,
                    [str(SOURCE)],
                    extra_cflags=CFLAGS,
                    extra_ldflags=["-fopenmp"],
                    build_directory=str(folder),
                    is_python_module=False,
                )
                lib = ctypes.CDLL(path)
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
    lib.rnnl_tanh_forward.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, ctypes.c_int]
    lib.rnnl_tanh_backward.argtypes = [_ptr, _ptr, ctypes.c_int, _ptr, _ptr, _ptr, _i64, _i64, _i64, ctypes.c_int]
    return lib


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


@torch.library.custom_op("rnn_lightning::tanh_recurrence", mutates_args=(), device_types="cpu")
def tanh_recurrence(gi: Tensor, bias: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    """gi (T, B, H) float32, the input projections without bias; bias (H); w_hh (H, H) ->
    (the final state (B, H), every state hs (T + 1, B, H) with hs[0] = 0)."""
    T, B, H = gi.shape
    gi, bias, wt = gi.contiguous(), bias.contiguous(), w_hh.t().contiguous()
    hs = torch.empty(T + 1, B, H, dtype=torch.float32)
    if library() is None:  # e.g. an exported model loaded where nothing was compiled: the same loop in PyTorch ops
        hs[0] = 0
        for t in range(T):
            torch.tanh(torch.addmm(gi[t] + bias, hs[t], wt), out=hs[t + 1])
    else:
        library().rnnl_tanh_forward(
            gi.data_ptr(), bias.data_ptr(), wt.data_ptr(), hs.data_ptr(), T, B, H, torch.get_num_threads()
        )
    return hs[-1].clone(), hs


@tanh_recurrence.register_fake
def _(gi: Tensor, bias: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    T, B, H = gi.shape
    return gi.new_empty(B, H), gi.new_empty(T + 1, B, H)


@torch.library.custom_op("rnn_lightning::tanh_recurrence_backward", mutates_args=(), device_types="cpu")
def tanh_recurrence_backward(hs: Tensor, gout: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    """hs from ``tanh_recurrence``; gout the gradient of the outputs hs[1:] (T, B, H), or of the final state
    only (B, H) -> (dz (T, B, H), the gradient of each step's pre-activation; its sum (H), the bias gradient)."""
    T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    gout, w = gout.float().contiguous(), w_hh.float().contiguous()
    dz, db = torch.empty(T, B, H, dtype=torch.float32), torch.empty(H, dtype=torch.float32)
    if library() is None:  # the same recurrence in PyTorch ops: dz[t] = (dh[t] + dz[t + 1] @ w_hh) * (1 - hs[t + 1]^2)
        dh = gout if gout.dim() == 2 else gout[T - 1]
        for t in range(T - 1, -1, -1):
            dz[t] = dh * (1 - hs[t + 1] ** 2)
            if t:
                dh = dz[t] @ w if gout.dim() == 2 else gout[t - 1] + dz[t] @ w
        return dz, dz.sum((0, 1))
    library().rnnl_tanh_backward(
        hs.data_ptr(), gout.data_ptr(), int(gout.dim() == 2), w.data_ptr(), dz.data_ptr(), db.data_ptr(),
        T, B, H, torch.get_num_threads(),
    )  # fmt: skip
    return dz, db


@tanh_recurrence_backward.register_fake
def _(hs: Tensor, gout: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
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
    dz, db = tanh_recurrence_backward(hs, gout, w_hh)
    dw_hh = dz.flatten(0, 1).t() @ hs[:-1].flatten(0, 1)  # (H, H): one GEMM over all steps and rows
    return dz, db, dw_hh


tanh_recurrence.register_autograd(_backward, setup_context=_setup_context)


def tanh_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor, reverse: bool, last_only: bool) -> Tensor:
    """One direction of an ``rnn`` layer: x (T, B, in) -> outputs (T, B, H), or the final state (B, H) if
    ``last_only`` (for ``reverse``, the state after reading x[0]). The projections run as PyTorch GEMMs
    (in bfloat16 under bf16 autocast); the recurrence in float32."""
    if reverse:
        x = x.flip(0)
    gi = (x.flatten(0, 1) @ w_ih.t()).view(x.shape[0], x.shape[1], -1)  # (T, B, H): one GEMM for all steps
    last, hs = tanh_recurrence(gi.float(), bias.float(), w_hh.float())  # custom ops are outside autocast's lists
    if last_only:
        return last
    return hs[1:].flip(0) if reverse else hs[1:]
