"""Checks that the memory figures of ``bench.memory`` mean what the benchmark tables claim, and
a memory property of the fused adversarial losses that the tables only report: they never
allocate the full-resolution loss map (in forward or backward).

Cheap, no timing: they run in smoke runs (``pytest bench --benchmark-disable``) and are
skipped under ``--benchmark-only``, as they use no ``benchmark`` fixture.
"""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from bench.memory import MB, peak_allocated_bytes, saved_for_backward_bytes
from bench.subjects import LOSS_SHAPES, LOSS_SUBJECTS, make_case, make_inputs, warm_up
from rtda.timing import retain_freed_memory


def test_peak_counts_a_tensor_made_inside() -> None:
    def fn() -> None:
        torch.ones(100 * MB, dtype=torch.uint8)

    assert peak_allocated_bytes(fn) == pytest.approx(100 * MB, rel=0.01)


def test_peak_is_the_maximum_not_the_total() -> None:
    def fn() -> torch.Tensor:
        first = torch.ones(40 * MB, dtype=torch.uint8)
        kept = torch.ones(30 * MB, dtype=torch.uint8)
        del first  # 70 MB held at most; then 30 + 20
        torch.ones(20 * MB, dtype=torch.uint8)
        return kept

    assert peak_allocated_bytes(fn) == pytest.approx(70 * MB, rel=0.01)


def test_peak_ignores_memory_held_before() -> None:
    before = torch.ones(50 * MB // 4)  # float32
    assert peak_allocated_bytes(lambda: before.sum()) < MB  # only the 4-byte result


def test_saved_for_backward_counts_each_storage_once() -> None:
    x = torch.randn(1000, requires_grad=True)
    w = torch.randn(1000, requires_grad=True)
    # mul saves x and w (4000 bytes each); the second mul saves w again and the product.
    assert saved_for_backward_bytes(lambda: ((x * w) * w).sum()) == 3 * 4000
    with torch.no_grad():
        assert saved_for_backward_bytes(lambda: x * w) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_retained_memory_is_reused_without_page_faults() -> None:
    assert retain_freed_memory()

    def page_faults_of_a_tensor(nbytes: int) -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(nbytes // 4)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    page_faults_of_a_tensor(40 * MB)
    # glibc's defaults would map (and fault in) a fresh 20 MB after unmapping the 40 MB block:
    # about 5,000 page faults; kept memory is reused.
    assert page_faults_of_a_tensor(20 * MB) < 100


# The paper's FCD map, 4x1x16x32, upsampled to the 512x1024 labels: one float32 loss map is 8 MiB.
_UPSAMPLED = next(shape for shape in LOSS_SHAPES if shape.output_size is not None)
_MAP_BYTES = torch.Size(_UPSAMPLED.loss_map).numel() * torch.float32.itemsize


def _loss_peak_bytes(name: str, provider: str) -> int:
    subject = LOSS_SUBJECTS[name](_UPSAMPLED.output_size)
    case = make_case(subject, provider, "fwd+bwd", make_inputs(subject, _UPSAMPLED.logits))
    warm_up(case, runs=1)
    return peak_allocated_bytes(case.step)


@pytest.mark.parametrize("name", sorted(LOSS_SUBJECTS))
def test_eager_loss_peak_holds_full_resolution_maps(name: str) -> None:
    # The control for the test below: the measurement does see the upsampled map, its label and
    # its gradient (at least two maps at once) when they are allocated.
    assert _loss_peak_bytes(name, "eager") >= 2 * _MAP_BYTES


@pytest.mark.parametrize("name", sorted(LOSS_SUBJECTS))
def test_fused_loss_never_allocates_a_full_resolution_map(name: str) -> None:
    # Forward and backward of the fused loss hold low-resolution tensors only (the logits'
    # gradients, 8 KiB a map): well under a sixteenth of one 512x1024 map.
    assert _loss_peak_bytes(name, "fused") < _MAP_BYTES / 16
