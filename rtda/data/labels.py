"""Label definitions: the 19 Cityscapes train ids and the maps from each dataset's raw ids.

The Cityscapes ids, train ids, names and colours come from ``cityscapesscripts`` (the package the
official evaluation ships in), so they cannot drift from the benchmark's. Every map is a 256- or
65536-entry lookup table: a raw id that no table lists maps to ``IGNORE_INDEX``.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19

_TRAIN_LABELS = sorted((lab for lab in _CITYSCAPES_LABELS if 0 <= lab.trainId < IGNORE_INDEX),
                       key=lambda lab: lab.trainId)
assert [lab.trainId for lab in _TRAIN_LABELS] == list(range(NUM_CLASSES))

#: Names of the 19 train ids, in train-id order ("road", "sidewalk", ..., "bicycle").
CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN_LABELS)
#: RGB colour of each train id (the Cityscapes palette).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = tuple(tuple(lab.color) for lab in _TRAIN_LABELS)
#: Cityscapes label id of each train id (what the official evaluation reads).
TRAIN_ID_TO_LABEL_ID: tuple[int, ...] = tuple(lab.id for lab in _TRAIN_LABELS)
#: Cityscapes label id of each class name.
LABEL_ID: dict[str, int] = {lab.name: lab.id for lab in _CITYSCAPES_LABELS if lab.id >= 0}

# SYNTHIA-RAND-CITYSCAPES class ids (its README: 0 void, 1 sky, 2 building, ..., 22 lanemarking)
# and the train id each one is evaluated as; parking-slot, road-work and lanemarking are ignored,
# as in the usual SYNTHIA -> Cityscapes protocol.
SYNTHIA_CLASSES: tuple[str, ...] = (
    "void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car",
    "traffic sign", "pedestrian", "bicycle", "motorcycle", "parking-slot", "road-work",
    "traffic light", "terrain", "rider", "truck", "bus", "train", "wall", "lanemarking")
_SYNTHIA_TO_CITYSCAPES_NAME = {"pedestrian": "person"}

#: The 16 classes SYNTHIA -> Cityscapes is scored on, and the 13 of "mIoU*" (no wall, fence, pole).
SYNTHIA_16 = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
              "traffic sign", "vegetation", "sky", "person", "rider", "car", "bus", "motorcycle",
              "bicycle")
SYNTHIA_13 = tuple(name for name in SYNTHIA_16 if name not in ("wall", "fence", "pole"))
#: Train ids SYNTHIA has no pixels of; the 16- and 13-class scores ignore their ground truth.
SYNTHIA_MISSING_IDS: tuple[int, ...] = tuple(
    CLASS_NAMES.index(name) for name in CLASS_NAMES if name not in SYNTHIA_16)
EVAL_CLASS_SUBSETS: dict[int, tuple[int, ...]] = {
    19: tuple(range(NUM_CLASSES)),
    16: tuple(CLASS_NAMES.index(name) for name in SYNTHIA_16),
    13: tuple(CLASS_NAMES.index(name) for name in SYNTHIA_13),
}


def _lookup_table(size: int, pairs: dict[int, int]) -> np.ndarray:
    table = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for raw, train_id in pairs.items():
        table[raw] = train_id
    return table


#: Cityscapes label id (also GTA5's label encoding) -> train id; 256 entries.
CITYSCAPES_ID_TO_TRAIN_ID: np.ndarray = _lookup_table(
    256, {lab.id: lab.trainId for lab in _CITYSCAPES_LABELS
          if lab.id >= 0 and 0 <= lab.trainId < IGNORE_INDEX})

_TRAIN_ID_BY_NAME = {name: i for i, name in enumerate(CLASS_NAMES)}
#: SYNTHIA class id -> train id; 65536 entries, because SYNTHIA stores ids in 16-bit channels.
SYNTHIA_ID_TO_TRAIN_ID: np.ndarray = _lookup_table(
    1 << 16, {i: _TRAIN_ID_BY_NAME[_SYNTHIA_TO_CITYSCAPES_NAME.get(name, name)]
              for i, name in enumerate(SYNTHIA_CLASSES)
              if _SYNTHIA_TO_CITYSCAPES_NAME.get(name, name) in _TRAIN_ID_BY_NAME})


#: A flat 768-entry Pillow palette: label id -> its Cityscapes colour (GTA5's label PNGs are palette
#: images of this kind: the pixel value is the label id, the palette only colours it).
LABEL_ID_PALETTE: list[int] = [0] * 768
for _lab in _CITYSCAPES_LABELS:
    if _lab.id >= 0:
        LABEL_ID_PALETTE[3 * _lab.id: 3 * _lab.id + 3] = list(_lab.color)


def palette() -> np.ndarray:
    """A 256x3 uint8 colour table: train id -> RGB, ignore (and unused ids) -> black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:NUM_CLASSES] = np.asarray(CLASS_COLORS, dtype=np.uint8)
    return table


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """An HxW train-id map as an HxWx3 uint8 RGB image in the Cityscapes palette."""
    return palette()[np.asarray(train_ids, dtype=np.uint8)]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """An HxW train-id map as Cityscapes label ids (ignore -> 0, "unlabeled"), the format of the
    official evaluation's prediction files."""
    table = np.zeros(256, dtype=np.uint8)
    table[:NUM_CLASSES] = TRAIN_ID_TO_LABEL_ID
    return table[np.asarray(train_ids, dtype=np.uint8)]
