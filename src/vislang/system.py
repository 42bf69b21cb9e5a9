"""Process-wide settings that make a vislang process fast, applied once at start (no torch import here:
the CLI calls it before it knows which command runs)."""

from __future__ import annotations

import os
import platform

MALLOC_ENV = "VISLANG_MALLOC"
_malloc_state: str | None = None


def tune_malloc() -> str:
    """Keep glibc from handing tensor memory back to the kernel after every step; returns what was done.

    glibc's malloc serves blocks above a (dynamic) threshold with a fresh ``mmap`` and unmaps them on
    free, and trims the heap top when a few MB are free. A training step allocates and frees the same
    few-MB activations and gradients every time, so on the CPU each step page-faults them in again, and
    the kernel zeroes every page: measured here, a CIFAR MLP step takes ~41 ms by default and ~27 ms
    with the threshold at its 32 MiB maximum and trimming at 1 GiB (benchmarks/image_throughput.py).
    The arithmetic is unchanged, so are results. PyTorch's CPU tuning guides get the same by preloading
    jemalloc / tcmalloc; mallopt does it from inside the process. The heap keeps its peak size until
    the process ends, which a training process would reach again at the next step anyway.

    Once per process; ``VISLANG_MALLOC=default`` leaves the allocator alone. ``"tuned"``, ``"default"``
    (opted out) or ``"unavailable"`` (not glibc: macOS, Windows, musl).
    """
    global _malloc_state
    if _malloc_state is None:
        _malloc_state = "unavailable"
        if os.environ.get(MALLOC_ENV, "").lower() == "default":
            _malloc_state = "default"
        elif platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            import ctypes

            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
            except (OSError, AttributeError):
                mallopt = None
            m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
            # 32 MiB is the largest threshold glibc accepts on 64-bit (mallopt returns 0 above it)
            if mallopt is not None and mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 1 << 30):
                _malloc_state = "tuned"
    return _malloc_state
