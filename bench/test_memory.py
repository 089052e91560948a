"""Checks that the memory figures of ``bench.memory`` mean what the benchmark tables claim.

Cheap, no timing: they run in smoke runs (``pytest bench --benchmark-disable``) and are
skipped under ``--benchmark-only``, as they use no ``benchmark`` fixture.
"""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from bench.memory import MB, peak_allocated_bytes, retain_freed_memory, saved_for_backward_bytes


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
