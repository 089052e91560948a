"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy.

IoU_c = TP / (TP + FP + FN) over the pixels whose ground truth is not ignored (255). A class with
no ground-truth pixel and no prediction has no IoU (NaN, shown "n/a") and is left out of the mean,
as the official Cityscapes evaluation does. The 16-class score of SYNTHIA -> Cityscapes ignores
the pixels of the three classes SYNTHIA lacks (terrain, truck, train) and averages over the other
16; a prediction of one of the three is still an error. The 13-class score ("mIoU*") averages 13
of those same 16 IoUs (all but wall, fence and pole), as the papers that report it do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rtda.data.labels import (
    CLASS_NAMES,
    EVAL_CLASS_SUBSETS,
    IGNORE_INDEX,
    NUM_CLASSES,
    SYNTHIA_MISSING_IDS,
)


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` matrix: rows are ground truth, columns are
    predictions; pixels labelled ``ignore_index`` are not counted."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: ``prediction`` and ``target`` are integer maps of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction has shape {tuple(prediction.shape)} but target has "
                             f"{tuple(target.shape)}")
        prediction = prediction.reshape(-1).to("cpu", torch.int64)
        target = target.reshape(-1).to("cpu", torch.int64)
        valid = target != self.ignore_index
        if bool(((target < 0) | (target >= self.num_classes))[valid].any()):
            raise ValueError(f"target has ids outside 0..{self.num_classes - 1} that are not "
                             f"ignore ({self.ignore_index})")
        if bool(((prediction < 0) | (prediction >= self.num_classes)).any()):
            raise ValueError(f"prediction has ids outside 0..{self.num_classes - 1}")
        index = target[valid] * self.num_classes + prediction[valid]
        self.matrix += torch.bincount(index, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def scores(self, classes: Sequence[int] | None = None,
               ignored: Sequence[int] = ()) -> Scores:
        """Scores of ``classes`` (default: all). The ground-truth pixels of the ``ignored``
        classes are left out (a prediction of one of them elsewhere is still an error)."""
        classes = tuple(range(self.num_classes)) if classes is None else tuple(classes)
        kept = [c for c in range(self.num_classes) if c not in set(ignored)]
        matrix = self.matrix.double()
        tp = matrix[classes, classes]
        gt = matrix[list(classes)].sum(1)
        predicted = matrix[kept][:, list(classes)].sum(0)
        union = gt + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        valid = ~torch.isnan(iou)
        miou = float(iou[valid].mean()) if bool(valid.any()) else math.nan
        total = float(matrix[kept].sum())
        correct = float(matrix[kept, kept].sum())
        accuracy = correct / total if total else math.nan
        return Scores(classes, iou.tolist(), miou, accuracy, int(total))

    def protocol_scores(self, num_classes_eval: int = NUM_CLASSES) -> Scores:
        """The scores of ``--num-classes-eval`` 19, 16 or 13 (see the module docstring)."""
        if num_classes_eval not in EVAL_CLASS_SUBSETS:
            raise ValueError(f"num_classes_eval must be one of 19, 16, 13, got {num_classes_eval}")
        ignored = () if num_classes_eval == NUM_CLASSES else SYNTHIA_MISSING_IDS
        return self.scores(EVAL_CLASS_SUBSETS[num_classes_eval], ignored)


@dataclass(frozen=True)
class Scores:
    classes: tuple[int, ...]
    iou: list[float]  # per class in ``classes``, NaN = no ground truth and no prediction
    miou: float
    pixel_accuracy: float
    pixels: int

    def per_class(self) -> dict[str, float | None]:
        return {CLASS_NAMES[c]: (None if math.isnan(v) else v) for c, v in zip(self.classes,
                                                                                 self.iou)}

    def as_dict(self) -> dict:
        return {"miou": None if math.isnan(self.miou) else self.miou,
                "pixel_accuracy": None if math.isnan(self.pixel_accuracy) else self.pixel_accuracy,
                "pixels": self.pixels, "num_classes": len(self.classes), "iou": self.per_class()}

    def table(self) -> str:
        """A text table: per-class IoU in percent, then the mean and the pixel accuracy."""
        lines = [f"{'class':<15} {'IoU':>6}"]
        for name, value in self.per_class().items():
            lines.append(f"{name:<15} {'n/a' if value is None else f'{100 * value:6.2f}':>6}")
        lines.append(f"{f'mIoU ({len(self.classes)})':<15} {_percent(self.miou):>6}")
        lines.append(f"{'pixel acc.':<15} {_percent(self.pixel_accuracy):>6}")
        return "\n".join(lines)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:6.2f}"

