"""The public functions of rtda_kernels: validate the arguments once, then run the op on the
backend chosen by ``rtda_kernels.backends`` (device, ``use_backend`` or ``RTDA_KERNELS_BACKEND``)."""

from __future__ import annotations

import torch

from rtda_kernels import _checks, reference
from rtda_kernels.backends import select_backend
from rtda_kernels.ops import dwsep_conv2d as _dwsep_ops

# dtypes each backend computes (accumulating in float32, or float64 for float64).
_DTYPES = {
    "reference": _checks.FLOAT_DTYPES,
    "cpu": _checks.FLOAT_DTYPES,
    "cuda": _checks.FLOAT_DTYPES,
    "triton": (torch.float16, torch.bfloat16, torch.float32),
}


def _check_backend_dtype(backend: str, dtype: torch.dtype) -> None:
    if dtype not in _DTYPES[backend]:
        raise TypeError(
            f"x has dtype {dtype}, which the {backend!r} backend does not support "
            f"(supported: {_DTYPES[backend]})"
        )


def _check_dwsep_args(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope):
    _checks.tensor("x", x, dims=4)
    n, c_in, height, width = x.shape
    if min(n, c_in, height, width) < 1:
        raise ValueError(f"x must be N x C_in x H x W with every size >= 1, got {tuple(x.shape)}")
    _checks.tensor("dw_weight", dw_weight, dims=4)
    k = dw_weight.shape[-1]
    _checks.shape("dw_weight", dw_weight, (c_in, 1, k, k), "C_in x 1 x k x k")
    _checks.tensor("pw_weight", pw_weight, dims=4)
    c_out = pw_weight.shape[0]
    _checks.shape("pw_weight", pw_weight, (c_out, c_in, 1, 1), "C_out x C_in x 1 x 1")
    if dw_bias is not None:
        _checks.shape("dw_bias", _checks.tensor("dw_bias", dw_bias), (c_in,), "(C_in,)")
    if pw_bias is not None:
        _checks.shape("pw_bias", _checks.tensor("pw_bias", pw_bias), (c_out,), "(C_out,)")
    _checks.same_dtype_and_device(
        "x", x, dw_weight=dw_weight, dw_bias=dw_bias, pw_weight=pw_weight, pw_bias=pw_bias
    )
    _checks.integer("stride", stride, minimum=1)
    _checks.integer("padding", padding, minimum=0)
    if padding >= k:
        raise ValueError(f"padding must be smaller than the kernel size {k}, got {padding}")
    if height + 2 * padding < k or width + 2 * padding < k:
        raise ValueError(
            f"the output would be empty: input {height}x{width} with padding {padding} is smaller "
            f"than the kernel {k}x{k}"
        )
    _checks.slope("negative_slope", negative_slope)


def dwsep_conv2d(
    x: torch.Tensor,
    dw_weight: torch.Tensor,
    dw_bias: torch.Tensor | None,
    pw_weight: torch.Tensor,
    pw_bias: torch.Tensor | None,
    *,
    stride: int = 1,
    padding: int = 0,
    negative_slope: float | None = None,
) -> torch.Tensor:
    """Fused ``leaky_relu(pointwise(depthwise(x)), negative_slope)``.

    Weights are shaped like ``nn.Conv2d``'s: ``dw_weight`` ``C_in x 1 x k x k`` (groups = C_in,
    zero padding), ``pw_weight`` ``C_out x C_in x 1 x 1``; biases may be None;
    ``negative_slope=None`` means no activation. Differentiable in ``x`` and all four parameters;
    the depthwise intermediate is never stored (it is recomputed in backward).
    """
    _check_dwsep_args(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope)
    slope = None if negative_slope is None else float(negative_slope)
    backend = select_backend(x.device)
    _check_backend_dtype(backend, x.dtype)
    if backend == "reference":
        return reference.dwsep_conv2d(
            x, dw_weight, dw_bias, pw_weight, pw_bias,
            stride=stride, padding=padding, negative_slope=slope,
        )
    op = _dwsep_ops.triton_forward if backend == "triton" else _dwsep_ops.compiled_forward
    return op(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, slope)
