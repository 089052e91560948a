"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the segmenter (``model``, the key ``rtda.evaluate`` reads), the discriminator,
both optimisers and schedulers, the AMP scaler, the RNG states (torch, NumPy, Python, CUDA), the
iteration, how many samples each data stream has consumed, the best validation mIoU, and the
resolved config. Files are written atomically (:func:`rtda.checkpoints.save_atomic`):
``iter_NNNNNN.pt`` every ``checkpoint_every`` iterations (the newest ``KEEP`` are kept), ``last.pt``
when the run ends or is stopped, ``best.pt`` at the best validation mIoU. Resuming picks the file
with the highest iteration.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtda.checkpoints import CheckpointError, save_atomic

KEEP = 2
FORMAT = "rtda-train-1"


def rng_state() -> dict[str, Any]:
    """The global RNG states, as tensors and plain values (loadable with ``weights_only``)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "position": int(position), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32),
                         numpy["position"], numpy["has_gauss"], numpy["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write(state: dict[str, Any], out: Path, name: str) -> Path:
    path = save_atomic({"format": FORMAT, **state}, out / name)
    if name.startswith("iter_"):
        for old in sorted(out.glob("iter_*.pt"))[:-KEEP]:
            old.unlink(missing_ok=True)
    return path


def latest(run_dir: str | Path) -> Path:
    """The checkpoint of ``run_dir`` with the highest iteration."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"resume directory not found: {run_dir}")
    candidates = [p for p in (*run_dir.glob("iter_*.pt"), run_dir / "last.pt") if p.is_file()]
    if not candidates:
        raise CheckpointError(f"no checkpoint (iter_*.pt or last.pt) in {run_dir}")
    return max(candidates, key=lambda p: (_iteration(p), p.name == "last.pt"))


def _iteration(path: Path) -> int:
    if path.name.startswith("iter_"):
        return int(path.stem.split("_")[1])
    return int(read(path)["iteration"])


def read(path: str | Path) -> dict[str, Any]:
    """A training checkpoint (not just a model): its format is checked."""
    data = _load_full(Path(path))
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an RTDA training checkpoint (format "
                              f"{data.get('format')!r}, expected {FORMAT!r})")
    return data


def _load_full(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None


__all__ = ["KEEP", "latest", "read", "rng_state", "set_rng_state", "write"]
