"""Process-wide CPU settings that make training measurably faster (see BENCHMARKS.md)."""

import ctypes
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def tune_cpu_runtime(training: bool = True) -> None:
    """Flush denormal floats to zero, and when ``training``, keep freed large buffers for reuse.

    - glibc serves allocations above 32 MB (e.g. an 80 x 1024 x 100 float activation) with a fresh
      mmap each time, so every training step page-faults them in again; raising the thresholds lets
      the heap reuse them (a measurable share of a base-model step on a CPU; BENCHMARKS.md). Not
      outside training: a heap that is never trimmed grows with fragmentation over a long
      ``predict`` (to 5 GB over 750,000 reviews, against a flat ~0.6 GB without it).
    - Vanishing gradients through 80 recurrent steps reach denormal range, where CPU arithmetic is
      many times slower; flushing them to zero changes nothing a float32 model can resolve.
    """
    torch.set_flush_denormal(True)
    if training and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:  # not glibc (e.g. musl): nothing to tune
            return
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31)
