"""The CUDA kernels of the pixel-wise adversarial losses, run without a GPU: compiled with the host
g++ under a CPU emulation of the CUDA execution model (tests/cuda_emulation/emu.h: one OS thread
per CUDA thread, barriers for __syncthreads and warp shuffles) and launched through the same launch
plan as the GPU (csrc/cuda/adversarial_loss_launch.cuh, driven by
tests/cuda_emulation/adversarial_driver.cpp), then compared with the PyTorch reference
(F.interpolate + F.binary_cross_entropy_with_logits) in float64, gradients with torch.autograd:
every reduction, constant labels and target tensors, the backward op of reduction none, the
discriminator loss with maps of different N and sizes; float32 and float64, plus float16 (where
g++ has _Float16) and bfloat16 (a host type in the driver) on a few shapes.

What the emulation cannot see (memory model, warp divergence, the device half types, the torch glue
of adversarial_loss_cuda.cu) is listed in emu.h; the `cuda`-marked tests cover it on a GPU.
The emulation is slow (every CUDA thread is an OS thread), so the shapes are small.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

import rtda_kernels
from rtda_kernels.schemas import REDUCTIONS

from . import loss_reference
from .emulation import Build, build_driver, check, unwritten
from .emulation import pointer as _ptr
from .helpers import assert_close

# (N, C, h, w, H, W): logits N x C x h x w resized to H x W.
SHAPES = [
    (1, 1, 3, 4, 7, 5),  # small, mixed up/down-ish factors
    (2, 1, 7, 9, 50, 61),  # non-integer factors
    (2, 1, 16, 32, 64, 128),  # the real shapes' factor 4 layout, 2 images
    (1, 2, 8, 8, 8, 8),  # identity size, 2 channels
    (1, 1, 1, 1, 5, 3),  # h = w = 1
    (2, 1, 9, 7, 4, 3),  # downsampling
    (1, 1, 2, 3, 9, 600),  # 3 chunks per row, a low-res column spans several chunks, 32 lanes
    (1, 1, 4, 700, 3, 300),  # downsampling over 2 chunks, columns no pixel reaches
]
SHAPE_IDS = ["{}x{}x{}x{}-{}x{}".format(*s) for s in SHAPES]
# More than kTargetRowBlocks (1024) output rows: several rows per block of kernel A.
MANY_ROWS = (1, 1, 3, 2, 1100, 5)
# A constant label, or a random target tensor in [0, 1]. The label is 0 (a source label) in float32
# and 1 (a target label) in float64, so that both are covered at half the cost (the emulation is
# slow).
TARGETS = ["label", "tensor"]
DTYPES = [torch.float32, torch.float64]
LABEL = {torch.float32: 0.0, torch.float64: 1.0, torch.float16: 0.0, torch.bfloat16: 1.0}
SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}


@pytest.fixture(scope="module")
def emulation(tmp_path_factory) -> Build:
    """The driver built once into a shared library and loaded; skips when the toolchain can't."""
    build = build_driver(tmp_path_factory, "adversarial_driver")
    if build.lib is None:
        return build
    lib = build.lib
    ptr, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    c_int, c_double = ctypes.c_int, ctypes.c_double
    suffixes = ["f32", "f64", "bf16"] + (["f16"] if lib.adv_emu_has_f16() else [])
    for suffix in suffixes:
        loss = getattr(lib, f"adv_emu_loss_{suffix}")
        loss.argtypes = [ptr, ptr, c_double, i64p, c_int, c_int, ptr, ptr]
        loss.restype = c_int
        backward = getattr(lib, f"adv_emu_loss_backward_{suffix}")
        backward.argtypes = [ptr, ptr, ptr, c_double, i64p, ptr]
        backward.restype = c_int
        disc = getattr(lib, f"adv_emu_discriminator_{suffix}")
        disc.argtypes = [ptr, ptr, c_double, c_double, i64p, c_int, ptr, ptr, ptr]
        disc.restype = c_int
    lib.adv_emu_plan.argtypes = [c_int, i64p, c_int, i64p]
    lib.adv_emu_plan.restype = c_int
    lib.adv_emu_check_reach.argtypes = [ctypes.c_int64, ctypes.c_int64, i64p]
    lib.adv_emu_check_reach.restype = ctypes.c_int64
    lib.adv_emu_has_f16.restype = c_int
    lib.adv_emu_last_error.argtypes = []
    lib.adv_emu_last_error.restype = ctypes.c_char_p
    return build


