"""Confusion-matrix metrics on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from rtda.data.labels import CLASS_NAMES
from rtda.metrics import ConfusionMatrix

ROAD, SIDEWALK, BUILDING = 0, 1, 2
TERRAIN, WALL = CLASS_NAMES.index("terrain"), CLASS_NAMES.index("wall")


def _matrix(pairs, num_classes=19):
    """pairs: (ground truth, prediction, pixel count)"""
    cm = ConfusionMatrix(num_classes)
    target = torch.tensor([g for g, _, n in pairs for _ in range(n)])
    prediction = torch.tensor([p for _, p, n in pairs for _ in range(n)])
    cm.update(prediction, target)
    return cm


def test_perfect_prediction_and_absent_classes():
    scores = _matrix([(ROAD, ROAD, 5), (BUILDING, BUILDING, 3)]).scores()
    assert scores.miou == 1.0 and scores.pixel_accuracy == 1.0
    per_class = scores.per_class()
    assert per_class["road"] == 1.0 and per_class["sidewalk"] is None  # n/a: left out of the mean
    assert sum(v is not None for v in per_class.values()) == 2
    assert "n/a" in scores.table()


def test_hand_computed_iou():
    # road: 6 right, 2 called sidewalk; sidewalk: 3 right, 1 called road, 1 called building
    # (building has no ground truth: one false positive)
    cm = _matrix([(ROAD, ROAD, 6), (ROAD, SIDEWALK, 2), (SIDEWALK, SIDEWALK, 3),
                  (SIDEWALK, ROAD, 1), (SIDEWALK, BUILDING, 1)])
    scores = cm.scores()
    iou = scores.per_class()
    assert iou["road"] == pytest.approx(6 / (8 + 7 - 6))
    assert iou["sidewalk"] == pytest.approx(3 / (5 + 5 - 3))
    assert iou["building"] == 0.0  # predicted, never right: counts in the mean
    assert scores.miou == pytest.approx((6 / 9 + 3 / 7 + 0) / 3)
    assert scores.pixel_accuracy == pytest.approx(9 / 13) and scores.pixels == 13


def test_ignore_pixels_are_not_counted():
    cm = ConfusionMatrix()
    cm.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 255, 255, 1]))
    assert cm.matrix.sum() == 2 and cm.scores().miou == 1.0


def test_16_and_13_class_protocol():
    # GT terrain pixels are ignored in the 16-class score; predicting terrain is still an error
    cm = _matrix([(ROAD, ROAD, 4), (ROAD, TERRAIN, 4), (TERRAIN, ROAD, 8), (WALL, WALL, 2),
                  (SIDEWALK, SIDEWALK, 2)])
    s19 = cm.protocol_scores(19).per_class()
    assert s19["road"] == pytest.approx(4 / (8 + 12 - 4)) and s19["terrain"] == 0.0
    s16 = cm.protocol_scores(16)
    assert len(s16.classes) == 16 and "terrain" not in s16.per_class()
    assert s16.per_class()["road"] == pytest.approx(4 / 8)
    assert s16.miou == pytest.approx((0.5 + 1 + 1) / 3)
    s13 = cm.protocol_scores(13)
    assert "wall" not in s13.per_class() and s13.per_class()["road"] == pytest.approx(0.5)
    assert s13.miou == pytest.approx((0.5 + 1) / 2)  # the same IoUs, wall left out of the mean
    assert s16.pixel_accuracy == pytest.approx(8 / 12)
    with pytest.raises(ValueError, match="19, 16, 13"):
        cm.protocol_scores(18)


def test_merge_and_empty():
    a, b = _matrix([(ROAD, ROAD, 2)]), _matrix([(ROAD, SIDEWALK, 2)])
    a.merge(b)
    assert a.scores().per_class()["road"] == 0.5
    assert math.isnan(ConfusionMatrix().scores().miou)


def test_bad_input():
    cm = ConfusionMatrix()
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target has ids outside 0..18"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.tensor([0, 19]))
    with pytest.raises(ValueError, match="prediction has ids outside"):
        cm.update(torch.tensor([0, -1]), torch.tensor([0, 0]))
