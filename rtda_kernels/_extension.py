"""Loads the compiled library (``rtda_kernels._C``) and records whether it, and its CUDA kernels,
are present. The op schemas are defined first (``rtda_kernels.schemas``); importing ``_C`` then
registers the C++ kernels for them (``TORCH_LIBRARY_IMPL``). A missing, broken or
mismatched build is not fatal, the ``reference`` (and ``triton``) backends still work, but it is
never silent: one warning at import names the cause and the fix, ``available_backends()`` reports
it, and forcing the ``cpu`` or ``cuda`` backend raises."""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import torch

from rtda_kernels import schemas  # noqa: F401  (defines the ops the kernels implement)

REBUILD = "pip install --no-build-isolation --force-reinstall . (in the source tree; or make setup)"


def _base(version: str) -> str:
    return version.split("+")[0]


def _load() -> str | None:
    """None when ``_C`` is loaded, else why it is not."""
    try:
        from rtda_kernels._build_info import TORCH_VERSION as built
    except ImportError:
        built = None
    if built is not None and _base(built) != _base(torch.__version__):
        return (f"rtda_kernels._C was built against torch {built}, but torch {torch.__version__} "
                f"is installed; install torch=={_base(built)} or rebuild: {REBUILD}")
    if importlib.util.find_spec("rtda_kernels._C") is None:
        where = Path(__file__).resolve().parent
        return (f"rtda_kernels._C is not built (rtda_kernels imported from {where}, which holds "
                f"no compiled library); build it: {REBUILD}")
    try:
        from rtda_kernels import _C  # noqa: F401  (imported for its op registrations)
    except ImportError as exc:  # built against another torch or CUDA, or a broken build
        return f"the compiled extension rtda_kernels._C could not be imported ({exc}); {REBUILD}"
    return None


COMPILED_ERROR: str | None = _load()
if COMPILED_ERROR is not None:
    warnings.warn(f"{COMPILED_ERROR}. Until then the fused ops run the plain-PyTorch reference "
                  f"(correct, not fused).", RuntimeWarning, stacklevel=2)


@functools.cache  # registrations happen when _C is imported and never change afterwards
def has_compiled_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the compiled library registered ``rtda_kernels::<op>`` for ``dispatch_key``."""
    if COMPILED_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"rtda_kernels::{op}", dispatch_key)


@functools.cache
def has_cuda_kernels() -> bool:
    """Whether the compiled library has CUDA kernels for any of its ops."""
    if COMPILED_ERROR is not None:
        return False
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("rtda_kernels::")]
    return any(torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA") for n in names)