def _i64(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str
) -> None:
    """``helpers.assert_close`` with the loss's bounds (the same table as the CPU and Triton
    kernels): "loss" is the value, anything else a gradient."""
    op = "adversarial_loss" if name == "loss" else "adversarial_loss grad"
    assert_close(actual, expected, op, dtype, name)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _inputs(shape, target_kind: str, dtype: torch.dtype):
    """logits (scale 3: saturated pixels too) and the target: (tensor or None, label value)."""
    n, c, h, w, big_h, big_w = shape
    logits = (3 * torch.randn(n, c, h, w, dtype=torch.float64)).to(dtype)
    if target_kind == "tensor":
        return logits, torch.rand(n, c, big_h, big_w, dtype=torch.float64).to(dtype), 0.0
    return logits, None, LABEL[dtype]


def _run_loss(lib, shape, logits, target, value, reduction: int, compute_grad: bool):
    """(loss, grad or None) from the emulated forward."""
    n, c, h, w, big_h, big_w = shape
    dtype = logits.dtype
    loss = unwritten(n, c, big_h, big_w, dtype=dtype) if reduction == 0 else unwritten(dtype=dtype)
    grad = unwritten(*logits.shape, dtype=dtype) if compute_grad and reduction != 0 else None
    status = getattr(lib, f"adv_emu_loss_{SUFFIX[dtype]}")(
        _ptr(logits), _ptr(target), value, _i64(shape), reduction, int(compute_grad),
        _ptr(loss), _ptr(grad),
    )  # fmt: skip
    check(lib.adv_emu_last_error, status, "forward")
    return loss, grad


def _run_backward(lib, shape, grad_loss, logits, target, value):
    grad = unwritten(*logits.shape, dtype=logits.dtype)
    status = getattr(lib, f"adv_emu_loss_backward_{SUFFIX[logits.dtype]}")(
        _ptr(grad_loss), _ptr(logits), _ptr(target), value, _i64(shape), _ptr(grad)
    )
    check(lib.adv_emu_last_error, status, "backward")
    return grad


def _check_loss_case(lib, shape, reduction_name: str, target_kind: str, dtype: torch.dtype) -> None:
    """Forward (with and without the gradient) or the backward op, against the float64 reference
    of the same (rounded) values."""
    reduction = REDUCTIONS[reduction_name]
    logits, target, value = _inputs(shape, target_kind, dtype)
    logits_ref = logits.double().requires_grad_(True)
    target_ref = target.double() if target is not None else value
    loss_ref = loss_reference.adversarial_loss(
        logits_ref, target_ref, shape[4:], reduction_name, dtype
    )

    loss, grad = _run_loss(lib, shape, logits, target, value, reduction, compute_grad=True)
    _assert_close(loss, loss_ref, dtype, "loss")
    if reduction == 0:
        grad_loss = torch.randn(loss.shape, dtype=torch.float64).to(dtype)
        grad = _run_backward(lib, shape, grad_loss, logits, target, value)
        (grad_ref,) = torch.autograd.grad(loss_ref, logits_ref, grad_loss.double())
        _assert_close(grad, grad_ref, dtype, "backward grad")
    else:
        (grad_ref,) = torch.autograd.grad(loss_ref, logits_ref)
        _assert_close(grad, grad_ref, dtype, "grad")
        if target is not None and dtype == torch.float32:
            # Without the gradient: another kernel A path, the same loss to the bit.
            loss_only, none = _run_loss(
                lib, shape, logits, target, value, reduction, compute_grad=False
            )
            assert none is None
            assert _same_bits(loss_only, loss), (loss_only, loss)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("target_kind", TARGETS)
