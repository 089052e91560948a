"""Roofline bounds of the fused depthwise-separable layers on this machine.

A layer cannot run faster than the time to move its unavoidable bytes at the measured memory
bandwidth, nor faster than its FLOPs at the measured matmul throughput; the larger of the two is
its bound, and ``bound / measured`` says how close a kernel comes to it (100 % = at the roof).

Unavoidable traffic (float32, each tensor once): forward reads x and writes y; forward+backward
adds reading grad_y, x and y (the backward recomputes the depthwise output and takes the
activation mask from y's sign) and writing grad_x. Weights are a few KB and not counted. FLOPs
are 2 x multiply-adds (as ``torch.utils.flop_counter``): the forward is
``2 N Ho Wo C_in (k^2 + C_out)``; the backward costs twice the forward plus the depthwise
recomputation.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from bench.subjects import KERNEL, LIGHT_THIN_LAYERS, PADDING, STRIDE
from rtda.timing import timing_allocator

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Machine:
    """Measured roofs: copy bandwidth (bytes/s) and float32 matmul throughput (FLOP/s)."""

    bandwidth: float
    flops: float


def _median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_machine(copy_mib: int = 256, matmul_n: int = 2048, repeats: int = 5) -> Machine:
    """Copy bandwidth of a ``copy_mib`` MiB float32 tensor (read + write) and the throughput of
    an ``n x n`` float32 matmul, medians of ``repeats`` runs with torch's threads, under the
    allocator setting of every timing tool here (``timing_allocator``)."""
    timing_allocator()
    source = torch.rand(copy_mib * 2**20 // FLOAT_BYTES)
    target = torch.empty_like(source)
    seconds = _median_seconds(lambda: target.copy_(source), repeats)
    bandwidth = 2 * source.numel() * FLOAT_BYTES / seconds
    a, b = torch.rand(matmul_n, matmul_n), torch.rand(matmul_n, matmul_n)
    seconds = _median_seconds(lambda: torch.mm(a, b), repeats)
    return Machine(bandwidth, 2 * matmul_n**3 / seconds)


@dataclass(frozen=True)
class LayerWork:
    """The unavoidable bytes and the FLOPs of one fused layer pass."""

    bytes: float
    flops: float

    def bound_seconds(self, machine: Machine) -> float:
        return max(self.bytes / machine.bandwidth, self.flops / machine.flops)

    def limited_by(self, machine: Machine) -> str:
        memory_bound = self.bytes / machine.bandwidth >= self.flops / machine.flops
        return "memory" if memory_bound else "compute"

    def __add__(self, other: LayerWork) -> LayerWork:
        return LayerWork(self.bytes + other.bytes, self.flops + other.flops)


def layer_work(shape: tuple[int, int, int, int], c_out: int, pass_: str) -> LayerWork:
    """Work of one k4 s2 p1 fused layer on an N x C_in x H x W input, ``fwd`` or ``fwd+bwd``."""
    n, c_in, height, width = shape
    out_h = (height + 2 * PADDING - KERNEL) // STRIDE + 1
    out_w = (width + 2 * PADDING - KERNEL) // STRIDE + 1
    x_bytes = n * c_in * height * width * FLOAT_BYTES
    y_bytes = n * c_out * out_h * out_w * FLOAT_BYTES
    depthwise = 2 * n * out_h * out_w * c_in * KERNEL * KERNEL
    pointwise = 2 * n * out_h * out_w * c_in * c_out
    if pass_ == "fwd":
        return LayerWork(x_bytes + y_bytes, depthwise + pointwise)
    if pass_ == "fwd+bwd":
        moved = (x_bytes + y_bytes) + (y_bytes + x_bytes + y_bytes + x_bytes)
        return LayerWork(moved, 3 * (depthwise + pointwise) + depthwise)
    raise ValueError(f"pass_ must be 'fwd' or 'fwd+bwd', got {pass_!r}")


def subject_work(subject: str, shape: tuple[int, int, int, int], pass_: str) -> LayerWork | None:
    """Work of a ``bench.subjects`` dwsep subject (``dwsep_conv2d op``: the first FCD-Light&Thin
    layer; ``light_thin stack``: all three), or None for other subjects."""
    layers = {"dwsep_conv2d op": LIGHT_THIN_LAYERS[:1], "light_thin stack": LIGHT_THIN_LAYERS}
    if subject not in layers:
        return None
    total = LayerWork(0.0, 0.0)
    n, _, height, width = shape
    for c_in, c_out, _ in layers[subject]:
        total = total + layer_work((n, c_in, height, width), c_out, pass_)
        height = (height + 2 * PADDING - KERNEL) // STRIDE + 1
        width = (width + 2 * PADDING - KERNEL) // STRIDE + 1
    return total
