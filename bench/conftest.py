"""pytest set-up for the benchmarks (``pytest bench``; the tests/ suite does not load this).

Seeds the global RNGs before every test. Which shapes a suite runs is decided in the suite
(``pytest_generate_tests`` in ``test_dwsep_conv2d.py``): the real ones by default and with
``--benchmark-only``, a tiny one when pytest-benchmark is disabled (``--benchmark-disable``).
Before any test, glibc malloc is told to keep freed memory (``bench.memory.retain_freed_memory``)
so that times do not depend on test order; ``--bench-default-malloc`` leaves malloc as it is.
"""

from __future__ import annotations

import random

import pytest
import torch

from bench.memory import retain_freed_memory


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
    if not config.getoption("bench_default_malloc"):
        retain_freed_memory()


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    torch.manual_seed(0)
