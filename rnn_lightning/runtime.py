"""Process-wide CPU settings: allocator and denormal handling for training and prediction, and the CPU's features."""

import ctypes
import functools
import platform
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def tune_cpu_runtime(training: bool = True) -> None:
    """Flush denormal floats to zero, and set how glibc serves large buffers: for ``training``, keep them.

    - glibc serves allocations above 32 MB (e.g. an 80 x 1024 x 100 float activation) with a fresh
      mmap each time, so every training step page-faults them in again; raising the thresholds lets
      the heap reuse them.
    - Outside training the threshold is fixed at 4 MB instead: glibc's own threshold rises to the
      size of the largest buffer freed, and then a long ``predict`` carves each batch's buffers out of
      a heap fragmented by the small results kept between batches, which grows without bound; with
      the fixed threshold the process stays flat.
    - Vanishing gradients through 80 recurrent steps reach denormal range, where CPU arithmetic is
      many times slower; flushing them to zero changes nothing a float32 model can resolve.
    """
    torch.set_flush_denormal(True)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    if training:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31)
    else:
        libc.mallopt(_M_MMAP_THRESHOLD, 4 << 20)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def cpu_signature() -> str:
    """The architecture and feature flags: what code compiled with -march=native depends on."""
    return platform.machine() + " " + " ".join(sorted(cpu_flags()))


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 products natively (AVX512-BF16 or AMX), where bf16-mixed trains
    the base model faster than float32 at the same accuracy; elsewhere bfloat16 is emulated."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
