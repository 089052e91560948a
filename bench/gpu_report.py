"""The page ``python -m bench.gpu`` writes (docs/gpu.md): the machine and versions, then one
table per workload group with every provider's median time, speed-up over eager, peak memory
and its error against the reference, then the GPU test summary lines.

Kept apart from the runner so that the page's layout can be read (and tested) on its own.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import platform
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from bench.report import cpu_model

MIB = 2**20
COLUMNS = ("case", "provider", "median ms", "speed-up vs eager", "peak MiB", "+step MiB",
           "max rel err", "check", "first call s", "runs")


@dataclass
class Result:
    """One case's outcome; ``status`` is ``ok``, ``FAIL`` (error above tolerance),
    ``skipped: <why>`` or ``error: <exception>``."""

    group: str
    label: str
    provider: str
    status: str = "ok"
    median_ms: float | None = None
    first_call_s: float | None = None
    repeats: int = 0
    peak_mib: float | None = None  # max_memory_allocated during one step (GPU only)
    step_mib: float | None = None  # the same above what was allocated before the step
    error: float | None = None  # max |out - ref| / max |ref| over every compared tensor
    tolerance: float | None = None

    @property
    def failed(self) -> bool:
        return self.status == "FAIL" or self.status.startswith("error")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nvidia_smi(query: str) -> str:
    if shutil.which("nvidia-smi") is None:
        return "n/a (no nvidia-smi)"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"n/a ({type(exc).__name__})"
    return out.strip().splitlines()[0] if out.strip() else "n/a"


def environment(device: str, command: str) -> list[tuple[str, str]]:
    """(name, value) rows of the page's header: what ran, where, with which versions."""
    import rtda_kernels  # here, not at the top: it imports triton (TRITON_INTERPRET comes first)

    rows = []
    if device == "cuda":
        try:
            props = torch.cuda.get_device_properties(0)
            name = (f"{props.name} (sm_{props.major}{props.minor}, "
                    f"{props.total_memory / 2**30:.0f} GiB)")
        except RuntimeError as exc:  # a sticky CUDA error from a failed case: still write the page
            name = f"{_nvidia_smi('name')} (torch: {str(exc).splitlines()[0][:80]})"
        rows += [("device", name), ("driver", _nvidia_smi("driver_version")),
                 ("CUDA (torch)", str(torch.version.cuda)),
                 ("cuDNN", str(torch.backends.cudnn.version()))]
    else:
        rows.append(("device", f"CPU: {cpu_model()}, {torch.get_num_threads()} threads"))
    conv = getattr(torch.backends.cudnn.conv, "fp32_precision", None)
    if device == "cuda":
        rows += [("host CPU", cpu_model()),
                 ("settings", f"cudnn.benchmark={torch.backends.cudnn.benchmark}, cuDNN conv "
                              f"float32 precision {conv or torch.backends.cudnn.allow_tf32}, "
                              f"matmul precision {torch.get_float32_matmul_precision()}")]
    rows += [("torch", torch.__version__), ("triton", _version("triton")),
             ("Python", platform.python_version()),
             ("rtda_kernels backends", ", ".join(
                 f"{name} {'yes' if info.available else 'no'}"
                 for name, info in rtda_kernels.available_backends().items())),
             ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
             ("command", f"`{command}`")]
    return rows


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def _rows(results: Sequence[Result]) -> Iterable[list[str]]:
    eager = {r.label: r.median_ms for r in results if r.provider == "eager" and r.median_ms}
    for r in results:
        base = eager.get(r.label)
        speedup = base / r.median_ms if base and r.median_ms else None
        check = r.status
        if r.status == "FAIL":
            check = f"**FAIL** (tolerance {r.tolerance:g})"
        error = "—" if r.error is None else f"{r.error:.1e}"
        yield [r.label, r.provider, _number(r.median_ms),
               "—" if speedup is None else f"{speedup:.2f}" if speedup >= 0.1 else f"{speedup:.1g}",
               _number(r.peak_mib),
               _number(r.step_mib), error, check, _number(r.first_call_s, 2),
               str(r.repeats) if r.repeats else "—"]


def render(results: Sequence[Result], env: Sequence[tuple[str, str]], notes: Sequence[str],
           tests: Sequence[str] | None, descriptions: dict[str, str] | None = None,
           title: str = "GPU benchmarks and tests") -> str:
    """The markdown page: header table, notes, one table per group (in run order), tests."""
    lines = [f"# {title}", "",
             "Generated by `python -m bench.gpu` (`make gpu-check` runs it after the GPU tests); "
             "do not edit by hand.", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in env]
    lines += ["", "How to read the tables: the median of the timed runs after warm-up (CUDA "
              "events on a GPU); speed-up = eager's median / this one (> 1: faster than eager); "
              "peak MiB = `torch.cuda.max_memory_allocated` during one step, +step MiB = that "
              "peak above what was allocated before it (on the CPU: the allocator's peak while "
              "the first call ran, from `torch.profiler`); max rel err = max |out - ref| / "
              "max |ref| over the outputs and gradients (losses for a training step, logits for "
              "inference), the reference being eager PyTorch in exact float32 (no TF32); "
              "first call s includes compilation (torch.compile, Triton JIT, cuDNN autotuning).",
              ""]
    if notes:
        lines += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    for group, rows in groups.items():
        lines += [f"## {group}", ""]
        if descriptions and group in descriptions:
            lines += [descriptions[group], ""]
        lines += ["| " + " | ".join(COLUMNS) + " |",
                  "|" + "|".join("---" for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in _rows(rows)]
        lines.append("")
    lines += ["## Tests on this device", ""]
    if tests is None:
        lines += ["Not run: `python -m bench.gpu` was run by itself (`make gpu-check` runs the "
                  "cuda-marked tests and the Triton tests first).", ""]
    else:
        lines += ["```"] + list(tests) + ["```", ""]
    return "\n".join(lines)


def parse_tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """The page's group tables back as {group: [row as {column: cell}]} (for tests and tools)."""
    tables: dict[str, list[dict[str, str]]] = {}
    group = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            group = line[3:].strip()
        elif group and line.startswith("| ") and not line.startswith("| case "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == len(COLUMNS):
                tables.setdefault(group, []).append(dict(zip(COLUMNS, cells)))
    return tables
