"""Memory figures for the benchmarks, measured on the CPU (no CUDA allocator statistics there).

- ``peak_allocated_bytes(fn)``: the highest number of bytes the CPU allocator held *beyond what it
  held when fn started*, while fn ran. ``torch.profiler`` with ``profile_memory=True`` records
  every allocation (+bytes) and free (-bytes); replaying them in time order (a running sum) and
  taking the maximum gives the peak. Memory that fn returns counts (it is allocated while fn
  runs); allocations made outside the PyTorch CPU allocator (e.g. oneDNN scratch space) do not.
- ``saved_for_backward_bytes(fn)``: the bytes of the tensors autograd saves for backward while fn
  runs, via ``torch.autograd.graph.saved_tensors_hooks``; each storage is counted once (a layer's
  output saved by itself and by the next layer is one buffer). Zero under ``torch.no_grad``.

Timing runs under ``rtda.timing.timing_allocator()`` (freed memory kept), the one allocator
setting of every timing tool here; ``--bench-default-malloc`` measures without it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

MB = 2**20
_MEMORY_EVENT = "[memory]"


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by the CPU allocator while ``fn()`` runs, relative to its start (>= 0)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = _cpu_memory_events(prof)
    held = peak = 0
    for _, _, nbytes in sorted(events):
        held += nbytes
        peak = max(peak, held)
    return peak


def _cpu_memory_events(prof: profile) -> list[tuple[int, int, int]]:
    """(timestamp ns, record order, +/- bytes) of every CPU allocator event the profiler saw."""
    cpu = torch.autograd.DeviceType.CPU
    return [
        (event.start_ns(), order, event.nbytes())
        for order, event in enumerate(prof.profiler.kineto_results.events())
        if event.name() == _MEMORY_EVENT and event.device_type() == cpu
    ]


def saved_for_backward_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def to_mb(nbytes: int) -> float:
    """Bytes -> MiB, rounded to 0.1 (what tables and ``extra_info`` show)."""
    return round(nbytes / MB, 1)