@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_loss_matches_reference(emulation, shape, reduction, target_kind, dtype):
    _check_loss_case(emulation.loaded(), shape, reduction, target_kind, dtype)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_several_rows_per_block(emulation, reduction):
    _check_loss_case(emulation.loaded(), MANY_ROWS, reduction, "tensor", torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize(
    "shape", [SHAPES[i] for i in (1, 3, 5)], ids=[SHAPE_IDS[i] for i in (1, 3, 5)]
)
def test_half_types(emulation, shape, reduction, dtype):
    lib = emulation.loaded()
    if dtype == torch.float16 and not lib.adv_emu_has_f16():
        pytest.skip("this g++ has no _Float16: the float16 kernels cannot be emulated")
    _check_loss_case(lib, shape, reduction, "tensor", dtype)


# (source N, C, h, w), (target N, C, h, w), (H, W)
DISCRIMINATOR_CASES = [
    ((2, 1, 7, 9), (3, 1, 5, 6), (50, 61)),
    ((1, 1, 16, 32), (2, 1, 8, 8), (16, 32)),  # the source at identity size
    ((2, 1, 9, 7), (1, 1, 1, 1), (4, 3)),  # downsampled source, 1 x 1 target
]


def _run_discriminator(lib, d_source, d_target, labels, size, compute_grad: bool):
    dtype = d_source.dtype
    loss = unwritten(dtype=dtype)
    grads = [unwritten(*d.shape, dtype=dtype) if compute_grad else None
             for d in (d_source, d_target)]
    shape = _i64([*d_source.shape, *d_target.shape, *size])
    status = getattr(lib, f"adv_emu_discriminator_{SUFFIX[dtype]}")(
        _ptr(d_source), _ptr(d_target), *labels, shape, int(compute_grad), _ptr(loss),
        *map(_ptr, grads),
    )  # fmt: skip
    check(lib.adv_emu_last_error, status, "discriminator")
    return loss, grads


def _case_id(case) -> str:
    return "{}x{}x{}x{}-{}x{}x{}x{}-{}x{}".format(*case[0], *case[1], *case[2])


# Labels 0 / 1 in float32, soft labels in float64 (half the cost of both in both).
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DISCRIMINATOR_CASES, ids=_case_id)
def test_discriminator_matches_reference(emulation, case, dtype):
    lib = emulation.loaded()
    labels = (0.0, 1.0) if dtype == torch.float32 else (0.2, 0.9)
    source_shape, target_shape, size = case
    d_source = (3 * torch.randn(source_shape, dtype=torch.float64)).to(dtype)
    d_target = (3 * torch.randn(target_shape, dtype=torch.float64)).to(dtype)
    refs = [d.double().requires_grad_(True) for d in (d_source, d_target)]
    loss_ref = loss_reference.discriminator_loss(*refs, *labels, size, dtype)
    grads_ref = torch.autograd.grad(loss_ref, refs)

    loss, grads = _run_discriminator(lib, d_source, d_target, labels, size, compute_grad=True)
    _assert_close(loss, loss_ref, dtype, "loss")
    _assert_close(grads[0], grads_ref[0], dtype, "grad d_source")
    _assert_close(grads[1], grads_ref[1], dtype, "grad d_target")
    if dtype == torch.float32:
        loss_only, _ = _run_discriminator(lib, d_source, d_target, labels, size, compute_grad=False)
        assert _same_bits(loss_only, loss), (loss_only, loss)


def test_repeat_runs_are_bitwise_identical(emulation):
    """No atomics, fixed reduction orders: the same inputs give the same bits, run after run."""
    lib = emulation.loaded()
    for shape, reduction in ((SHAPES[1], 1), (SHAPES[6], 2)):
        logits, target, value = _inputs(shape, "tensor", torch.float32)
        first = _run_loss(lib, shape, logits, target, value, reduction, compute_grad=True)
        second = _run_loss(lib, shape, logits, target, value, reduction, compute_grad=True)
        assert all(_same_bits(a, b) for a, b in zip(first, second)), (shape, reduction)
    shape = SHAPES[5]
    logits, target, value = _inputs(shape, "tensor", torch.float32)
    grad_loss = torch.randn(shape[0], shape[1], *shape[4:])
    first = _run_backward(lib, shape, grad_loss, logits, target, value)
    second = _run_backward(lib, shape, grad_loss, logits, target, value)
    assert _same_bits(first, second), shape
    d_source, d_target = torch.randn(2, 1, 7, 9), torch.randn(3, 1, 5, 6)
    first = _run_discriminator(lib, d_source, d_target, (0.0, 1.0), (50, 61), compute_grad=True)
    second = _run_discriminator(lib, d_source, d_target, (0.0, 1.0), (50, 61), compute_grad=True)
    assert _same_bits(first[0], second[0])
    assert all(_same_bits(a, b) for a, b in zip(first[1], second[1]))


def test_reach_range_is_conservative(emulation):
    """The gather bounds of the transposed interpolation (rtda::cuda::adv::reach_range) hold every
    output coordinate whose taps reach an input coordinate, for float and double taps: all sizes
    up to 64 x 64, and large / extreme factors."""
    lib = emulation.loaded()
    checked = ctypes.c_int64()
    violations = lib.adv_emu_check_reach(64, 64, ctypes.byref(checked))
    assert checked.value > 64 * 64
    assert violations == 0


