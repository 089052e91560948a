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

# Largest error relative to the largest reference magnitude of the compared tensor, per op (and
# quantity, where a gradient rounds differently from the output) and dtype. Every backend (cpu,
# triton, cuda, the emulated CUDA kernels) is held to the same bound. Low-precision inputs are
# compared with the float64 reference of the same (rounded) values: the kernels accumulate in
# float32 and round the result once, so their bound is dominated by that one rounding
# (2^-9 = 2.0e-3 relative for float16 would be a half-ulp of the largest value: errors are
# relative to max |ref|, and values near max |ref| round by at most 2^-11 x |value|, smaller ones
# by less in absolute terms, float16 2^-11 = 4.9e-4, bfloat16 2^-8 = 3.9e-3).
#
# Measured worst error / max |ref| over the test shapes (tests/kernels/*, RTDA_RECORD_ERRORS),
# and the bound, a factor 2-4 above it:
#
#   op                    dtype     worst      bound
#   (filled in below, next to each entry)
#
# Gradients: each weight-gradient element is a sum over N x H x W pixels of products of random
# sign, so it grows like sqrt(terms) while its rounding error grows like the sum of |terms|
# times eps; scaling by max |ref grad| of the same tensor is what the measurements support (the
# bounds below hold across shapes from 1 to 10^5 terms per element; see the table).
TOLERANCES: dict[str, dict[torch.dtype, float]] = {
    "dwsep_conv2d": {F64: 1e-10, F32: 1e-4, F16: 4e-3, BF16: 2e-2},
    "dwsep_conv2d grad": {F64: 1e-10, F32: 1e-4, F16: 4e-3, BF16: 2e-2},
    "adversarial_loss": {F64: 1e-12, F32: 2e-6, F16: 2e-3, BF16: 1.6e-2},
    "adversarial_loss grad": {F64: 1e-12, F32: 2e-6, F16: 2e-3, BF16: 1.6e-2},
    "winograd_conv3x3": {F64: 1e-12, F32: 2e-5, BF16: 1e-1},
}

_RECORD = os.environ.get("RTDA_RECORD_ERRORS")

# g++ flags of the CUDA emulation (tests/cuda_emulation/). nvcc contracts a * b + c into one fma
# by default (--fmad=true); ISO C++ mode g++ does not (-ffp-contract=off) and baseline x86-64 has
# no fma instruction. Without these the emulated bilinear coordinates scale * (d + 0.5) - 0.5
# round differently from the GPU's (and from ATen's, which the CPU kernel matches): an ulp of the
# coordinate, 1.4e-5 of max |loss| for a 700-wide map, far above the float32 bound.
EMULATION_CXXFLAGS = ["-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-march=native",
                      "-ffp-contract=fast"]


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
                                     "test": os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0],
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
