"""GTA5 (Richter et al., "Playing for Data"): 24,966 game frames labelled with Cityscapes ids."""

from __future__ import annotations

from pathlib import Path

from rtda.data.dataset import SegmentationDataset
from rtda.data.labels import CITYSCAPES_ID_TO_TRAIN_ID


class GTA5(SegmentationDataset):
    """``root/images/NNNNN.png`` with ``root/labels/NNNNN.png`` (palette PNGs whose indices are
    Cityscapes label ids). A list file selects a subset (paths relative to ``root`` or to
    ``root/images``)."""

    name = "gta5"
    id_to_train_id = CITYSCAPES_ID_TO_TRAIN_ID

    @classmethod
    def layout(cls) -> str:
        return "root/images/NNNNN.png and root/labels/NNNNN.png"

    def image_dir(self) -> Path:
        return self.root / "images"

    def label_path(self, image: Path) -> Path:
        return self.root / "labels" / image.name
