"""The checkpoint file: atomic writes, a verified digest, and a segmenter rebuilt from one.

A checkpoint is a ``torch.save``d dict with at least ``model`` (the segmenter's state_dict) and,
when training wrote it, ``config`` (``backbone``, ``num_classes``, ``resolution`` as [height,
width], ...). A bare segmenter state_dict is accepted too: its backbone and class count are read off
its keys and shapes. Writes are atomic: a temporary file in the same folder, flushed to disk, then
renamed over the target, so a crash leaves the old checkpoint or the new one, never half of one.

Every checkpoint written here carries ``sha256``, a digest of its payload (every tensor's bytes,
dtype and shape, every other value's repr), and every read verifies it: torch's zip reader does not
check its own CRCs, so a flipped bit would otherwise load as a slightly different model. Files
without the key (a bare state_dict from elsewhere) load unverified.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rtda.devices import resolve_device
from rtda.models import BACKBONES, BiSeNet, build_segmenter

CHECKSUM = "sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, corrupt, or of another model."""


def _feed(digest: Any, value: Any) -> int:
    """Adds ``value`` to ``digest``; returns the bytes of tensor data it holds."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        return tensor.numel() * tensor.element_size()
    size = 0
    if isinstance(value, Mapping):
        digest.update(b"{")
        for key, item in value.items():
            size += _feed(digest, key) + _feed(digest, item)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[" if isinstance(value, list) else b"(")
        for item in value:
            size += _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode() + b";")
    return size


def payload_digest(payload: Mapping[str, Any]) -> tuple[str, int]:
    """(sha256 hex digest of ``payload``, bytes of tensor data in it)."""
    digest = hashlib.sha256()
    size = _feed(digest, {k: v for k, v in payload.items() if k != CHECKSUM})
    return digest.hexdigest(), size


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file and a rename; a checkpoint dict (one
    with ``model``) gets its ``sha256``. A full disk raises :class:`CheckpointError` naming the
    path and the bytes needed; the file at ``path`` is then the previous one, untouched."""
    path = Path(path)
    size = 0
    if isinstance(obj, Mapping) and "model" in obj:
        checksum, size = payload_digest(obj)
        obj = {**obj, CHECKSUM: checksum}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(err, Exception) and _disk_full(err, path.parent, size):
            free = shutil.disk_usage(path.parent).free
            raise CheckpointError(
                f"no space left on the device writing {path}: it needs about {size:,} bytes, "
                f"{free:,} are free; the previous checkpoint is intact (free some space, then "
                f"resume)") from None
        raise
    return path


def _disk_full(err: Exception, folder: Path, size: int) -> bool:
    # torch's zip writer reports a failed write as RuntimeError("... file write failed"), without
    # the errno: a write that failed with less room than the checkpoint needs counts as full
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "write failed" in str(err) and shutil.disk_usage(folder).free < max(size, 1)


def load(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, verified when it carries ``sha256``;
    every failure is a one-line :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted copy or write?")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt or foreign file
        if not zipfile.is_zipfile(path):
            with path.open("rb") as file:
                pickled = file.read(1) == b"\x80"  # torch.save's legacy (pre-zip) format
            if not pickled:
                raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a torch.save "
                                      f"file)") from None
        if "weights_only" in str(err).lower() or "unsupported global" in str(err).lower():
            raise CheckpointError(f"{path} holds Python objects other than tensors and plain "
                                  f"values (a whole pickled model?); save its state_dict() "
                                  f"instead") from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if isinstance(data, Mapping) and CHECKSUM in data:
        if payload_digest(data)[0] != data[CHECKSUM]:
            raise CheckpointError(f"{path} is corrupt: its contents do not match the checksum "
                                  f"written with it (changed on disk after it was saved)")
        data = {k: v for k, v in data.items() if k != CHECKSUM}
    return data


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict with ``model`` (a bare state_dict is wrapped)."""
    data = load(path)
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
    for name, expected in model.state_dict().items():
        value = state[name]
        if value.shape != expected.shape:
            raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, but BiSeNet "
                                  f"{backbone} with {classes} classes needs "
                                  f"{tuple(expected.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{path}: {name} holds {bad} non-finite value(s) (NaN or "
                                  f"inf): the weights are broken; use an earlier checkpoint")
    model.load_state_dict(state)
    config.update(backbone=backbone, num_classes=classes)
    return model.to(resolve_device(device)).eval(), config
