"""pytest-benchmark suite for the self-training loss: eager vs torch.compile vs fused, forward and
backward as training runs it.

``eager`` is ``rtda_kernels.reference.pseudo_label_loss`` (what ``rtda.train`` runs without
``--fused``: both 1/8 logit maps through ``F.interpolate``, the teacher's softmax, max and argmax,
the student's ``F.cross_entropy`` weighted per pixel), ``compile`` is ``torch.compile`` of it,
``fused`` is ``rtda_kernels.pseudo_label_loss`` on the default backend (C++ on CPU), which
materialises neither the upsampled maps nor the pseudo-labels. Inputs: the paper's training shape,
batch 4, 19 classes, BiSeNet's 1/8 outputs 64 x 128 upsampled to 512 x 1024, half of every image
pasted source pixels (ClassMix labels), the rest pseudo-labelled. Each provider is checked once
against the reference at the timed shape before it is timed; ``extra_info`` holds ``peak_mb`` and
``saved_mb`` as the other loss benchmarks do.

    pytest bench/test_pseudo_label_loss.py --benchmark-only
    pytest bench/test_pseudo_label_loss.py --benchmark-disable     # smoke: tiny shape + checks
"""

from __future__ import annotations

import pytest
import torch

import rtda_kernels
from bench.memory import peak_allocated_bytes, saved_for_backward_bytes, to_mb
from bench.subjects import compiled, shape_label

SHAPE, SIZE = (4, 19, 64, 128), (512, 1024)
SMOKE_SHAPE, SMOKE_SIZE = (2, 19, 4, 8), (32, 64)
ROUNDS = 5  # eager takes about a second a round at the paper's shape on 2 cores
THRESHOLD = 0.968


def _eager(student, teacher, labels, size):
    return rtda_kernels.reference.pseudo_label_loss(student, teacher, labels, threshold=THRESHOLD,
                                                    output_size=size)[0]


def _fused(student, teacher, labels, size):
    return rtda_kernels.pseudo_label_loss(student, teacher, labels, threshold=THRESHOLD,
                                          output_size=size)[0]


_PROVIDERS = {"eager": _eager, "compile": compiled(_eager), "fused": _fused}


def _inputs(shape, size):
    g = torch.Generator().manual_seed(0)
    student = 4 * torch.randn(shape, generator=g)
    teacher = 4 * torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0], *size), generator=g)
    labels[:, :, size[1] // 2:] = rtda_kernels.reference.PSEUDO_LABEL
    return student, teacher, labels


@pytest.mark.parametrize("provider", list(_PROVIDERS))
def test_pseudo_label_loss(benchmark, provider, request):
    smoke = request.config.getoption("benchmark_disable", default=False)
    shape, size = (SMOKE_SHAPE, SMOKE_SIZE) if smoke else (SHAPE, SIZE)
    benchmark.group = f"pseudo_label_loss fwd+bwd ({shape_label(shape)}->{shape_label(size)})"
    student, teacher, labels = _inputs(shape, size)
    student.requires_grad_()
    fn = _PROVIDERS[provider]

    def step():
        student.grad = None
        fn(student, teacher, labels, size).backward()

    step()  # compiles the compile provider; never inside the timed rounds
    reference = student.detach().clone().requires_grad_()
    expected = _eager(reference, teacher, labels, size)
    expected.backward()
    student.grad = None
    actual = fn(student, teacher, labels, size)
    actual.backward()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(student.grad, reference.grad, rtol=1e-4, atol=1e-9)
    benchmark.extra_info["peak_mb"] = to_mb(peak_allocated_bytes(step))
    benchmark.extra_info["saved_mb"] = to_mb(saved_for_backward_bytes(
        lambda: fn(student, teacher, labels, size)))
    benchmark.pedantic(step, rounds=1 if smoke else ROUNDS, warmup_rounds=0 if smoke else 1)
