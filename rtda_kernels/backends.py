"""The backends of the fused ops, and the one dispatch path every op goes through.

Each op declares its kernels in one place (``rtda_kernels/ops/<op>.py``: ``register(op,
{backend: Kernel})``); the public function validates its arguments and calls ``dispatch``. By
default the backend follows the input's device: ``cpu`` (C++) for CPU tensors, ``cuda`` for CUDA
tensors, falling back to ``triton`` and then to ``reference`` (plain PyTorch) when the op has no
such kernel. ``use_backend(name)`` (a context manager) or the environment variable
``RTDA_KERNELS_BACKEND`` forces one; forcing a backend that is missing, has no kernel for the op
or cannot run the input raises rather than silently running something else. See
docs/adding_an_op.md.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from rtda_kernels import _extension
from rtda_kernels._checks import FLOAT_DTYPES

BACKENDS = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "RTDA_KERNELS_BACKEND"

# Set by use_backend(). A plain module global (not a ContextVar) so that torch.compile can read it.
_forced: str | None = None


@dataclass(frozen=True)
class Kernel:
    """One op's implementation on one backend, called with the op's schema arguments (those of
    rtda_kernels/schemas.py), and the dtypes it computes."""

    run: Callable
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES


def compiled_kernel(op: str, dispatch_key: str,
                    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES) -> Kernel | None:
    """``torch.ops.rtda_kernels.<op>`` as the kernel of the backend whose dispatch key is
    ``dispatch_key`` ("CPU" or "CUDA"), or None when the compiled library has none there."""
    if not _extension.has_compiled_kernel(op, dispatch_key):
        return None
    return Kernel(getattr(torch.ops.rtda_kernels, op), dtypes)


# What the Triton kernels compute (no float64: they accumulate in float32).
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# op name -> backend -> Kernel, filled by rtda_kernels/ops/ at import.
_KERNELS: dict[str, dict[str, Kernel]] = {}


def register(op: str, kernels: dict[str, Kernel | None]) -> None:
    """Declare ``op``'s kernels; a backend mapped to None has none in this install (for example
    a compiled kernel that was not built)."""
    _KERNELS[op] = {name: k for name, k in kernels.items() if k is not None}
    for name in _KERNELS[op]:
        _check_name(name, f"register({op!r})")


def _kernels(op: str) -> dict[str, Kernel]:
    try:
        return _KERNELS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; the ops are {tuple(_KERNELS)}") from None


def has_kernel(op: str, backend: str) -> bool:
    """Whether ``op`` has a kernel on ``backend`` that this install can run."""
    _check_name(backend, "has_kernel")
    return backend in _kernels(op) and available_backends()[backend].available


@dataclass(frozen=True)
class BackendInfo:
    """Whether a backend can run in this install, and why not when it cannot."""

    name: str
    available: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'missing'} ({self.detail})"


@functools.cache  # asked on every call of an op: look the package up once
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_backends() -> dict[str, BackendInfo]:
    """What this install can run, with the reason for every backend that is missing."""
    compiled = _extension.COMPILED_ERROR
    if compiled is None:
        cpu = BackendInfo("cpu", True, "C++ kernels for CPU tensors")
    else:
        cpu = BackendInfo("cpu", False, compiled)
    if compiled is not None:
        cuda = BackendInfo("cuda", False, compiled)
    elif not _extension.has_cuda_kernels():
        cuda = BackendInfo(
            "cuda", False,
            f"built without CUDA kernels (torch {torch.__version__}, CUDA {torch.version.cuda}); "
            "they are built when torch has CUDA and nvcc is found at install time",
        )
    elif not torch.cuda.is_available():
        cuda = BackendInfo("cuda", False, "CUDA kernels built, but no CUDA device is visible")
    else:
        cuda = BackendInfo("cuda", True, "CUDA kernels for CUDA tensors")
    if not _triton_installed():
        triton = BackendInfo("triton", False, "triton is not installed (pip install triton)")
    elif torch.cuda.is_available():
        triton = BackendInfo("triton", True, "Triton kernels for CUDA tensors")
    elif _triton_interpreted():
        triton = BackendInfo("triton", True, "Triton kernels on CPU tensors via TRITON_INTERPRET=1")
    else:
        triton = BackendInfo(
            "triton", False, "no GPU; set TRITON_INTERPRET=1 to interpret the kernels on the CPU"
        )
    reference = BackendInfo("reference", True, "plain PyTorch, any device")
    return {info.name: info for info in (reference, cpu, triton, cuda)}


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {BACKENDS} or 'auto'")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the fused ops in this block on backend ``name`` (``"auto"`` restores the default)."""
    global _forced
    previous = _forced
    _forced = None if name == "auto" else _check_name(name, "use_backend")
    try:
        yield
    finally:
        _forced = previous


def _supports_device(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "cpu":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    return device.type == "cuda" or (device.type == "cpu" and _triton_interpreted())


def _automatic(op: str, device: torch.device) -> str:
    """cpu for CPU tensors; cuda, else triton, for CUDA tensors; reference otherwise (or when the
    op has no such kernel in this install). Kept cheap: it runs on every call of an op."""
    kernels = _kernels(op)
    if device.type == "cpu" and "cpu" in kernels:
        return "cpu"
    if device.type == "cuda":
        if "cuda" in kernels:
            return "cuda"
        if "triton" in kernels and _triton_installed():
            return "triton"
    return "reference"


@torch.compiler.assume_constant_result
def select_backend(op: str, device: torch.device) -> str:
    """The backend that runs ``op`` on inputs that live on ``device`` (constant under
    torch.compile)."""
    forced = _forced
    source = "use_backend"
    if forced is None:
        env = os.environ.get(ENV_VAR, "").strip()
        forced = None if env in ("", "auto") else _check_name(env, ENV_VAR)
        source = ENV_VAR
    if forced is None:
        return _automatic(op, device)
    info = available_backends()[forced]
    if not info.available:
        raise RuntimeError(f"{source} asks for backend {forced!r}, which is missing: {info.detail}")
    kernels = _kernels(op)
    if forced not in kernels:
        raise RuntimeError(
            f"{source} asks for backend {forced!r}, which has no {op} kernel ({op} runs on: "
            f"{', '.join(kernels)})"
        )
    if not _supports_device(forced, device):
        raise RuntimeError(
            f"{source} asks for backend {forced!r}, which cannot run tensors on {device}"
        )
    return forced


def dispatch(op: str, device: torch.device, dtype: torch.dtype, dtype_of: str, *args):
    """Run ``op``'s kernel on the selected backend with its schema arguments ``args``;
    ``dtype_of`` names the argument whose ``dtype`` it is, for the error."""
    backend = select_backend(op, device)
    kernel = _KERNELS[op][backend]
    if dtype not in kernel.dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in kernel.dtypes)
        raise TypeError(
            f"{dtype_of} has dtype {dtype}, which the {backend!r} backend does not support for "
            f"{op} (supported: {names}); the 'reference' backend takes any float dtype"
        )
    return kernel.run(*args)
