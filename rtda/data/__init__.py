"""Datasets of RTDA: GTA5, SYNTHIA and Cityscapes in their published layouts, mapped to the 19
Cityscapes train ids, and the built-in toy domain pair written in the GTA5 and Cityscapes
layouts."""

from __future__ import annotations

import os

from rtda.data.cityscapes import Cityscapes
from rtda.data.dataset import SegmentationDataset, collate
from rtda.data.gta5 import GTA5
from rtda.data.images import BadSampleError, DatasetError
from rtda.data.labels import CLASS_COLORS, CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from rtda.data.synthia import SYNTHIA
from rtda.data.transforms import PAPER_SIZE, SegmentationTransform, parse_size

DATASETS: dict[str, type[SegmentationDataset]] = {
    "gta5": GTA5, "synthia": SYNTHIA, "cityscapes": Cityscapes}


def build_dataset(name: str, root: str | os.PathLike, split: str | None = None,
                  **kwargs) -> SegmentationDataset:
    """The dataset ``name`` at ``root``. ``split`` is Cityscapes' train/val/test (GTA5 and
    SYNTHIA have no split folders: select a subset with ``list_file``). Other keyword arguments go
    to :class:`SegmentationDataset` (``labels``, ``transform``, ``list_file``, ``skip_bad``)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    if name == "cityscapes":
        return Cityscapes(root, split=split or "train", **kwargs)
    if split not in (None, "all", "train"):
        raise DatasetError(f"{name} has no {split!r} split folder: pass a list file to select "
                           f"a subset")
    return DATASETS[name](root, **kwargs)


__all__ = [
    "CLASS_COLORS", "CLASS_NAMES", "DATASETS", "GTA5", "IGNORE_INDEX", "NUM_CLASSES", "PAPER_SIZE",
    "SYNTHIA", "BadSampleError", "Cityscapes", "DatasetError", "SegmentationDataset",
    "SegmentationTransform", "build_dataset", "collate", "parse_size",
]
