"""``scripts/gpu_check.sh`` (``make gpu-check``) and ``python -m bench.gpu`` on a machine without a
GPU: the script's no-GPU exits, the benchmark page from the CPU quick run (every group, a row per
applicable provider, results checked against eager), the budget and compile paths, and the pytest
plugin that skips test modules whose third-party dependency is missing."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu, gpu_workloads
from bench.gpu import relative_error
from bench.gpu_report import parse_tables

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
TITLES = ("dwsep_conv2d op", "light_thin stack", "losses", "discriminators", "train step",
          "inference")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def _script(tmp_path: Path, smi: str | None, python: str = "/nonexistent/python") -> str:
    env = {**os.environ, "PYTHON": python}
    if smi is not None:
        env["GPU_CHECK_NVIDIA_SMI"] = smi
    done = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _fake_smi(tmp_path: Path, body: str) -> str:
    path = tmp_path / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@no_cuda
def test_gpu_check_on_this_machine_says_there_is_no_gpu(tmp_path):
    out = _script(tmp_path, smi=None, python=sys.executable)
    assert out.startswith("gpu-check: no CUDA GPU") and out.strip().endswith("nothing to do")


@pytest.mark.parametrize("body,reason", [
    (None, "nvidia-smi not found"),
    ("exit 0", "nvidia-smi lists no GPU"),  # prints nothing
    ("echo 'No devices were found'; exit 0", "nvidia-smi lists no GPU"),
    ("echo 'NVIDIA-SMI has failed' >&2; exit 9", "nvidia-smi -L failed"),
])
def test_gpu_check_without_a_listed_gpu_exits_0_before_any_python(tmp_path, body, reason):
    smi = str(tmp_path / "missing" / "nvidia-smi") if body is None else _fake_smi(tmp_path, body)
    out = _script(tmp_path, smi)  # PYTHON does not exist: it must not be needed
    assert out.splitlines() == [f"gpu-check: no CUDA GPU on this machine ({reason}); nothing to do"]


@no_cuda
def test_gpu_check_with_a_listed_gpu_but_a_cpu_torch_exits_0(tmp_path):
    smi = _fake_smi(tmp_path, "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'")
    out = _script(tmp_path, smi, python=sys.executable)
    assert out.splitlines()[-1].startswith("gpu-check: no CUDA GPU")
    assert "sees no CUDA device" in out


def _bench(tmp_path: Path, *args: str) -> tuple[str, dict[str, list[dict[str, str]]]]:
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--device", "cpu", "--quick",
                           "--out", str(out), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    page = out.read_text()
    return page, parse_tables(page)


def _assert_ok(row: dict[str, str]) -> None:
    assert row["check"] == "ok", row
    assert math.isfinite(float(row["median ms"])) and float(row["median ms"]) > 0, row
    assert float(row["max rel err"]) <= 1e-3, row  # the CPU float32 tolerance (float16: 1e-1)


def test_quick_cpu_run_has_every_group_and_provider_checked_against_eager(tmp_path):
    page, tables = _bench(tmp_path)
    assert list(tables) == list(TITLES)
    assert "| device | CPU" in page and "| torch |" in page and "| command |" in page
    providers: dict[tuple[str, str], set[str]] = {}
    for title, rows in tables.items():
        for row in rows:
            providers.setdefault((title, row["case"]), set()).add(row["provider"])
            if row["provider"] == "eager":
                assert row["speed-up vs eager"] == "1.00"
            if not (title == "inference" and "float16" in row["case"]):
                _assert_ok(row)
            else:
                assert row["check"] == "ok" and float(row["max rel err"]) <= 1e-1
    every = {"eager", "fused-cpu", "fused-triton"}
    for title in ("dwsep_conv2d op", "light_thin stack"):
        assert providers[(title, "fwd (1,19,16,32)")] == every
        assert providers[(title, "fwd+bwd (1,19,16,32)")] == every
    losses = [case for (title, case) in providers if title == "losses"]
    assert len(losses) == 5 and all(providers[("losses", c)] == every for c in losses)
    disc = {case: p for (title, case), p in providers.items() if title == "discriminators"}
    assert disc["fcd fwd (1,19,32,32)"] == disc["fcd fwd+bwd (1,19,32,32)"] == {"eager"}
    assert disc["fcd_light fwd+bwd (1,19,32,32)"] == {"eager", "fused-cpu"}
    assert disc["fcd_light_thin fwd (1,19,32,32)"] == every
    train = {case: p for (title, case), p in providers.items() if title == "train step"}
    assert len(train) == 3 and all(p == {"eager", "fused-cpu"} for p in train.values())
    inference = {case: p for (title, case), p in providers.items() if title == "inference"}
    assert sorted(inference) == ["bisenet_resnet18 float16 (1,3,64,64)",
                                 "bisenet_resnet18 float32 (1,3,64,64)"]
    assert all(p == {"eager", "runtime"} for p in inference.values())
    assert "## Tests on this device" in page


def _main(tmp_path: Path, monkeypatch, *args: str) -> tuple[str, dict[str, list[dict[str, str]]]]:
    """``bench.gpu.main`` in this process (no interpreter start-up): the cheap paths."""
    monkeypatch.setattr(gpu_workloads, "compile_backend", gpu_workloads.compile_backend)
    out = tmp_path / "gpu.md"
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(out), *args]) == 0
    page = out.read_text()
    return page, parse_tables(page)


def test_compile_provider_and_test_summary_lines(tmp_path, monkeypatch):
    tests = tmp_path / "tests.txt"
    tests.write_text("cuda-marked tests: python -m pytest -q -m cuda tests -> 3 passed (exit 0)\n")
    page, tables = _main(tmp_path, monkeypatch, "--groups", "op", "--providers", "eager,compile",
                         "--compile-backend", "aot_eager", "--tests", str(tests))
    assert list(tables) == ["dwsep_conv2d op"]
    rows = tables["dwsep_conv2d op"]
    assert [r["provider"] for r in rows] == ["eager", "compile"] * 2
    for row in rows:
        _assert_ok(row)
    assert "-> 3 passed (exit 0)" in page


def test_an_exhausted_budget_skips_cases_but_writes_the_page(tmp_path, monkeypatch):
    _, tables = _main(tmp_path, monkeypatch, "--groups", "op,losses", "--budget-s", "0")
    rows = [row for rows in tables.values() for row in rows]
    assert len(rows) == 2 * 3 + 5 * 3  # 2 dwsep cases, 5 losses (pseudo_label_loss too)
    assert all(row["check"].startswith("skipped: time budget") for row in rows)
    assert all(row["median ms"] == "—" for row in rows)


def test_relative_error_flags_nan_missing_and_shape_mismatch():
    a = torch.tensor([1.0, -2.0])
    assert relative_error([a], [a.clone()]) == 0.0
    assert relative_error([a + 0.02], [a]) == pytest.approx(0.01)
    assert relative_error([torch.tensor([float("nan"), 0.0])], [a]) == math.inf
    assert relative_error([None], [a]) == math.inf
    assert relative_error([a[:1]], [a]) == math.inf
    assert relative_error([a], [a, a]) == math.inf


def test_pytest_plugin_skips_modules_of_a_missing_package_only(tmp_path):
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    (tmp_path / "test_needs.py").write_text("import rtda_gpu_check_absent_package\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "bench.gpu_tests", "-p",
               "no:cacheprovider", str(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    assert "gpu-check: skipped 1 test module(s), a package missing: test_needs.py " \
           "(rtda_gpu_check_absent_package)" in done.stdout
    (tmp_path / "test_broken.py").write_text("import rtda.no_such_module\n")  # ours: an error
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "error" in done.stdout
