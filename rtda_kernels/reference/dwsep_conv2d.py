"""Reference depthwise-separable convolution + LeakyReLU, built from ``F.conv2d``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """``leaky_relu(conv1x1(depthwise_conv(x)))`` exactly as two ``nn.Conv2d`` and a ``LeakyReLU``.

    ``dw_weight`` is ``C_in x 1 x k x k`` (groups = C_in), ``pw_weight`` is ``C_out x C_in x 1 x 1``;
    ``negative_slope=None`` leaves the output linear.
    """
    depthwise = F.conv2d(x, dw_weight, dw_bias, stride=stride, padding=padding, groups=x.shape[1])
    y = F.conv2d(depthwise, pw_weight, pw_bias)
    if negative_slope is not None:
        y = F.leaky_relu(y, negative_slope)
    return y
