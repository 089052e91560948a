"""``python -m bench.report``: run the benchmarks and render ``docs/benchmarks.md`` with charts.

Runs ``pytest bench --benchmark-only --benchmark-json=...`` (or reads an existing JSON with
``--json``), then writes one Markdown page: a table per section (kernels, the Winograd conv,
discriminators, a training iteration, BiSeNet inference) with each provider's median time and its speed-up over the
baseline of its group (``eager``, or ``plain`` for the training step), measured side by side in
one run; a PNG bar chart per section; the machine (CPU model, cores, SIMD, library versions); and
the roofline of the fused depthwise-separable layers (``bench.roofline``).

    python -m bench.report                              # everything (about 10 minutes here)
    python -m bench.report -k "inference and resnet18"  # a subset (pytest -k)
    python -m bench.report --json results.json          # render only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rtda.machine import cpu_model, simd_extensions

BASELINES = ("eager", "plain")
PROVIDER_ORDER = ("eager", "plain", "compile", "fused", "runtime", "runtime-compile",
                  "onnxruntime")
# Benchmark file -> section title, in page order.
SECTIONS = {
    "test_dwsep_conv2d.py": "Fused depthwise-separable conv + LeakyReLU",
    "test_adversarial_loss.py": "Fused pixel-wise adversarial losses",
    "test_winograd_conv3x3.py": "Winograd 3x3 conv + residual + ReLU (inference, ResNet-18 stages)",
    "test_models.py": "Discriminators (FCD, FCD-Light, FCD-Light&Thin)",
    "test_train_step.py": "One training iteration (BiSeNet-R18 + discriminator, both updates)",
    "test_inference.py": "BiSeNet inference, image to train-id map",
}
GROUP = re.compile(r"^(?P<subject>.+?) (?P<pass_>fwd\+bwd|fwd) \((?P<shape>[\d,]+)\)$")


@dataclass
class Group:
    """One comparison: the providers' median seconds on the same workload."""

    name: str
    medians: dict[str, float] = field(default_factory=dict)

    @property
    def baseline(self) -> str | None:
        return next((b for b in BASELINES if b in self.medians), None)

    def speedup(self, provider: str) -> float | None:
        base = self.baseline
        if base is None or provider not in self.medians:
            return None
        return self.medians[base] / self.medians[provider]


def load_groups(results: dict) -> dict[str, list[Group]]:
    """Section title -> groups (in run order) of a pytest-benchmark JSON."""
    sections: dict[str, dict[str, Group]] = {}
    for bench in results.get("benchmarks", []):
        file = Path(bench["fullname"].split("::")[0]).name
        if file not in SECTIONS or bench.get("stats") is None:
            continue
        provider = (bench.get("params") or {}).get("provider")
        if provider is None:
            continue
        groups = sections.setdefault(SECTIONS[file], {})
        group = groups.setdefault(bench["group"], Group(bench["group"]))
        group.medians[provider] = bench["stats"]["median"]
    return {title: list(sections[title].values()) for title in SECTIONS.values()
            if title in sections}


def providers_of(groups: Iterable[Group]) -> list[str]:
    seen = {p for g in groups for p in g.medians}
    return [p for p in PROVIDER_ORDER if p in seen] + sorted(seen - set(PROVIDER_ORDER))


