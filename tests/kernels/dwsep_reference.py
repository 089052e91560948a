"""dwsep_conv2d's float64 reference for the kernel tests and the benchmarks' checks: the output,
all five gradients, and the size of the terms each of them sums (the scale its error is measured
against).

Why the terms' size and not only max |reference|: every output and gradient element is a sum of
products (a weight gradient of N x H_out x W_out of them). Rounded in float32, its error is
about eps x the root-sum-square of those products, whatever their sum is. For a large tensor the
largest element is of the same size (random-sign sums grow like the root-sum-square), so the
scale is max |reference|; but a tensor of a few elements can cancel: hypothesis drew a 2-element
pw_weight gradient of 0.19 summing 112 products of size ~1, whose rounding error was 7.6e-6 of
it. So the scale is max(max |reference|, max root-sum-square of an element's products), the
second computed exactly by the same reference on squared inputs (every product of the expanded
sums squared: pw^2 dw^2 x^2, gz^2 pw^2 x^2, ...).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from rtda_kernels import reference

NAMES = ("x", "dw_weight", "dw_bias", "pw_weight", "pw_bias")


class Expected(NamedTuple):
    """The reference's output and gradients (None for an absent input), and for each the largest
    root-sum-square of the products summed into one of its elements."""

    y: torch.Tensor
    grads: list[torch.Tensor | None]
    y_terms: float
    grad_terms: list[float]


def _grads(out: torch.Tensor, inputs: list[torch.Tensor | None], grad_out: torch.Tensor):
    wanted = [t for t in inputs if t is not None]
    grads = iter(torch.autograd.grad(out, wanted, grad_out))
    return [None if t is None else next(grads) for t in inputs]


def expected(inputs: list[torch.Tensor | None], stride: int, padding: int,
             negative_slope: float | None, grad_y: torch.Tensor | None,
             y_actual: torch.Tensor | None = None) -> Expected:
    """The float64 reference of ``dwsep_conv2d(*inputs)`` and of the gradients of
    ``(y * grad_y).sum()`` (none if ``grad_y`` is None).

    The op defines dL/dz from the sign of its own output: near z = 0 a low-precision y can round to
    the other sign than the float64 z, so the activation mask comes from ``y_actual`` when given.
    """
    leaves = [None if t is None else t.detach().double().requires_grad_(True) for t in inputs]
    linear = dict(stride=stride, padding=padding)
    z = reference.dwsep_conv2d(*leaves, **linear)
    y = z if negative_slope is None else F.leaky_relu(z, negative_slope)
    squares = [None if t is None else (t.detach().double() ** 2).requires_grad_(True)
               for t in inputs]
    z_squares = reference.dwsep_conv2d(*squares, **linear)
    slope = 1.0 if negative_slope is None else max(1.0, abs(negative_slope))
    y_terms = slope * z_squares.detach().sqrt().max().item() if z_squares.numel() else 0.0
    if grad_y is None:
        return Expected(y.detach(), [None] * len(inputs), y_terms, [0.0] * len(inputs))
    grad_z = grad_y.detach().double()
    if negative_slope is not None:
        sign = (y_actual if y_actual is not None else y).detach().double()
        grad_z = torch.where(sign > 0, grad_z, grad_z * negative_slope)
    grads = _grads(z, leaves, grad_z)
    grad_squares = _grads(z_squares, squares, grad_z**2)
    terms = [0.0 if g is None or g.numel() == 0 else g.sqrt().max().item() for g in grad_squares]
    return Expected(y.detach(), grads, y_terms, terms)
