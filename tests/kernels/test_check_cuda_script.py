"""``scripts/check_cuda.sh`` (part of ``make test``) fails when nvcc is missing: a CI without the
CUDA toolkit must not pass with the CUDA sources unchecked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_cuda.sh"


def test_fails_with_one_line_when_nvcc_is_not_on_path(tmp_path: Path) -> None:
    bash, dirname = shutil.which("bash"), shutil.which("dirname")
    if bash is None or dirname is None:
        pytest.skip("needs bash and dirname")
    # A PATH with what the script runs before it looks for nvcc, and no nvcc.
    (tmp_path / "dirname").symlink_to(dirname)
    run = subprocess.run([bash, str(SCRIPT)], env={"PATH": str(tmp_path)}, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "nvcc is required but not on PATH" in lines[0] and "cuda-downloads" in lines[0]
    assert str(tmp_path) in lines[0]  # where it looked
