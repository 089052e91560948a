"""The parts of self-training: EMA teacher arithmetic, confidence-weighted pseudo-labels, ClassMix
label composition, rare-class sampling probabilities and their resumable sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import rtda_kernels
from rtda_kernels import reference
from rtda.train.sampler import ResumableSampler
from rtda.train.self_training import (
    EmaTeacher,
    class_mix_masks,
    class_pixel_counts,
    mix,
    rare_class_weights,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))


def test_ema_follows_the_formula_for_parameters_and_buffers():
    student = _net()
    teacher = EmaTeacher(student, alpha=0.99)
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training
    assert [teacher.momentum(i) for i in (0, 1, 9, 1000)] == [0.0, 0.5, 0.9, 0.99]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(2, 3, 5, 5))  # moves the BatchNorm statistics
    teacher.update(student, iteration=9)  # momentum 0.9
    for key, value in teacher.state_dict().items():
        new = student.state_dict()[key]
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * new, rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, new)  # num_batches_tracked is copied
    teacher.update(student, iteration=0)  # momentum 0: the teacher becomes the student
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, student.state_dict()[key])
    with pytest.raises(ValueError, match="alpha"):
        EmaTeacher(student, alpha=1.0)


def test_pseudo_labels_are_the_argmax_weighted_by_the_confident_fraction():
    """The loss training uses (plain and fused): the teacher's argmax, DACS's weight."""
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 10.0  # every pixel of image 0: class 1 with p = 0.99991
    logits[1, 2, 0, 0] = 10.0  # image 1: one confident pixel of class 2, the rest uniform
    student = torch.zeros(2, 3, 2, 2)
    for loss in (reference.pseudo_label_loss, rtda_kernels.pseudo_label_loss):
        value, weight = loss(student, logits)
        assert weight.tolist() == [1.0, 0.25]
        # a uniform student: log 3 per pixel, weighted by its image's fraction
        torch.testing.assert_close(value, torch.tensor((1.0 + 0.25) / 2 * math.log(3)))
        _, strict = loss(student, logits, threshold=0.99995)
        assert strict.tolist() == [0.0, 0.0]


def test_class_mix_takes_half_of_each_source_images_classes():
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 255]],
                           [[5, 5, 5, 5], [255, 255, 5, 5]],
                           [[255, 255, 255, 255], [255, 255, 255, 255]]])
    masks = class_mix_masks(labels, torch.Generator().manual_seed(0))
    first = torch.unique(labels[0][masks[0]])
    assert first.numel() == 2 and set(first.tolist()) <= {0, 1, 2, 3}
    assert torch.equal(masks[0], torch.isin(labels[0], first))  # whole classes, never 255
    assert torch.equal(masks[1], labels[1] == 5)  # one class: rounded up, it is taken
    assert not masks[2].any()
    pseudo = torch.full_like(labels, 7)
    mixed = mix(masks, labels, pseudo)
    assert torch.equal(mixed, torch.where(masks, labels, pseudo))
    images = mix(masks, torch.ones(3, 3, 2, 4), torch.zeros(3, 3, 2, 4))
    assert torch.equal(images, masks.unsqueeze(1).expand(3, 3, 2, 4).float())


def test_rare_class_weights_follow_daformers_formula():
    labels = [np.array([[0, 0, 0, 1]]), np.array([[0, 0, 0, 0]]), np.array([[2, 255, 0, 0]])]
    counts = class_pixel_counts(labels, num_classes=3)
    assert counts.tolist() == [[3, 1, 0], [4, 0, 0], [2, 0, 1]]
    t = 0.5
    f = np.array([9, 1, 1]) / 11
    p = np.exp((1 - f) / t) / np.exp((1 - f) / t).sum()
    # class 0 is in all three images, class 1 only in image 0, class 2 only in image 2
    expected = np.array([p[0] / 3 + p[1], p[0] / 3, p[0] / 3 + p[2]])
    np.testing.assert_allclose(rare_class_weights(counts, t), expected, rtol=1e-12)
    sharp = rare_class_weights(counts)  # T = 0.01: the rarest classes dominate
    assert sharp[1] < 1e-15 and math.isclose(sharp.sum(), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        rare_class_weights(counts, 0.0)


def test_weighted_sampler_is_a_function_of_the_position():
    weights = np.array([0.7, 0.0, 0.3])
    sampler = ResumableSampler(3, seed=4, weights=weights)
    it = iter(sampler)
    first = [next(it) for _ in range(2000)]
    indices = np.array([i for i, _ in first])
    assert 1 not in indices and abs((indices == 0).mean() - 0.7) < 0.04
    resumed = iter(ResumableSampler(3, seed=4, weights=weights, start=1500))
    assert [next(resumed) for _ in range(500)] == first[1500:]
    shards = [iter(ResumableSampler(3, seed=4, weights=weights, num_replicas=2, rank=r))
              for r in (0, 1)]
    assert [next(shards[k % 2]) for k in range(10)] == first[:10]
    with pytest.raises(ValueError, match="weights must be 3 non-negative"):
        ResumableSampler(3, weights=[1.0, -1.0, 1.0])
