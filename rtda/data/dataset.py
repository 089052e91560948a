"""The dataset base class every loader shares: a list of (image, label) files, a raw-id -> train-id
table, a transform, and the handling of bad samples.

A sample is a dict: ``image`` (3xHxW float32), ``label`` (HxW int64 train ids, 255 = ignore; absent
for unlabelled data), ``name`` (the image path relative to the image folder) and ``index``. With
``skip_bad=True`` a sample that cannot be read comes back as ``{"skipped": path, "reason": ...}``
instead of raising, and :func:`collate` drops it and reports it in the batch's ``skipped`` list, so
the count survives DataLoader worker processes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rtda.data.images import BadSampleError, DatasetError, read_label_ids, read_rgb
from rtda.data.transforms import SegmentationTransform


@dataclass(frozen=True)
class SampleFiles:
    image: Path
    label: Path | None


def require_dir(path: Path, what: str, layout: str) -> Path:
    """``path`` if it is a directory, else a DatasetError naming it and the expected layout."""
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path} (expected layout: {layout})")
    return path


def read_list_file(list_file: str | os.PathLike, bases: Sequence[Path]) -> list[Path]:
    """The files a list file names, one path per line (blank lines and '#' comments skipped), each
    relative to the first of ``bases`` under which it exists."""
    list_path = Path(list_file)
    try:
        text = list_path.read_text()
    except OSError as err:
        raise DatasetError(f"cannot read list file {list_path}: {err.strerror or err}") from None
    files = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        for base in bases:
            if (base / entry).is_file():
                files.append(base / entry)
                break
        else:
            where = " or ".join(str(base) for base in bases)
            raise DatasetError(f"{list_path}:{number}: {entry!r} is not a file under {where}")
    return files


class SegmentationDataset(Dataset):
    """Images with optional label maps, mapped to the 19 train ids and transformed.

    Subclasses say where the images are (:meth:`image_dir`, :attr:`image_pattern`), where each
    one's label is (:meth:`label_path`) and how a label file is read (:meth:`read_raw_label`).
    ``__getitem__`` accepts an index, or ``(index, seed)`` so that a sampler can make the random
    augmentation a pure function of its own state (exact resumption); with a plain index the
    augmentation draws from torch's (per-worker seeded) generator.
    """

    name = "segmentation"
    #: raw label id -> train id (uint8, 255 = ignore)
    id_to_train_id: np.ndarray

    def __init__(self, root: str | os.PathLike, *, labels: bool = True,
                 transform: SegmentationTransform | None = None,
                 list_file: str | os.PathLike | None = None, skip_bad: bool = False) -> None:
        self.root = Path(root)
        require_dir(self.root, f"{self.name} root", self.layout())
        self.with_labels = labels
        self.transform = transform if transform is not None else SegmentationTransform()
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = []  # (path, reason) found while listing
        images = (read_list_file(list_file, self.list_bases()) if list_file is not None
                  else sorted(self.list_images()))
        self.samples = self._pair(images)
        if not self.samples:
            source = f"list file {list_file}" if list_file is not None else str(self.root)
            raise DatasetError(f"no {self.name} samples found in {source} "
                               f"(expected layout: {self.layout()})")

    # -- what subclasses define -------------------------------------------------------------
    #: glob pattern of the images under :meth:`image_dir`
    image_pattern = "*.png"

    @classmethod
    def layout(cls) -> str:
        raise NotImplementedError

    def image_dir(self) -> Path:
        """The folder the images lie under; sample names are relative to it."""
        raise NotImplementedError

    def list_images(self) -> Iterable[Path]:
        folder = require_dir(self.image_dir(), f"{self.name} images folder", self.layout())
        return folder.glob(self.image_pattern)

    def list_bases(self) -> Sequence[Path]:
        """Folders a list file's entries may be relative to."""
        return self.root, self.image_dir()

    def label_path(self, image: Path) -> Path:
        raise NotImplementedError

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_label_ids(path)

    # -- shared -------------------------------------------------------------------------------
    def _pair(self, images: Iterable[Path]) -> list[SampleFiles]:
        samples = []
        for image in images:
            try:
                label = self.label_path(image) if self.with_labels else None
                if label is not None and not label.is_file():
                    raise BadSampleError(image, f"has no label file (expected {label})")
            except BadSampleError as err:
                self._bad(err)
                continue
            samples.append(SampleFiles(image, label))
        return samples

    def _bad(self, error: BadSampleError) -> None:
        if not self.skip_bad:
            raise error
        warnings.warn(f"skipping {error}", stacklevel=3)
        self.skipped.append((error.path, error.reason))

    def __len__(self) -> int:
        return len(self.samples)

    def relative_name(self, path: Path) -> str:
        """``path`` relative to the image folder ("aachen/aachen_000000_000019_leftImg8bit.png")."""
        return path.relative_to(self.image_dir()).as_posix()

    def load(self, index: int) -> tuple[Any, np.ndarray | None]:
        """The raw sample: (RGB Pillow image, HxW uint8 train-id label or None), size-checked."""
        files = self.samples[index]
        image = read_rgb(files.image)
        if files.label is None:
            return image, None
        label = self.id_to_train_id[self.read_raw_label(files.label)]
        if label.shape != (image.height, image.width):
            raise BadSampleError(files.label, f"label is {label.shape[1]}x{label.shape[0]} but "
                                              f"its image is {image.width}x{image.height}")
        return image, label

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        try:
            image, label = self.load(index)
        except BadSampleError as err:
            if not self.skip_bad:
                raise
            return {"skipped": err.path, "reason": err.reason, "index": index}
        rng = None
        if self.transform.is_random:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            rng = np.random.default_rng(seed)
        tensor, target = self.transform(image, label, rng)
        sample = {"image": tensor, "name": self.relative_name(self.samples[index].image),
                  "index": index}
        if target is not None:
            sample["label"] = target
        return sample


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stacks samples into a batch, dropping skipped ones into ``batch["skipped"]``.

    Labels are stacked when they share a size and kept as a list otherwise (evaluation keeps each
    label at its original size). ``image`` is None when every sample in the batch was skipped.
    """
    good = [s for s in batch if "skipped" not in s]
    out: dict[str, Any] = {"skipped": [(s["skipped"], s["reason"]) for s in batch
                                       if "skipped" in s]}
    out["image"] = torch.stack([s["image"] for s in good]) if good else None
    out["name"] = [s["name"] for s in good]
    out["index"] = torch.tensor([s["index"] for s in good], dtype=torch.int64)
    if good and "label" in good[0]:
        labels = [s["label"] for s in good]
        same = all(lab.shape == labels[0].shape for lab in labels)
        out["label"] = torch.stack(labels) if same else labels
    return out


def check_split(split: str, choices: Sequence[str], dataset: str) -> str:
    if split not in choices:
        raise DatasetError(f"split must be one of {', '.join(choices)} for {dataset}, "
                           f"got {split!r}")
    return split

