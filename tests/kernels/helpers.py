"""Shared helpers of the kernel tests: backends to run, the one table of tolerances, and the
comparison against the float64 reference that every kernel test (and the benchmarks' checks)
uses.

The comparison is ``max |actual - expected| <= bound * max(max |expected|, floor)`` over the
finite elements, with non-finite values required at the same places with the same values. There
is no floor of 1 and no relative term: a kernel 5e-5 relatively wrong everywhere, or one element
wrong by 1e-3 of its value, fails (``test_tolerances.py`` proves it on each op's real outputs).

Measuring the errors: with ``RTDA_RECORD_ERRORS=FILE`` every comparison also appends one JSON
line (op, dtype, quantity, error / scale) to FILE; ``python -m tests.kernels.error_report FILE``
prints the worst of each. The bounds below were set that way, a small factor above the worst.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import rtda_kernels

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16

# Largest error relative to the compared tensor's scale, per op (and quantity: gradients sum more
# terms than outputs) and dtype; every backend (cpu, triton, cuda, the emulated CUDA kernels) is
# held to the same bound. The scale is max |reference|, or (``floor``) the size of what the
# element sums where that is larger: the products' root-sum-square for dwsep_conv2d
# (dwsep_reference) and winograd_conv3x3, 1 / M per pixel for the mean loss's gradient, since a
# sum of a few terms can cancel far below its terms, not its rounding error.
#
# Low-precision inputs are compared with the float64 reference of the same (rounded) values: the
# kernels accumulate in float32 and round the result once, so float16 errors are near a half-ulp
# of the largest value (2^-11 = 4.9e-4) and bfloat16 ones near 2^-9 = 2.0e-3; the Triton dwsep
# kernels also round the depthwise tile to the input dtype for tl.dot, hence their 2-4x larger
# low-precision errors.
#
# Each bound is 2.4-4x the worst error measured over every test shape and backend of this
# repository (RTDA_RECORD_ERRORS=FILE pytest tests/kernels; python -m tests.kernels.error_report
# FILE), and for float32 also over 400 hypothesis draws per op (RTDA_HYPOTHESIS_SCALE=10):
#
#   op, quantity            float32            float64            float16            bfloat16
#                           worst    bound     worst    bound     worst    bound     worst    bound
#   dwsep_conv2d y          4.5e-7   1.5e-6    7.3e-16  3e-15     4.0e-4   1.2e-3    8.2e-3   2e-2
#   dwsep_conv2d grads      1.3e-6   4e-6      8.9e-16  3e-15     5.7e-4   2e-3      7.5e-3   2e-2
#   adversarial_loss        6.4e-7   2e-6      3.9e-16  1.5e-15   3.4e-4   1e-3      3.3e-3   1e-2
#   adversarial_loss grad   3.3e-6   1e-5      5.6e-15  2e-14     4.7e-4   1.5e-3    5.2e-3   1.6e-2
#   pseudo_label_loss       7.6e-8   3e-7      4.7e-17  1e-15     2.1e-4   1e-3      2.0e-3   1e-2
#   pseudo_label_loss grad  3.3e-6   1e-5      2.1e-16  1e-15     4.2e-4   1.5e-3    3.2e-3   1e-2
#   winograd_conv3x3 y      8.5e-6   2.5e-5    8.7e-15  3e-14     -        -         1.2e-2   4e-2
#
# The gradients' worst is pw_weight's, a sum over N x H_out x W_out pixels (up to 14,700 in the
# hypothesis draws, 2,400 in the many-tiles tests): relative to max |gradient|, the error of such
# a random-sign sum does not grow with its length (both grow like its square root), which the
# measurements bear out; the bound is 2.7x the forward's for the extra level of summation.
# The loss gradient is different: each logit sums the same-signed terms of every output pixel
# its taps reach, and its error grows with that fan-in. A hypothesis draw in a fresh-clone run
# found 3.3e-6 for a 2 x 1 map upsampled to 159 x 159 (12,600 pixels per logit; the earlier
# worst, 5.0e-7, came from fan-ins of a few hundred), hence 1e-5 in float32; the self-training
# loss's gradient is the same kind of sum (3.3e-6: 19 output rows onto one logit, p - 1 near 0).
# winograd_conv3x3 is measured against float64 F.conv2d: F(4x4, 3x3)'s transforms (points 0,
# +-1, +-2, +-1/2; output weights up to 8) amplify float32 rounding ~20x over a direct
# convolution, the same for the kernel (8.1e-6) and the float32 reference (8.5e-6). Its float64
# and bfloat16 entries are the reference backend's. float64 worsts are a few ulps.
TOLERANCES: dict[str, dict[torch.dtype, float]] = {
    "dwsep_conv2d": {F64: 3e-15, F32: 1.5e-6, F16: 1.2e-3, BF16: 2e-2},
    "dwsep_conv2d grad": {F64: 3e-15, F32: 4e-6, F16: 2e-3, BF16: 2e-2},
    "adversarial_loss": {F64: 1.5e-15, F32: 2e-6, F16: 1e-3, BF16: 1e-2},
    "adversarial_loss grad": {F64: 2e-14, F32: 1e-5, F16: 1.5e-3, BF16: 1.6e-2},
    "pseudo_label_loss": {F64: 1e-15, F32: 3e-7, F16: 1e-3, BF16: 1e-2},
    "pseudo_label_loss grad": {F64: 1e-15, F32: 1e-5, F16: 1.5e-3, BF16: 1e-2},
    "winograd_conv3x3": {F64: 3e-14, F32: 2.5e-5, BF16: 4e-2},
}

_RECORD = os.environ.get("RTDA_RECORD_ERRORS")

# g++ flags of the CUDA emulation (tests/cuda_emulation/). nvcc contracts a * b + c into one fma
# by default (--fmad=true); ISO C++ mode g++ does not (-ffp-contract=off) and baseline x86-64 has
# no fma instruction. Without these the emulated bilinear coordinates scale * (d + 0.5) - 0.5
# round differently from the GPU's (and from ATen's, which the CPU kernel matches): an ulp of the
# coordinate, 1.4e-5 of max |loss| for a 700-wide map, far above the float32 bound.
EMULATION_CXXFLAGS = ["-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-march=native",
                      "-ffp-contract=fast"]


def examples(default: int) -> int:
    """Hypothesis examples of a test: ``default``, times ``RTDA_HYPOTHESIS_SCALE`` (an integer,
    for measuring the worst errors over many more draws than a routine run can afford)."""
    return default * int(os.environ.get("RTDA_HYPOTHESIS_SCALE", "1"))


def tolerance(op: str, dtype: torch.dtype) -> float:
    """The bound of ``op`` (a key of TOLERANCES) for ``dtype``; a KeyError names what is missing."""
    try:
        return TOLERANCES[op][dtype]
    except KeyError:
        raise KeyError(f"no tolerance for {op!r} in {dtype}: add one to TOLERANCES") from None


def relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0
                   ) -> tuple[float, float]:
    """(max |actual - expected| over the finite elements, max(max |expected|, floor))."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    finite = expected.isfinite()
    if not finite.any():
        return 0.0, floor
    error = (actual[finite] - expected[finite]).abs().max().item()
    return error, max(expected[finite].abs().max().item(), floor)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, op: str, dtype: torch.dtype,
                 name: str, floor: float = 0.0) -> None:
    """``actual`` is within ``tolerance(op, dtype)`` of ``expected``, relative to
    ``max(max |expected|, floor)``; same shape; non-finite values in the same places, equal.

    ``floor`` is for quantities that cancel (a gradient sigmoid(u) - label near 0): the error is
    relative to the terms' size, not to the small difference."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    finite = e.isfinite()
    assert torch.equal(a.isfinite(), finite), f"{name}: the non-finite values are not in the same places"
    if not finite.all():
        assert torch.equal(a[~finite].nan_to_num(), e[~finite].nan_to_num()), (
            f"{name}: non-finite values differ"
        )
    bound = tolerance(op, dtype)
    error, scale = relative_error(a, e, floor)
    if _RECORD:
        with open(_RECORD, "a", encoding="utf-8") as record:
            record.write(json.dumps({"op": op, "dtype": str(dtype).removeprefix("torch."),
                                     "name": name,
                                     "test": os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0],
                                     "ratio": error / scale if scale > 0 else float(error > 0)}) + "\n")
    assert error <= bound * scale, (
        f"{name}: max error {error:.3g} > {bound:.2g} x {scale:.3g} ({op}, {dtype}; "
        f"{error / scale if scale else float('inf'):.3g} of the scale)"
    )


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str,
                        op: str = "dwsep_conv2d") -> None:
    """``assert_close`` for dwsep_conv2d: ``name`` "y" is the output, "grad ..." a gradient."""
    assert_close(actual, expected, op if not name.startswith("grad") else f"{op} grad", dtype, name)


def backend_params(*names: str):
    """pytest params for backends; `cuda` runs only with a GPU, `triton` needs triton installed."""
    params = []
    for name in names:
        marks = []
        if name == "cuda":
            marks.append(pytest.mark.cuda)
        if name == "triton":
            marks.append(
                pytest.mark.skipif(
                    not rtda_kernels.available_backends()["triton"].available,
                    reason=rtda_kernels.available_backends()["triton"].detail,
                )
            )
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"