def test_cases_cover_the_launch_plan_paths(emulation):
    """The shapes above reach the paths of the launch plan: several chunks per row, several rows
    per block, 1 / some / 32 lanes per low-res column, the second map of the discriminator."""
    lib = emulation.loaded()
    plans = []
    for shape in [*SHAPES, MANY_ROWS]:
        out = (ctypes.c_int64 * 8)()
        check(lib.adv_emu_last_error, lib.adv_emu_plan(1, _i64(shape), 1, out), "plan")
        # threads, group, rows/block, row blocks, chunks, kernel A blocks, kernel B blocks
        plans.append(list(out))
    assert any(p[4] > 1 for p in plans), plans
    assert any(p[2] > 1 for p in plans), plans
    groups = {p[1] for p in plans}
    assert 1 in groups and 32 in groups and groups - {1, 32}, groups
    assert {p[0] for p in plans} >= {64, 128, 256}, plans
    out = (ctypes.c_int64 * 8)()
    check(lib.adv_emu_last_error,
          lib.adv_emu_plan(4, _i64([2, 1, 7, 9, 3, 1, 5, 6, 50, 61]), 1, out), "plan")
    assert out[5] > out[3], list(out)  # kernel A runs the blocks of both maps


def test_invalid_arguments_are_refused(emulation):
    lib = emulation.loaded()
    logits = torch.zeros(1, 1, 2, 2)
    loss = torch.zeros(())
    bad_calls = [([1, 1, 2, 2, 3, 3], 3, b"reduction"), ([1, 1, 2, 2, 0, 3], 1, b"empty")]
    for shape, reduction, message in bad_calls:
        status = lib.adv_emu_loss_f32(
            _ptr(logits), None, 0.0, _i64(shape), reduction, 0, _ptr(loss), None
        )
        assert status == -1 and message in lib.adv_emu_last_error()


@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize("target_kind", TARGETS)
@pytest.mark.parametrize("shape", [(2, 1, 5, 7, 5, 7), (1, 1, 4, 6, 4, 13), (1, 1, 4, 6, 9, 6)],
                         ids=["same-size", "rows-same", "cols-same"])
def test_non_finite_logits(emulation, shape, target_kind, reduction):
    """+inf, -inf and NaN logits (test_nonfinite.py runs the same on the other backends): without a
    resize along an axis the logit is read as it is, so with no resize at all the loss and its
    gradient are exactly BCE-with-logits' (inf for +inf with label 0, a finite gradient); with
    one the non-finite pixels are those of F.interpolate."""
    lib = emulation.loaded()
    logits, target, value = _inputs(shape, target_kind, torch.float32)
    flat = logits.view(-1)
    flat[1], flat[flat.numel() // 2], flat[-2] = float("inf"), float("-inf"), float("nan")
    logits_ref = logits.double().requires_grad_(True)
    target_ref = target.double() if target is not None else value
    loss_ref = loss_reference.adversarial_loss(logits_ref, target_ref, shape[4:], reduction,
                                               torch.float32)
    loss, grad = _run_loss(lib, shape, logits, target, value, REDUCTIONS[reduction], True)
    if reduction == "none":
        grad_loss = torch.rand(loss.shape, dtype=torch.float64).float() + 0.5
        grad = _run_backward(lib, shape, grad_loss, logits, target, value)
        (grad_ref,) = torch.autograd.grad(loss_ref, logits_ref, grad_loss.double())
    else:
        (grad_ref,) = torch.autograd.grad(loss_ref, logits_ref)
    if shape[2:4] == shape[4:]:
        _assert_close(loss, loss_ref, torch.float32, "loss")
        _assert_close(grad, grad_ref, torch.float32, "grad")
        assert grad.isfinite().sum() == grad.numel() - 1, "only the NaN logit has a NaN gradient"
    else:  # loss_reference resizes by a matrix product, where 0 * inf reaches every pixel
        leaf = logits.clone().requires_grad_(True)
        interpolated = rtda_kernels.reference.adversarial_loss(
            leaf, target if target is not None else value, output_size=shape[4:],
            reduction=reduction)
        (grad_ref,) = torch.autograd.grad(interpolated, leaf,
                                          grad_loss if reduction == "none" else None)
        finite = interpolated.isfinite()
        assert torch.equal(loss.isfinite(), finite), "the non-finite pixels differ"
        _assert_close(loss[finite], interpolated[finite].detach(), torch.float32, "loss")
        cpu_leaf = logits.clone().requires_grad_(True)
        with rtda_kernels.use_backend("cpu"):
            cpu_loss = rtda_kernels.adversarial_loss(
                cpu_leaf, target if target is not None else value, output_size=shape[4:],
                reduction=reduction)
        (cpu_grad,) = torch.autograd.grad(cpu_loss, cpu_leaf,
                                          grad_loss if reduction == "none" else None)
        assert torch.equal(grad.isfinite(), cpu_grad.isfinite()), "NaN gradients unlike the CPU's"
        both = grad.isfinite() & grad_ref.isfinite()
        _assert_close(grad[both], grad_ref[both], torch.float32, "grad")
