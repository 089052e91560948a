"""Every Triton kernel variant compiled ahead of time for the GPUs RTDA targets, without a GPU.

``python -m rtda_kernels.triton.aot`` records the launches the launchers make for a GPU (paper
shapes plus the shapes the Triton tests run on a GPU), specialises them with Triton's own binder
and compiles each distinct (kernel, dtype, constexprs): the paper shapes' variants for each of
sm_70, 72, 75, 80, 87 and 90, the variants only the test shapes produce for one of them each
(``--spread``: all 360 x 6 take ~10 minutes here cold, too long for ``make test``; run
``python -m rtda_kernels.triton.aot --cases ...`` without it for the full matrix). It runs in a
child process: kernels imported under TRITON_INTERPRET=1 cannot be compiled. Compiles land in
Triton's on-disk cache, so a second run takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rtda_kernels.triton import aot
from tests.kernels.test_adversarial_loss import LARGE_SHAPES, SHAPES
from tests.kernels.test_dwsep_conv2d import TRITON_CASES

pytest.importorskip("triton")

# Largest dynamic shared memory one block may use, per target (bytes; CUDA programming guide).
MAX_SHARED = {70: 96 * 1024, 72: 48 * 1024, 75: 64 * 1024, 80: 163 * 1024, 87: 163 * 1024,
              90: 227 * 1024}


def test_every_variant_compiles_for_every_target(tmp_path):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"dwsep": TRITON_CASES, "loss": SHAPES + LARGE_SHAPES}))
    rows_path = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
    run = subprocess.run(
        [sys.executable, "-m", "rtda_kernels.triton.aot", "--cases", str(cases), "--spread",
         "--jobs", "2",
         "--json-out", str(rows_path)],
        capture_output=True, text=True, env=env, timeout=1800)
    print(run.stdout)
    rows = json.loads(rows_path.read_text())
    failures = [f"{r['variant']} for {r['target']}: {r['error']}" for r in rows if "error" in r]
    assert run.returncode == 0 and not failures, "\n".join(failures) or run.stderr[-3000:]

    targets = {f"sm_{cap}" for cap in aot.TARGETS}
    assert {r["target"] for r in rows} == targets
    by_variant: dict[str, set[str]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], set()).add(r["target"])
    everywhere = [v for v, t in by_variant.items() if t == targets]
    assert len(everywhere) >= 105  # the paper shapes' variants (111 today)
    assert len(by_variant) >= 320  # with those only the test shapes produce (360 today)
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"_fwd_kernel", "_grad_d_kernel", "_grad_pw_kernel", "_grad_x_kernel",
                       "_grad_dw_kernel", "resized_kernel", "flat_kernel", "finalize_kernel",
                       "band_kernel", "weights_kernel", "grad_kernel"}
    for kernel in kernels:
        assert {r["dtype"] for r in rows if r["kernel"] == kernel} == set(aot.DTYPES), kernel
    too_big = [f"{r['variant']} for {r['target']}: {r['shared']} bytes" for r in rows
               if r["shared"] > MAX_SHARED[int(r["target"][3:])]]
    assert not too_big, "shared memory over the per-block limit:\n" + "\n".join(too_big)
    assert all(r["cubin_bytes"] > 0 for r in rows)


def test_plan_for_gpu_changes_the_launch_plan():
    """Meta tensors get the GPU plan only inside plan_for_gpu (the interpreter's otherwise)."""
    import torch

    from rtda_kernels.triton.target import multiprocessors, on_gpu, plan_for_gpu

    meta = torch.device("meta")
    assert not on_gpu(meta) and not on_gpu(torch.device("cpu"))
    with plan_for_gpu(8):
        assert on_gpu(meta) and multiprocessors(meta) == 8 and not on_gpu(torch.device("cpu"))
    assert not on_gpu(meta)
    with pytest.raises(ValueError, match="multiprocessor_count"):
        with plan_for_gpu(0):
            pass
