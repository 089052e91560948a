"""Shared helpers of the kernel tests: backends to run, tolerances, comparison against the
reference."""

from __future__ import annotations

import pytest
import torch

import rtda_kernels

# (dtype, atol, rtol): atol is relative to the largest reference magnitude (at least 1), since
# weight gradients are sums over many pixels. Low-precision inputs are compared with the float64
# reference of the same (rounded) values: the kernels accumulate in float32 and round once.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-10, 1e-10),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (4e-3, 4e-3),
}


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


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str):
    atol, rtol = TOLERANCES[dtype]
    expected = expected.double()
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        actual.double().cpu(), expected.cpu(), atol=atol * scale, rtol=rtol, msg=lambda m: f"{name}: {m}"
    )
