"""Reading and writing checkpoints, and rebuilding a segmenter from one.

A checkpoint is a ``torch.save``d dict with at least ``model`` (the segmenter's state_dict) and,
when training wrote it, ``config`` (``backbone``, ``num_classes``, ``resolution`` as [height,
width], ...). A bare segmenter state_dict is accepted too: its backbone and class count are read off
its keys and shapes. Writes are atomic: a temporary file in the same folder, flushed to disk, then
renamed over the target, so a crash leaves the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rtda.models import BACKBONES, BiSeNet, build_segmenter


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or of another model."""


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict with ``model`` (a bare state_dict is wrapped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a checkpoint dict")
    if "model" not in data:
        if all(isinstance(v, torch.Tensor) for v in data.values()) and data:
            data = {"model": dict(data), "config": {}}
        else:
            raise CheckpointError(f"{path} has no 'model' entry and is not a state_dict")
    return dict(data)


def infer_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str, int]:
    """(backbone, num_classes) of a BiSeNet state_dict, read off its keys and shapes."""
    weight = state.get("classifier.weight")
    if weight is None or weight.dim() != 4:
        raise CheckpointError("state_dict has no 'classifier.weight': not a BiSeNet segmenter")
    num_classes = int(weight.shape[0])
    keys = set(state)
    for backbone in BACKBONES:
        if keys == set(BiSeNet(backbone, num_classes).state_dict()):
            return backbone, num_classes
    raise CheckpointError(f"state_dict does not match BiSeNet on any of {', '.join(BACKBONES)}")


def load_segmenter(path: str | os.PathLike, device: str | torch.device = "cpu",
                   num_classes: int | None = None) -> tuple[BiSeNet, dict[str, Any]]:
    """The segmenter stored at ``path``, in eval mode on ``device``, and the checkpoint's config.

    ``num_classes``, when given, must match the checkpoint's.
    """
    checkpoint = read_checkpoint(path)
    state = checkpoint["model"]
    config = dict(checkpoint.get("config") or {})
    backbone, classes = infer_architecture(state)
    if config.get("backbone", backbone) != backbone:
        raise CheckpointError(f"{path}: config says backbone {config['backbone']!r} but the "
                              f"weights are {backbone!r}")
    if num_classes is not None and classes != num_classes:
        raise CheckpointError(f"{path} predicts {classes} classes, expected {num_classes}")
    model = build_segmenter(backbone, classes)
    model.load_state_dict(state)
    config.update(backbone=backbone, num_classes=classes)
    return model.to(device).eval(), config
