"""Backend selection for the fused ops.

By default the backend follows the input's device: ``cpu`` (C++) for CPU tensors, ``cuda`` for
CUDA tensors, falling back to ``triton`` and then to ``reference`` (plain PyTorch) when a compiled
kernel is missing. ``use_backend(name)`` (a context manager) or the environment variable
``RTDA_KERNELS_BACKEND`` forces one; forcing a backend that cannot run an input raises an error
rather than silently running something else.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rtda_kernels import _extension

BACKENDS = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "RTDA_KERNELS_BACKEND"

# Set by use_backend(). A plain module global (not a ContextVar) so that torch.compile can read it.
_forced: str | None = None


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
    elif not _extension.has_compiled_kernel("dwsep_conv2d", "CUDA"):
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


def _automatic(device: torch.device) -> str:
    """cpu for CPU tensors; cuda, else triton, for CUDA tensors; reference otherwise (or when the
    compiled library is missing). Kept cheap: it runs on every call of an op."""
    if device.type == "cpu" and _extension.COMPILED_ERROR is None:
        return "cpu"
    if device.type == "cuda":
        if _extension.has_compiled_kernel("dwsep_conv2d", "CUDA"):
            return "cuda"
        if _triton_installed():
            return "triton"
    return "reference"


@torch.compiler.assume_constant_result
def select_backend(device: torch.device) -> str:
    """The backend that runs an op whose inputs live on ``device`` (constant under torch.compile)."""
    forced = _forced
    source = "use_backend"
    if forced is None:
        env = os.environ.get(ENV_VAR, "").strip()
        forced = None if env in ("", "auto") else _check_name(env, ENV_VAR)
        source = ENV_VAR
    if forced is None:
        return _automatic(device)
    info = available_backends()[forced]
    if not info.available:
        raise RuntimeError(f"{source} asks for backend {forced!r}, which is missing: {info.detail}")
    if not _supports_device(forced, device):
        raise RuntimeError(
            f"{source} asks for backend {forced!r}, which cannot run tensors on {device}"
        )
    return forced
