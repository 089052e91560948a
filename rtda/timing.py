"""Timing shared by every tool that measures speed here (``rtda.complexity``, ``pytest bench``
and ``bench.report``, ``bench.gpu`` on the CPU, ``bench.data_loading``, ``bench.roofline``): one
allocator setting, printed beside the figures, and one interleaved timer."""

from __future__ import annotations

import ctypes
import statistics
import sys
import time
from collections.abc import Callable

import torch

# mallopt parameters, from glibc's <malloc.h>; 1 GiB: every tensor the benchmarks make fits.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_RETAIN_BYTES = 2**30
RETAINED_MALLOC = ("glibc malloc keeps freed memory (mallopt M_MMAP_THRESHOLD = M_TRIM_THRESHOLD "
                   "= 1 GiB)")
DEFAULT_MALLOC = "glibc malloc defaults (--default-malloc)"
_allocator: str | None = None


def retain_freed_memory() -> bool:
    """Make glibc malloc reuse freed blocks instead of mapping and unmapping them per tensor
    (``mallopt`` of M_MMAP_THRESHOLD and M_TRIM_THRESHOLD). False where that is not possible.

    Why: by default glibc serves big blocks with fresh ``mmap``s that ``free`` returns to the OS,
    so every pass pays page faults on its new tensors, in an amount that depends on what ran
    before (glibc's threshold adapts): the same eager forward ran more than twice as slow before
    any backward had run as after. It favours whoever allocates most (usually eager): measured
    for fcd_light_thin at batch 1, the fused speed-ups were 3.43x / 3.02x (fwd / fwd+bwd) under
    the defaults and 2.19x / 2.36x with freed memory kept."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _RETAIN_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _RETAIN_BYTES)
    )


def timing_allocator(default_malloc: bool = False) -> str:
    """Apply the allocator setting of every timing tool here (freed memory kept, unless
    ``default_malloc``) and return the line that says which one the figures were measured under.
    Called once per process, before anything is timed; later calls return the first answer
    (glibc cannot be put back)."""
    global _allocator
    if _allocator is None:
        if default_malloc:
            _allocator = DEFAULT_MALLOC
        elif retain_freed_memory():
            _allocator = RETAINED_MALLOC
        else:
            _allocator = f"the C library's malloc defaults (mallopt unavailable on {sys.platform})"
    return _allocator


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable[[], object]], repeats: int,
                     device: torch.device) -> dict[str, float]:
    """Median milliseconds of each step over ``repeats`` runs after one warm-up each, the steps
    taking turns so that the machine's noise is shared."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    _synchronize(device)
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            _synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


