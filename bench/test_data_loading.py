"""Smoke run of ``python -m bench.data_loading`` (its figures come from running it by hand).

It runs in a child process: a BiSeNet forward+backward at 1024x512 grows this process's heap,
which would disturb ``bench/test_memory.py``'s page-fault accounting later in the same session.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_data_loading_report_runs():
    argv = ["--batch-size", "2", "--batches", "1", "--workers", "1", "--step-repeats", "1"]
    done = subprocess.run([sys.executable, "-m", "bench.data_loading", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "| gta5-size | 1914x1052 -> 1024x512 |" in done.stdout
    assert "| toy | 512x256 -> 512x256 |" in done.stdout
