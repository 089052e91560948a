"""Where the Triton kernels run: on a CUDA GPU, or on CPU tensors through the interpreter.

The launchers pick tile sizes, reduction splits and bf16 workarounds differently for the two, and
ask here. ``plan_for_gpu`` lets ``rtda_kernels.triton.aot`` run the launchers on meta tensors as
if they were on a GPU, so the kernels a GPU would get are compiled on a machine without one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_planned_multiprocessors: int | None = None  # set by plan_for_gpu()


def on_gpu(device: torch.device) -> bool:
    """Whether tensors on ``device`` run the compiled kernels (not the interpreter)."""
    return device.type == "cuda" or (device.type == "meta" and _planned_multiprocessors is not None)


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of the GPU behind ``device`` (sizes the reduction grids)."""
    if device.type == "meta" and _planned_multiprocessors is not None:
        return _planned_multiprocessors
    return torch.cuda.get_device_properties(device).multi_processor_count


@contextlib.contextmanager
def plan_for_gpu(multiprocessor_count: int) -> Iterator[None]:
    """Inside this block, meta tensors are planned for as if on a GPU with that many SMs."""
    global _planned_multiprocessors
    if multiprocessor_count < 1:
        raise ValueError(f"multiprocessor_count must be >= 1, got {multiprocessor_count}")
    previous, _planned_multiprocessors = _planned_multiprocessors, multiprocessor_count
    try:
        yield
    finally:
        _planned_multiprocessors = previous