def _ms(seconds: float | None) -> str:
    """Milliseconds: one decimal from 10 ms up, three significant digits below."""
    if seconds is None:
        return ""
    ms = 1e3 * seconds
    return f"{ms:,.1f}" if ms >= 10 else f"{ms:.3g}"


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def section_table(groups: list[Group]) -> str:
    """Markdown: one row per group, median ms per provider, then speed-ups over the baseline."""
    providers = providers_of(groups)
    faster = [p for p in providers if p not in BASELINES]
    header = ["workload", *[f"{p} ms" for p in providers], *[f"{p} x" for p in faster]]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for group in groups:
        cells = [group.name, *[_ms(group.medians.get(p)) for p in providers],
                 *[_times(group.speedup(p)) for p in faster]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section_chart(title: str, groups: list[Group], path: Path) -> Path:
    """A horizontal bar chart of each provider's speed-up over the baseline, per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    providers = [p for p in providers_of(groups) if p not in BASELINES]
    height = 0.8 / max(len(providers), 1)
    figure, axes = plt.subplots(figsize=(9, 0.5 + 0.45 * len(groups) * max(len(providers), 1)))
    for index, provider in enumerate(providers):
        values = [group.speedup(provider) or 0.0 for group in groups]
        positions = [row + index * height for row in range(len(groups))]
        axes.barh(positions, values, height=height, label=provider)
    axes.set_yticks([row + 0.4 - height / 2 for row in range(len(groups))])
    axes.set_yticklabels([group.name for group in groups], fontsize=8)
    axes.invert_yaxis()
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("speed-up over eager (higher is faster)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def machine_description() -> list[str]:
    import torch

    lines = [f"CPU: {cpu_model()} ({os.cpu_count()} cores, torch threads "
             f"{torch.get_num_threads()}; SIMD: {', '.join(simd_extensions()) or 'none found'})",
             f"torch {torch.__version__}, Python {platform.python_version()}"]
    for package in ("triton", "onnxruntime"):
        try:
            module = __import__(package)
            lines[-1] += f", {package} {module.__version__}"
        except ImportError:
            pass
    return lines


def roofline_table(groups: list[Group], machine) -> str:
    """Markdown rows: each fused dwsep workload's bound and how close the fused kernel comes."""
    from bench.roofline import subject_work

    header = ("| workload | MB moved | GFLOP | memory bound ms | compute bound ms | limited by "
              "| fused ms | fused / bound |\n|---|---:|---:|---:|---:|---|---:|---:|")
    rows = []
    for group in groups:
        match = GROUP.match(group.name)
        if match is None or "fused" not in group.medians:
            continue
        shape = tuple(int(s) for s in match["shape"].split(","))
        work = subject_work(match["subject"], shape, match["pass_"])
        if work is None:
            continue
        measured = group.medians["fused"]
        rows.append(f"| {group.name} | {work.bytes / 1e6:,.1f} | {work.flops / 1e9:.2f} | "
                    f"{_ms(work.bytes / machine.bandwidth)} | {_ms(work.flops / machine.flops)} | "
                    f"{work.limited_by(machine)} | {_ms(measured)} | "
                    f"{100 * work.bound_seconds(machine) / measured:.0f} % |")
    return header + "\n" + "\n".join(rows) if rows else ""


# The key under which a run's JSON records the machine it ran on (see record_machine).
MACHINE_KEY = "rtda_machine"
# The key under which bench/conftest.py records the allocator setting the run was timed under.
ALLOCATOR_KEY = "rtda_allocator"


def allocator_line(results: dict) -> str:
    """Which allocator setting the benchmarks ran under (rtda.complexity.timing_allocator)."""
    recorded = results.get(ALLOCATOR_KEY)
    return f"Allocator: {recorded}" if recorded else (
        "Allocator: not recorded in the JSON (a run from before bench/conftest.py recorded it)")


def record_machine(results: dict) -> dict:
    """``results`` with the machine's description and measured roofs added: taken right after
    the benchmarks, so that rendering the JSON later (elsewhere, on a busy machine) still shows
    the machine the numbers came from."""
    from bench.roofline import measure_machine

    machine = measure_machine()  # under the benchmarks' allocator setting (timing_allocator)
    return {**results, MACHINE_KEY: {"description": machine_description(),
                                     "bandwidth": machine.bandwidth, "flops": machine.flops}}


def render(results: dict, out: Path, command: str, machine=None) -> Path:
    """Write the Markdown page at ``out`` and its charts in ``out``'s ``benchmarks/`` folder.
    The machine comes from ``machine``, else the JSON's record (``record_machine``), else it is
    measured now (a JSON from elsewhere: the page says so)."""
    from bench.roofline import Machine

    recorded = results.get(MACHINE_KEY)
    if machine is None and recorded is not None:
        machine = Machine(float(recorded["bandwidth"]), float(recorded["flops"]))
    description = (list(recorded["description"]) if recorded is not None
                   else machine_description() + ["(no machine record in the JSON: described and "
                                                 "measured at render time)"])
    sections = load_groups(results)
    if not sections:
        raise ValueError("the benchmark JSON holds no benchmark of a known suite "
                         f"({', '.join(SECTIONS)})")
    images = out.parent / "benchmarks"
    lines = ["# Benchmarks", "",
             f"Generated by `{command}` ({results.get('datetime', 'unknown date')}). Times are "
             "pytest-benchmark medians; `x` columns are the baseline's median (eager PyTorch, or "
             "`plain` for the training step) divided by the provider's, measured side by side in "
             "one run: higher is faster.", ""]
    lines += [f"- {line}" for line in [*description, allocator_line(results)]] + [""]
    for index, (title, groups) in enumerate(sections.items()):
        chart = section_chart(title, groups, images / f"section{index + 1}.png")
        lines += [f"## {title}", "", section_table(groups), "",
                  f"![{title}]({chart.relative_to(out.parent).as_posix()})", ""]
    dwsep = sections.get(SECTIONS["test_dwsep_conv2d.py"])
    if dwsep:
        if machine is None:
            from bench.roofline import measure_machine

            machine = measure_machine()
        table = roofline_table(dwsep, machine)
        if table:
            lines += ["## Roofline of the fused depthwise-separable layers", "",
                      f"Measured here: copy bandwidth {machine.bandwidth / 1e9:.1f} GB/s, float32 "
                      f"matmul {machine.flops / 1e9:.1f} GFLOP/s (`bench.roofline`). The bound is "
                      "the larger of bytes / bandwidth and FLOPs / throughput; `fused / bound` "
                      "is the bound over the measured median (100 % = at the roof).", "", table,
                      ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


def run_benchmarks(json_path: Path, select: str | None) -> int:
    command = [sys.executable, "-m", "pytest", "bench", "--benchmark-only",
               f"--benchmark-json={json_path}", "-q"]
    if select:
        command += ["-k", select]
    return subprocess.call(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="render this pytest-benchmark JSON instead of running the benchmarks")
    parser.add_argument("--save-json", default=None, metavar="FILE",
                        help="keep the JSON of the run (default: docs/benchmarks.json)")
    parser.add_argument("-k", dest="select", default=None,
                        help="run only the benchmarks pytest -k selects")
    parser.add_argument("--out", default="docs/benchmarks.md", help="the page to write")
    args = parser.parse_args(argv)
    command = "python -m bench.report" + (f" -k {args.select!r}" if args.select else "")
    if args.json is not None:
        json_path = Path(args.json)
        if not json_path.is_file():
            parser.error(f"--json {json_path}: no such file")
    else:
        json_path = Path(args.save_json or Path(args.out).with_suffix(".json"))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=json_path.parent, suffix=".json",
                                         delete=False) as handle:
            partial = Path(handle.name)
        code = run_benchmarks(partial, args.select)
        if code != 0 or not partial.is_file() or partial.stat().st_size == 0:
            partial.unlink(missing_ok=True)
            print(f"error: the benchmarks failed (pytest exit status {code})", file=sys.stderr)
            return 1
        partial.write_text(json.dumps(record_machine(json.loads(partial.read_text())), indent=4))
        os.replace(partial, json_path)
    try:
        results = json.loads(json_path.read_text())
        out = render(results, Path(args.out), command)
    except (ValueError, KeyError) as err:
        print(f"error: cannot render {json_path}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} (from {json_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
