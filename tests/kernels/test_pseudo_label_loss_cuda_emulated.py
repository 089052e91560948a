"""The self-training loss's CUDA kernels, run without a GPU: compiled with the host g++ under the
CPU emulation of the CUDA execution model (tests/cuda_emulation/emu.h), launched through the GPU's
launch plan (csrc/cuda/pseudo_label_loss_launch.cuh, driven by
tests/cuda_emulation/pseudo_label_driver.cpp), and compared with the float64 reference: loss,
weights and gradient, with and without labels, odd factors, identity, downsampling, rows of
several chunks, float32 and float64, non-finite values, and bitwise repeatability.

What the emulation cannot see is listed in emu.h; the `cuda`-marked tests cover it on a GPU. The
emulation runs one OS thread per CUDA thread, so the shapes are small.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from .emulation import Build, build_driver, check, unwritten
from .emulation import pointer as _ptr
from .helpers import assert_close
from .test_pseudo_label_loss import THRESHOLD, check_like_the_reference, expected, make

SHAPES = [
    (2, 3, 3, 4, 7, 9),  # odd factors, 2 images
    (1, 4, 2, 4, 16, 32),  # the model's factor 8
    (1, 2, 5, 6, 5, 6),  # identity size
    (2, 3, 9, 7, 4, 3),  # downsampling
    (1, 2, 1, 1, 3, 5),  # h = w = 1
    (1, 2, 2, 3, 3, 600),  # 3 chunks per row: low-res columns reached by two chunks
    (1, 2, 3, 500, 2, 300),  # downsampling over 2 chunks, columns no pixel reaches
]
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


@pytest.fixture(scope="module")
def emulation(tmp_path_factory) -> Build:
    build = build_driver(tmp_path_factory, "pseudo_label_driver")
    if build.lib is None:
        return build
    ptr = ctypes.c_void_p
    for suffix in SUFFIX.values():
        fn = getattr(build.lib, f"pl_emu_loss_{suffix}")
        fn.argtypes = [ptr, ptr, ptr, ctypes.c_double, ctypes.POINTER(ctypes.c_int64),
                       ctypes.c_int, ptr, ptr, ptr]
        fn.restype = ctypes.c_int
    build.lib.pl_emu_last_error.argtypes = []
    build.lib.pl_emu_last_error.restype = ctypes.c_char_p
    return build


def _run(lib, student, teacher, labels, size, compute_grad=True):
    n = student.shape[0]
    dtype = student.dtype
    loss, weight = unwritten(dtype=dtype), unwritten(n, dtype=dtype)
    grad = unwritten(*student.shape, dtype=dtype) if compute_grad else None
    shape = (ctypes.c_int64 * 6)(*student.shape, *size)
    status = getattr(lib, f"pl_emu_loss_{SUFFIX[dtype]}")(
        _ptr(student), _ptr(teacher), _ptr(labels), THRESHOLD, shape, int(compute_grad),
        _ptr(loss), _ptr(weight), _ptr(grad))
    check(lib.pl_emu_last_error, status, "pseudo_label_loss")
    return loss, weight, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("labels", ["mixed", "none"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_emulated_kernels_match_the_reference(emulation, shape, labels, dtype):
    lib = emulation.loaded()
    student, teacher, given = make(shape, dtype, "cpu", labels=labels)
    size = shape[4:]
    loss, weight, grad = _run(lib, student, teacher, given, size)
    ref_loss, ref_weight, ref_grad, ambiguous = expected(student, teacher, given, size)
    assert ambiguous == 0
    assert_close(loss, ref_loss, "pseudo_label_loss", dtype, "loss",
                 floor=student.abs().max().item())
    assert_close(weight, ref_weight, "pseudo_label_loss", dtype, "weight", floor=1.0)
    assert_close(grad, ref_grad, "pseudo_label_loss grad", dtype, "grad",
                 floor=1.0 / (shape[0] * size[0] * size[1]))
    if dtype != torch.float32 or labels != "mixed":
        return  # the emulation is slow: repeatability once per shape
    again = _run(lib, student, teacher, given, size)
    assert all(torch.equal(a, b) for a, b in zip((loss, weight, grad), again))
    no_grad = _run(lib, student, teacher, given, size, compute_grad=False)
    assert torch.equal(no_grad[0], loss) and torch.equal(no_grad[1], weight)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("where", ["student", "teacher"])
@pytest.mark.parametrize("size", [(4, 6), (9, 13)], ids=["same-size", "resized"])
def test_emulated_non_finite_values_as_the_reference(emulation, where, size):
    lib = emulation.loaded()
    student, teacher, given = make((2, 3, 4, 6, *size), torch.float32, "cpu", seed=5)
    for value in (float("nan"), float("inf"), float("-inf")):
        s, t = student.clone(), teacher.clone()
        (s if where == "student" else t)[1, 2, 1, 3] = value
        check_like_the_reference(_run(lib, s, t, given, size), s, t, given, size, value)
