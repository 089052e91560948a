"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the segmenter (``model``, the key ``rtda.evaluate`` reads), the discriminator,
both optimisers and schedulers, the AMP scaler, the RNG states (torch, NumPy, Python, CUDA), the
iteration, how many samples each data stream has consumed, the best validation mIoU, and the
resolved config. Files are written atomically (:func:`rtda.checkpoint_io.save_atomic`):
``iter_NNNNNN.pt`` every ``checkpoint_every`` iterations (the newest ``KEEP`` are kept), ``last.pt``
when the run ends or is stopped, ``best.pt`` at the best validation mIoU. Each carries a checksum
(:mod:`rtda.checkpoint_io`). Resuming picks the intact file with the highest iteration.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtda.checkpoint_io import CheckpointError, load, save_atomic

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


def latest(run_dir: str | Path, *, intact: bool = False,
           skipped: list[str] | None = None) -> Path:
    """The checkpoint of ``run_dir`` with the highest iteration, verified.

    When it is corrupt: with ``intact`` the newest intact one (a line per corrupt file goes to
    ``skipped``), else a :class:`CheckpointError` that names it and offers the newest intact one.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"resume directory not found: {run_dir}")
    candidates = [p for p in (*run_dir.glob("iter_*.pt"), run_dir / "last.pt") if p.is_file()]
    if not candidates:
        raise CheckpointError(f"no checkpoint (iter_*.pt or last.pt) in {run_dir}")
    ordered, corrupt = [], []
    for path in candidates:
        try:
            ordered.append((int(read(path)["iteration"]), path.name == "last.pt", path))
        except CheckpointError as err:
            corrupt.append((path, str(err)))
    ordered.sort(reverse=True)
    newest = ordered[0][2] if ordered else None
    # a corrupt file newer than every intact one (last.pt, or an iter_ file numbered higher)
    newer = [(p, e) for p, e in corrupt if p.name == "last.pt" or not ordered
             or _number(p) > ordered[0][0]]
    if newer and not intact:
        path, error = newer[0]
        offer = (f"; the newest intact one is {newest.name} (iteration {ordered[0][0]}): resume "
                 f"from it with --resume {run_dir} --resume-intact" if newest
                 else "; no intact checkpoint is left")
        raise CheckpointError(error + offer)
    if newest is None:
        raise CheckpointError(f"no intact checkpoint in {run_dir}: " + "; ".join(
            e for _, e in corrupt))
    if skipped is not None:
        skipped.extend(f"skipped {e}" for _, e in corrupt)
    return newest


def _number(path: Path) -> int:
    return int(path.stem.split("_")[1]) if path.name.startswith("iter_") else -1


def clean_stale(run_dir: str | Path) -> list[Path]:
    """Removes the temporary files that an interrupted write left in ``run_dir`` (the caller
    holds the run's lock, so no write is in progress); returns them."""
    stale = sorted(Path(run_dir).glob(".*.pt.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def link(out: Path, source: str, name: str) -> Path:
    """``out/name`` as a second name of ``out/source`` (a hard link, atomically replacing what
    was there; a copy where the file system has no hard links)."""
    temporary = out / f".{name}.{os.getpid()}.link.tmp"
    temporary.unlink(missing_ok=True)
    try:
        os.link(out / source, temporary)
    except OSError:
        shutil.copy2(out / source, temporary)
    os.replace(temporary, out / name)
    return out / name


def read(path: str | Path) -> dict[str, Any]:
    """A training checkpoint (not just a model), verified: its checksum and format are checked."""
    data = load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not an RTDA training checkpoint (format "
                              f"{found!r}, expected {FORMAT!r})")
    return data


__all__ = ["KEEP", "clean_stale", "latest", "link", "read", "rng_state", "set_rng_state",
           "write"]
