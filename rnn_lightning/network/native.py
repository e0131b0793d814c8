"""Compiled float32 CPU kernels (``csrc/cpu_kernels.cpp``): the ``rnn`` cell's time loop, used by
``bptt.py``, and the masked embedding gather and its gradient, used by ``masked.py``.

The source is compiled on first use with the system's C++ compiler (``$CXX``, else ``c++``), for this
machine's instruction set (``-march=native``), into a cache directory (``$RNN_LIGHTNING_NATIVE_DIR``,
else ``~/.cache/rnn_lightning/kernels``), keyed by the source, the
compiler, the flags and the CPU, and loaded through ctypes. It takes about a second and needs no
PyTorch headers. Without a compiler, or with ``RNN_LIGHTNING_NATIVE=0``, the same functions run as
PyTorch ops instead (one warning says so); tests check both against the ``autograd`` reference.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from rnn_lightning.files import CACHE_ROOT
from rnn_lightning.runtime import cpu_signature

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"
# -fno-trapping-math: without AVX-512's masks, GCC vectorizes the tanh's selects only if a float
# comparison may not trap (nothing here reads floating-point exception flags).
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
ENV_SWITCH, ENV_DIR = "RNN_LIGHTNING_NATIVE", "RNN_LIGHTNING_NATIVE_DIR"

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


def _cache_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or Path(CACHE_ROOT).expanduser() / "kernels")


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(FLAGS).encode(), cpu_signature().encode()]))
    target = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: processes starting together (DDP) never load a
    # half-written file. Not files.atomic_file: its clean-up of stale temporaries would delete a
    # concurrent builder's.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], check=True, capture_output=True, text=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled loop, built on first call; None (with one warning) where it cannot be built or is switched off."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    try:
        if compiler is None:
            raise OSError("no C++ compiler found (set CXX)")
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = err.stderr.strip().splitlines()[-1] if isinstance(err, subprocess.CalledProcessError) and err.stderr else err
        warnings.warn(
            f"the compiled CPU kernels are unavailable ({detail}); using PyTorch's ops, which are slower",
            stacklevel=2,
        )
        return None
    lib.rnnl_tanh_forward.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, ctypes.c_int]
    lib.rnnl_tanh_backward.argtypes = [_ptr, _ptr, ctypes.c_int, _ptr, _ptr, _ptr, _i64, _i64, _i64, ctypes.c_int]
    lib.rnnl_embedding_forward.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, ctypes.c_int]
    lib.rnnl_embedding_forward.restype = _i64
    lib.rnnl_embedding_backward.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, ctypes.c_int]
    return lib


def usable(x: Tensor) -> bool:
    """Whether the compiled kernels can run on x: float32 on a CPU, not traced (torch.export and torch.compile
    see PyTorch's ops instead: they cannot look into a C function), with the library built."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling() and library() is not None
    )


def _ptr_of(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def tanh_forward(gi: Tensor, bias: Tensor, w_hh: Tensor) -> Tensor:
    """gi (T, B, H) float32: the input projections without bias; bias (H): both biases -> states
    (T + 1, B, H), hs[0] = 0, hs[t + 1] = tanh(gi[t] + bias + hs[t] @ w_hh^T)."""
    T, B, H = gi.shape
    gi, bias, wt = gi.contiguous(), bias.detach().contiguous(), w_hh.detach().t().contiguous()
    hs = torch.empty(T + 1, B, H, dtype=torch.float32)
    library().rnnl_tanh_forward(gi.data_ptr(), bias.data_ptr(), wt.data_ptr(), hs.data_ptr(), T, B, H, torch.get_num_threads())
    return hs


def tanh_backward(hs: Tensor, gout: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    """hs from ``tanh_forward``; gout: gradient of the outputs hs[1:] (T, B, H), or of the last state
    only (B, H) -> (dz (T, B, H), the gradient of each step's pre-activation; its sum (H), the bias gradient)."""
    T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    gout, w = gout.float().contiguous(), w_hh.detach().float().contiguous()
    dz, db = torch.empty(T, B, H, dtype=torch.float32), torch.empty(H, dtype=torch.float32)
    library().rnnl_tanh_backward(
        hs.data_ptr(), gout.data_ptr(), int(gout.dim() == 2), w.data_ptr(), dz.data_ptr(), db.data_ptr(),
        T, B, H, torch.get_num_threads(),
    )  # fmt: skip
    return dz, db


def embedding_forward(tokens: Tensor, weight: Tensor, mask: Tensor | None) -> Tensor:
    """tokens (T, B) -> weight[tokens] * mask (T, B, E), mask (B, E) for every step, or None."""
    T, B = tokens.shape
    V, E = weight.shape
    tokens, weight = tokens.to(torch.int64).contiguous(), weight.detach().contiguous()
    mask = None if mask is None else mask.contiguous()
    out = torch.empty(T, B, E, dtype=torch.float32)
    bad = library().rnnl_embedding_forward(
        tokens.data_ptr(), weight.data_ptr(), _ptr_of(mask), out.data_ptr(), T * B, B, V, E, torch.get_num_threads()
    )
    if bad:
        raise IndexError(f"{bad} token ids outside the embedding's {V} rows (expected 0 <= id < {V})")
    return out


def embedding_backward(tokens: Tensor, grad: Tensor, mask: Tensor | None, num_weights: int, padding_idx: int) -> Tensor:
    """The weight's gradient of ``embedding_forward``: (num_weights, E), zero in the ``padding_idx`` row."""
    T, B = tokens.shape
    E = grad.shape[-1]
    tokens, grad = tokens.to(torch.int64).contiguous(), grad.float().contiguous()
    mask = None if mask is None else mask.contiguous()
    out = torch.empty(num_weights, E, dtype=torch.float32)
    library().rnnl_embedding_backward(
        tokens.data_ptr(), grad.data_ptr(), _ptr_of(mask), out.data_ptr(), T * B, B, num_weights, E, padding_idx,
        torch.get_num_threads(),
    )  # fmt: skip
    return out
