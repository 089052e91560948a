"""Test set-up: seed everything and, without a GPU, make Triton interpret its kernels on the CPU.

TRITON_INTERPRET must be in the environment before triton is imported; rtda_kernels imports its
Triton kernels lazily, at first use, so setting it here is early enough.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
