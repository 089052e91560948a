"""The numerics shared by the Triton adversarial-loss kernels (rtda_kernels/triton/
adversarial_loss.py), the counterpart of csrc/include/rtda/adversarial_math.h: PyTorch's bilinear
source coordinate, the first output index of a cell, the stable binary cross-entropy with its
derivative, the rounding to the output dtype, and the host-side float32 rounding of the scales and
the bfloat16 rounding flag that the kernels rely on.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from rtda_kernels.triton.target import on_gpu


@triton.jit
def tap_src(dst, scale):
    """PyTorch's source coordinate of output index ``dst`` (float32, clamped at 0)."""
    src = scale * (dst.to(tl.float32) + 0.5) - 0.5
    return tl.maximum(src, 0.0)


@triton.jit
def cell_start(cell, in_size, out_size, scale, inv):
    """First output index whose tap i0 is >= ``cell`` (0 for cell 0, out_size for cell in_size).

    Estimate by inverting the tap formula, then count exactly: start = base + #{k < 8 :
    i0(base + k) < cell}, right whenever the true start lies in [base, base + 8] (i0 is monotone).
    """
    est = (cell.to(tl.float32) + 0.5) * inv - 0.5
    base = est.to(tl.int32) - 3  # trunc: within 1 of floor, covered by the window
    cand = base[:, None] + tl.arange(0, 8)[None, :]
    i0 = tl.minimum(tap_src(cand, scale).to(tl.int32), in_size - 1)
    start = base + tl.sum((i0 < cell[:, None]).to(tl.int32), axis=1)
    start = tl.minimum(tl.maximum(start, 0), out_size)
    start = tl.where(cell <= 0, 0, start)
    return tl.where(cell >= in_size, out_size, start)


@triton.jit
def log1p(e):
    """log(1 + e) for e in [0, 1], accurate for tiny e (Kahan): no libdevice in the interpreter."""
    p = 1.0 + e
    d = p - 1.0
    return tl.where(d == 0.0, e, tl.log(p) * (e / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def bce(u, y):
    """(loss, sigmoid(u) - y) from e = exp(-|u|), as in adversarial_math.h: with
    s = sigmoid(-|u|) = e / (1 + e), the gradient is (1 - y) - s for u >= 0 and s - y otherwise,
    so a confident pixel (sigmoid(u) ~ y) keeps its small gradient's relative precision. The loss is
    PyTorch's (1 - y) u - log_sigmoid(u), so that an infinite u gives what PyTorch gives."""
    e = tl.exp(-tl.abs(u))
    s = e / (1.0 + e)
    grad = tl.where(u >= 0.0, (1.0 - y) - s, s - y)
    return (1.0 - y) * u - tl.minimum(u, 0.0) + log1p(e), grad


@triton.jit
def to_out(v, ty: tl.constexpr, MANUAL_BF16: tl.constexpr):
    """float32 -> output dtype, rounding to nearest even (by hand for bf16 in the interpreter)."""
    if MANUAL_BF16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(ty)


def f32(x: float) -> float:
    """``x`` rounded to float32 (exact for in/out sizes < 2^24: no double-rounding issue)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def manual_bf16(t: torch.Tensor) -> bool:
    """The interpreter's float32 -> bfloat16 cast does not round to nearest even."""
    return t.dtype == torch.bfloat16 and not on_gpu(t.device)
