"""pytest set-up for the benchmarks (``pytest bench``; the tests/ suite does not load this).

Seeds the global RNGs before every test. Which shapes a suite runs is decided in the suite
(``pytest_generate_tests`` in ``test_dwsep_conv2d.py``): the real ones by default and with
``--benchmark-only``, a tiny one when pytest-benchmark is disabled (``--benchmark-disable``).
Before any test, the allocator setting of every timing tool here is applied
(``rtda.timing.timing_allocator``: glibc malloc keeps freed memory, so that times do not
depend on test order); ``--bench-default-malloc`` leaves malloc as it is. Which one ran is
recorded in the JSON (``--benchmark-json``) under ``rtda_allocator``, and ``bench.report`` prints it
beside the tables.
"""

from __future__ import annotations

import random

import pytest
import torch

from bench.report import ALLOCATOR_KEY
from rtda.timing import timing_allocator


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-default-malloc", action="store_true",
        help="bench: leave glibc malloc's defaults (fresh mmap + page faults for big tensors)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Raised by torch's own inductor imports (torch.utils.mkldnn), not by anything here.
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
    )
    timing_allocator(config.getoption("bench_default_malloc"))


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """Record the allocator the figures were timed under beside them."""
    output_json[ALLOCATOR_KEY] = timing_allocator(config.getoption("bench_default_malloc"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    torch.manual_seed(0)
