"""Argument validation for the public functions: run once, in Python, before any kernel, with
messages that name the argument and say what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(name: str, value: object, *, dims: int | None = None) -> torch.Tensor:
    """``value`` must be a floating-point tensor (of rank ``dims`` when given)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor {FLOAT_DTYPES}, got {value.dtype}")
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-D tensor, got shape {tuple(value.shape)}")
    return value


def shape(name: str, value: torch.Tensor, expected: Sequence[int], meaning: str) -> None:
    """``value`` must have exactly the shape ``expected`` (described as ``meaning``)."""
    if tuple(value.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {meaning} = {tuple(expected)}, got {tuple(value.shape)}"
        )


def same_dtype_and_device(reference_name: str, reference: torch.Tensor, **others) -> None:
    """Every tensor in ``others`` (None allowed) must share the dtype and device of ``reference``."""
    for name, value in others.items():
        if value is None:
            continue
        if value.dtype != reference.dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype} but {reference_name} has {reference.dtype}: "
                "mixed dtypes are not supported, cast them to one dtype"
            )
        if value.device != reference.device:
            raise ValueError(
                f"{name} is on {value.device} but {reference_name} is on {reference.device}: "
                "all tensors must be on one device"
            )


def integer(name: str, value: object, *, minimum: int) -> int:
    """``value`` must be an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def slope(name: str, value: object) -> float | None:
    """A LeakyReLU slope: None (no activation) or a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or None, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{name} must be a finite number >= 0 or None, got {value} (the backward pass reads "
            "the activation mask from the sign of the output, which needs a non-negative slope)"
        )
    return float(value)
