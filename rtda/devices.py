"""Device names as the command line and the Python API take them, checked before any work.

``torch.device("cuda")`` accepts the name on a CPU-only build and fails later, deep inside the
first ``.to()``, with an AssertionError; here a device that cannot run gets one line that says
what to pass instead.
"""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a usable ``torch.device``; ``auto`` (or None) is CUDA when present, else CPU."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this PyTorch is a CPU build" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise ValueError(f"--device {name} asked for a GPU but {why}; use --device cpu "
                             f"(or --device auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) "
                             f"are visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


__all__ = ["resolve_device"]
