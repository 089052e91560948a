"""Cityscapes (Cordts et al.): 2,975 train and 500 val frames at 2048x1024."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from rtda.data.dataset import SegmentationDataset, check_split, require_dir
from rtda.data.images import BadSampleError
from rtda.data.labels import CITYSCAPES_ID_TO_TRAIN_ID

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(SegmentationDataset):
    """``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``root/gtFine/<split>/<city>/*_gtFine_labelIds.png``. As a target domain for training it is
    read without labels (``labels=False``); a list file entry is relative to ``root`` or to
    ``root/leftImg8bit/<split>``."""

    name = "cityscapes"
    id_to_train_id = CITYSCAPES_ID_TO_TRAIN_ID

    def __init__(self, root: str | os.PathLike, split: str = "train", **kwargs) -> None:
        self.split = check_split(split, SPLITS, "cityscapes")
        super().__init__(root, **kwargs)

    @classmethod
    def layout(cls) -> str:
        return (f"root/leftImg8bit/<split>/<city>/*{IMAGE_SUFFIX} and "
                f"root/gtFine/<split>/<city>/*{LABEL_SUFFIX}")

    def image_dir(self) -> Path:
        return self.root / "leftImg8bit" / self.split

    def list_images(self) -> Iterable[Path]:
        if self.with_labels:
            require_dir(self.root / "gtFine" / self.split, f"Cityscapes {self.split} labels",
                        self.layout())
        require_dir(self.image_dir(), f"Cityscapes {self.split} split", self.layout())
        return self.image_dir().glob(f"*/*{IMAGE_SUFFIX}")

    def label_path(self, image: Path) -> Path:
        if not image.name.endswith(IMAGE_SUFFIX):
            raise BadSampleError(image, f"is not a Cityscapes image name (*{IMAGE_SUFFIX})")
        stem = image.name[: -len(IMAGE_SUFFIX)]
        return self.root / "gtFine" / self.split / image.parent.name / f"{stem}{LABEL_SUFFIX}"
