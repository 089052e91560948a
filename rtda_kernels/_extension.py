"""Loads the compiled library (``rtda_kernels._C``) and records whether it, and its CUDA kernels,
are present. Importing ``_C`` runs the C++ ``TORCH_LIBRARY`` registrations; a missing or broken
build is not fatal: the ``reference`` (and ``triton``) backends still work, and
``available_backends()`` reports the reason."""

from __future__ import annotations

import functools

import torch

COMPILED_ERROR: str | None
try:
    from rtda_kernels import _C  # noqa: F401  (imported for its op registrations)

    COMPILED_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    COMPILED_ERROR = f"the compiled extension rtda_kernels._C could not be imported ({exc})"


@functools.cache  # registrations happen when _C is imported and never change afterwards
def has_compiled_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the compiled library registered ``rtda_kernels::<op>`` for ``dispatch_key``."""
    if COMPILED_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"rtda_kernels::{op}", dispatch_key)
