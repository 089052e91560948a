"""The parts of self-training (DACS, DAFormer) that the training loop combines: an EMA teacher,
ClassMix, and rare-class sampling weights (the confidence-weighted pseudo-label loss is
``rtda_kernels.pseudo_label_loss``).

Defaults from the papers: teacher momentum 0.99 (DACS), confidence threshold 0.968 (DACS), rare-class
temperature 0.01 (DAFormer). How they fit together is in docs/training.md.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtda.data.labels import IGNORE_INDEX
from rtda.train.distributed import World, barrier, broadcast_buffers

EMA_ALPHA, RCS_TEMPERATURE = 0.99, 0.01


class EmaTeacher:
    """A copy of the student whose weights follow it as an exponential moving average.

    At iteration ``i`` the momentum is ``min(1 - 1 / (i + 1), alpha)`` (DACS), so the teacher
    starts as the student and settles to ``alpha``. Floating-point buffers (BatchNorm running
    statistics) are averaged the same way and integer ones copied, so the teacher normalises with
    statistics that match its weights. The teacher runs in eval mode and gets no gradient.
    """

    def __init__(self, student: nn.Module, alpha: float = EMA_ALPHA) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.model = copy.deepcopy(student).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def momentum(self, iteration: int) -> float:
        return min(1.0 - 1.0 / (iteration + 1), self.alpha)

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int, world: World | None = None) -> None:
        """One EMA step towards ``student`` (the same architecture, not a DDP wrapper). With
        ``world``, every rank then takes rank 0's buffers: DDP keeps the weights equal, but each
        rank's BatchNorm statistics see its own part of the batch."""
        m = self.momentum(iteration)
        for t, s in zip(self.model.parameters(), student.parameters(), strict=True):
            t.mul_(m).add_(s.detach(), alpha=1.0 - m)
        for t, s in zip(self.model.buffers(), student.buffers(), strict=True):
            if t.is_floating_point():
                t.mul_(m).add_(s.detach(), alpha=1.0 - m)
            else:
                t.copy_(s)
        if world is not None:
            broadcast_buffers(self.model, world)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def class_mix_masks(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image, True where the source label is one of half of the classes it contains (the
    half drawn at random, rounded up; ignored pixels never), N x H x W (ClassMix)."""
    masks = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for i, label in enumerate(labels):
        classes = torch.unique(label)
        classes = classes[classes != IGNORE_INDEX]
        if classes.numel() == 0:
            continue
        keep = (classes.numel() + 1) // 2
        chosen = classes[torch.randperm(classes.numel(), generator=generator)[:keep].to(
            classes.device)]
        masks[i] = torch.isin(label, chosen)
    return masks


def mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``source`` where ``mask`` (N x H x W) holds, ``target`` elsewhere; images (N x C x H x W)
    or label maps (N x H x W)."""
    if source.dim() == mask.dim() + 1:
        mask = mask.unsqueeze(1)
    return torch.where(mask, source, target)


def class_pixel_counts(labels: Iterable[np.ndarray | torch.Tensor], num_classes: int
                       ) -> np.ndarray:
    """Images x classes matrix of labelled pixel counts (255 and other ids >= num_classes
    ignored), the statistics rare-class sampling needs, computed once per dataset."""
    rows = []
    for label in labels:
        flat = np.asarray(label).reshape(-1)
        flat = flat[flat < num_classes]
        rows.append(np.bincount(flat, minlength=num_classes))
    if not rows:
        raise ValueError("class_pixel_counts needs at least one label map")
    return np.stack(rows).astype(np.int64)


def class_counts_cache() -> Path:
    """``$RTDA_CACHE_DIR/class_counts``, else ``$XDG_CACHE_HOME/rtda/class_counts``."""
    if os.environ.get("RTDA_CACHE_DIR"):
        return Path(os.environ["RTDA_CACHE_DIR"]) / "class_counts"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtda" / (
        "class_counts")


def dataset_class_counts(dataset, num_classes: int = 19, cache: Path | None = None,
                         progress: bool = False) -> np.ndarray:
    """:func:`class_pixel_counts` of ``dataset``'s train-id labels at their own size, read once
    and cached (keyed by the label files' paths, sizes and modification times)."""
    files = [s.label for s in dataset.samples]
    if any(f is None for f in files):
        raise ValueError(f"rare-class sampling needs the labels of every {dataset.name} image")
    key = hashlib.sha256(f"{dataset.name} {num_classes}".encode())
    for f in files:
        stat = f.stat()
        key.update(f"{f.resolve()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    folder = cache if cache is not None else class_counts_cache()
    path = folder / f"{dataset.name}-{key.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    from tqdm import tqdm

    labels = (dataset.id_to_train_id[dataset.read_raw_label(f)]
              for f in tqdm(files, desc=f"class counts of {dataset.name}", disable=not progress))
    counts = class_pixel_counts(labels, num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".npy", delete=False) as handle:
        np.save(handle, counts)
    os.replace(handle.name, path)
    return counts


def rare_class_weights(counts: np.ndarray, temperature: float = RCS_TEMPERATURE) -> np.ndarray:
    """Sampling probability of each image under rare-class sampling (DAFormer): a class ``c`` is
    drawn with ``P(c) ∝ exp((1 - f_c) / T)``, ``f_c`` its share of all labelled pixels, then an
    image containing it uniformly; returned as the per-image probability of that two-step draw."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    present = counts > 0
    totals = counts.sum(axis=0)
    classes = totals > 0
    if not classes.any():
        raise ValueError("no labelled pixel in any image: rare-class sampling has nothing to weigh")
    frequency = totals[classes] / totals.sum()
    logits = (1.0 - frequency) / temperature
    p_class = np.exp(logits - logits.max())
    p_class /= p_class.sum()
    per_image = present[:, classes] / present[:, classes].sum(axis=0)
    weights = per_image @ p_class
    return weights / weights.sum()


def rare_class_source_weights(source, temperature: float, world: World,
                              progress: bool = False) -> np.ndarray:
    """:func:`rare_class_weights` of ``source``: rank 0 counts the classes and caches them first,
    the other ranks then read the cache."""
    if world.is_main:
        dataset_class_counts(source, progress=progress)
    barrier(world)
    return rare_class_weights(dataset_class_counts(source), temperature)
