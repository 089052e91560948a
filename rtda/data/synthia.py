"""SYNTHIA-RAND-CITYSCAPES (Ros et al.): 9,400 rendered frames with 16-bit multi-channel labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtda.data.dataset import SegmentationDataset
from rtda.data.images import read_synthia_label_ids
from rtda.data.labels import SYNTHIA_ID_TO_TRAIN_ID


class SYNTHIA(SegmentationDataset):
    """``root/RGB/NNNNNNN.png`` with ``root/GT/LABELS/NNNNNNN.png``: the class id is the label
    PNG's first (red) 16-bit channel; its 23 classes map to the 19 train ids (3 of which SYNTHIA
    never uses, hence the 16- and 13-class scores)."""

    name = "synthia"
    id_to_train_id = SYNTHIA_ID_TO_TRAIN_ID

    @classmethod
    def layout(cls) -> str:
        return "root/RGB/NNNNNNN.png and root/GT/LABELS/NNNNNNN.png"

    def image_dir(self) -> Path:
        return self.root / "RGB"

    def label_path(self, image: Path) -> Path:
        return self.root / "GT" / "LABELS" / image.name

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_synthia_label_ids(path)
