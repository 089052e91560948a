"""The CUDA kernels of dwsep_conv2d, run without a GPU: compiled with the host g++ under a CPU
emulation of the CUDA execution model (tests/cuda_emulation/emu.h: one OS thread per CUDA thread,
barriers for __syncthreads and warp shuffles) and launched through the same launch plan as the
GPU (csrc/cuda/dwsep_conv2d_launch.cuh), then compared with the float64 PyTorch reference:
forward and all five gradients, float32 and float64.

What the emulation cannot see (memory model, warp divergence, half/bfloat16 device types, the torch
glue of dwsep_conv2d_cuda.cu) is listed in emu.h; the `cuda`-marked tests cover it on a GPU.
The emulation is slow (every CUDA thread is an OS thread), so the shapes are tiny.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from . import dwsep_reference
from .emulation import Build, build_driver, check, unwritten
from .emulation import pointer as _ptr
from .helpers import assert_close

# (N, C_in, C_out, H, W, k, stride, padding, negative_slope, biases)
CASES = [
    (1, 1, 1, 1, 1, 1, 1, 0, 0.2, True),  # 1 x 1 everything
    (2, 3, 5, 7, 9, 3, 1, 1, 0.2, True),  # odd sizes, stride 1
    (2, 3, 5, 7, 9, 3, 2, 2, None, False),  # stride 2, padding k - 1, no bias, no activation
    (1, 4, 6, 11, 5, 5, 3, 4, 0.0, True),  # stride 3, k5, padding k - 1, ReLU
    (1, 2, 3, 4, 5, 7, 1, 6, 0.2, False),  # k7 larger than the image
    (2, 3, 2, 6, 7, 2, 2, 1, None, True),  # even kernel
    (1, 2, 3, 9, 8, 6, 3, 5, 0.2, True),  # k6, stride 3, padding k - 1
    (2, 70, 67, 3, 4, 3, 1, 1, 0.2, True),  # two 64-wide tiles of C_in and of C_out
    (2, 2, 3, 23, 25, 4, 1, 2, 0.2, True),  # > 1 reduction split in backward (c) and (d)
]
CASE_IDS = [
    "x".join(map(str, c[:5])) + f"-k{c[5]}s{c[6]}p{c[7]}-{c[8]}" + ("" if c[9] else "-nobias")
    for c in CASES
]
DTYPES = [torch.float32, torch.float64]
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


@pytest.fixture(scope="module")
def emulation(tmp_path_factory) -> Build:
    """dwsep_driver.cpp built once into a shared library and loaded; skips when the toolchain can't."""
    build = build_driver(tmp_path_factory, "dwsep_driver")
    if build.lib is None:
        return build
    lib = build.lib
    ptr, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    c_int, c_double = ctypes.c_int, ctypes.c_double
    for suffix in SUFFIX.values():
        forward = getattr(lib, f"dwsep_emu_forward_{suffix}")
        forward.argtypes = [ptr] * 6 + [i64p, c_int, c_double]
        forward.restype = c_int
        backward = getattr(lib, f"dwsep_emu_backward_{suffix}")
        backward.argtypes = [ptr] * 11 + [i64p, c_int, c_double]
        backward.restype = c_int
    lib.dwsep_emu_backward_plan.argtypes = [i64p, i64p]
    lib.dwsep_emu_backward_plan.restype = c_int
    lib.dwsep_emu_last_error.argtypes = []
    lib.dwsep_emu_last_error.restype = ctypes.c_char_p
    return build


def _shape(case) -> ctypes.Array:
    return (ctypes.c_int64 * 8)(*case[:8])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_emulated_cuda_kernels_match_reference(emulation, case, dtype):
    lib = emulation.loaded()
    n, c_in, c_out, h, w, k, s, p, slope, biases = case
    x = torch.randn(n, c_in, h, w, dtype=torch.float64)
    dw_weight = torch.randn(c_in, 1, k, k, dtype=torch.float64) / k
    dw_bias = torch.randn(c_in, dtype=torch.float64) if biases else None
    pw_weight = torch.randn(c_out, c_in, 1, 1, dtype=torch.float64) / c_in**0.5
    pw_bias = torch.randn(c_out, dtype=torch.float64) if biases else None
    # The kernels' inputs, and the reference's: the same values (rounded to dtype) in float64.
    inputs = [
        None if t is None else t.to(dtype).contiguous()
        for t in (x, dw_weight, dw_bias, pw_weight, pw_bias)
    ]
    x_k, dw_weight_k, dw_bias_k, pw_weight_k, pw_bias_k = inputs
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    has_slope, slope_value = int(slope is not None), 0.0 if slope is None else slope
    suffix = SUFFIX[dtype]

    y = unwritten(n, c_out, ho, wo, dtype=dtype)
    status = getattr(lib, f"dwsep_emu_forward_{suffix}")(
        *map(_ptr, inputs), _ptr(y), _shape(case), has_slope, slope_value
    )
    check(lib.dwsep_emu_last_error, status, "forward")

    grad_y = torch.randn(n, c_out, ho, wo, dtype=torch.float64).to(dtype)
    grads = [
        unwritten(*x_k.shape, dtype=dtype),
        unwritten(*dw_weight_k.shape, dtype=dtype),
        unwritten(c_in, dtype=dtype),
        unwritten(*pw_weight_k.shape, dtype=dtype),
        unwritten(c_out, dtype=dtype),
    ]
    status = getattr(lib, f"dwsep_emu_backward_{suffix}")(
        _ptr(grad_y), _ptr(x_k), _ptr(y), _ptr(dw_weight_k), _ptr(dw_bias_k), _ptr(pw_weight_k),
        *map(_ptr, grads), _shape(case), has_slope, slope_value,
    )  # fmt: skip
    check(lib.dwsep_emu_last_error, status, "backward")

    # Reference in float64 (dwsep_reference). The kernels always produce both bias gradients
    # (the op drops those of absent biases), so an absent bias is a zero one here. dL/dz takes its
    # mask from the kernels' own y, as the op defines it.
    ref_inputs = [
        x_k,
        dw_weight_k,
        torch.zeros(c_in, dtype=dtype) if dw_bias_k is None else dw_bias_k,
        pw_weight_k,
        torch.zeros(c_out, dtype=dtype) if pw_bias_k is None else pw_bias_k,
    ]
    ref = dwsep_reference.expected(ref_inputs, s, p, slope, grad_y, y_actual=y)
    assert_close(y, ref.y, "dwsep_conv2d", dtype, "y", floor=ref.y_terms)
    for name, g, g_ref, terms in zip(dwsep_reference.NAMES, grads, ref.grads, ref.grad_terms):
        assert_close(g, g_ref, "dwsep_conv2d grad", dtype, f"grad {name}", floor=terms)


def test_cases_cover_tiles_and_splits(emulation):
    """The shapes above reach the multi-tile and multi-split paths of the backward launch plan."""
    lib = emulation.loaded()
    plans = []
    for case in CASES:
        out = (ctypes.c_int64 * 4)()
        check(lib.dwsep_emu_last_error, lib.dwsep_emu_backward_plan(_shape(case), out), "backward plan")
        plans.append(list(out))  # dw splits, pw splits, C_in tiles, C_out tiles
    assert any(plan[0] > 1 for plan in plans), plans
    assert any(plan[1] > 1 for plan in plans), plans
    assert any(plan[2] > 1 and plan[3] > 1 for plan in plans), plans
