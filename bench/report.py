"""``python -m bench.report``: run the benchmarks and render ``docs/benchmarks.md`` with charts.

The one benchmark front-end. It runs ``pytest bench --benchmark-only --benchmark-json=...`` (or
reads an existing JSON with ``--json``) and writes one page: a headline (the fused providers
against eager and torch.compile), a table per section with each provider's median and its
speed-up over the group's baseline, the memory of each forward+backward pass, a PNG bar chart per
section, the machine, and the roofline of the fused depthwise-separable layers
(``bench.roofline``). ``--readme README.md`` puts the headline into the README as well.

    python -m bench.report --readme README.md           # everything (`make bench`)
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

BASELINES = ("eager", "plain", "adversarial")  # a group's baseline: the first of these it has
PROVIDER_ORDER = ("eager", "plain", "compile", "fused", "runtime", "runtime-compile",
                  "onnxruntime", "adversarial", "self-training", "both")
# Benchmark file -> section title, in page order.
SECTIONS = {
    "test_dwsep_conv2d.py": "Fused depthwise-separable conv + LeakyReLU",
    "test_adversarial_loss.py": "Fused pixel-wise adversarial losses",
    "test_pseudo_label_loss.py": "Fused self-training loss (pseudo-labels + weighted cross-entropy)",
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
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)  # (peak, saved) MB

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
        extra = bench.get("extra_info") or {}
        if "peak_mb" in extra:
            group.memory[provider] = (float(extra["peak_mb"]), float(extra.get("saved_mb", 0.0)))
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


def memory_table(groups: list[Group]) -> str:
    """Markdown: peak and saved-for-backward MB per provider of each fwd+bwd group that has them."""
    groups = [g for g in groups if g.memory and "fwd+bwd" in g.name]
    if not groups:
        return ""
    providers = providers_of(groups)
    header = ["workload", *[f"{p} peak MB" for p in providers],
              *[f"{p} saved MB" for p in providers]]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for group in groups:
        cells = [group.name]
        for index in (0, 1):
            cells += [f"{group.memory[p][index]:,.1f}" if p in group.memory else ""
                      for p in providers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The README's headline rows: group names that start with one of these, in this order.
HEADLINE = ("light_thin stack fwd (", "light_thin stack fwd+bwd (", "adversarial_loss fwd+bwd (",
            "discriminator_loss fwd+bwd (", "pseudo_label_loss fwd+bwd (", "fcd_light fwd+bwd (", "fcd_light_thin fwd+bwd (",
            "train step fcd_light_thin (")
README_BEGIN, README_END = "<!-- bench.report:headline -->", "<!-- /bench.report:headline -->"


def headline_table(results: dict) -> str:
    """Markdown: the fused provider against its baseline and torch.compile on the workloads the
    README shows, with both peaks where measured; the same rows open docs/benchmarks.md."""
    groups = [g for section in load_groups(results).values() for g in section]
    rows = ["| workload | fused vs eager | fused vs torch.compile | peak MB, eager -> fused |",
            "|---|---:|---:|---:|"]
    for prefix in HEADLINE:
        for group in (g for g in groups if g.name.startswith(prefix) and "fused" in g.medians):
            compiled = group.medians.get("compile")
            versus = "" if compiled is None else _times(compiled / group.medians["fused"])
            base = group.baseline
            peak = (f"{group.memory[base][0]:,.1f} -> {group.memory['fused'][0]:,.1f}"
                    if base in group.memory and "fused" in group.memory else "")
            rows.append(f"| {group.name} | {_times(group.speedup('fused'))} | {versus} | {peak} |")
    return "\n".join(rows)


def readme_block(results: dict) -> str:
    """What ``--readme`` puts between the README's markers: the headline and its origin."""
    when = results.get("datetime", "unknown date")
    cpu = next((line for line in (results.get(MACHINE_KEY) or {}).get("description", [])
                if line.startswith("CPU:")), "CPU: not recorded")
    return (f"{headline_table(results)}\n\nFrom `python -m bench.report` ({when}; {cpu}); "
            "every table, the memory figures and the roofline: "
            "[docs/benchmarks.md](docs/benchmarks.md).")


def update_readme(path: Path, results: dict) -> None:
    """Replace what lies between the README's headline markers with ``readme_block``."""
    text = path.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path} has no '{README_BEGIN}' ... '{README_END}' block to fill")
    start = begin + len(README_BEGIN)
    path.write_text(text[:start] + "\n" + readme_block(results) + "\n" + text[end:])


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


# How the figures are taken: rendered on the page, once.
METHOD = (
    "Each benchmark checks its result against eager once at the timed shape, then times its "
    "rounds after warm-up (`torch.compile` compiles during warm-up). `eager` is plain PyTorch as "
    "a user writes it, `compile` is `torch.compile` of it, `fused` is `rtda_kernels` on its "
    "`cpu` backend; `plain` and `fused` in the training step are `python -m rtda.train` without "
    "and with `--fused`. \"peak MB\" is the CPU allocator's peak during one forward+backward "
    "pass and \"saved MB\" what autograd keeps for backward (`bench/memory.py`), measured once "
    "outside the timed rounds. Timings on a shared machine are noisy: compare the ratios of one "
    "run, and re-run on your machine (`make bench`).")

# The key under which a run's JSON records the machine it ran on (see record_machine).
MACHINE_KEY = "rtda_machine"
# The key under which bench/conftest.py records the allocator setting the run was timed under.
ALLOCATOR_KEY = "rtda_allocator"


def allocator_line(results: dict) -> str:
    """Which allocator setting the benchmarks ran under (rtda.timing.timing_allocator)."""
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
    lines += ["## Headline", "", headline_table(results), "", METHOD, ""]
    for index, (title, groups) in enumerate(sections.items()):
        chart = section_chart(title, groups, images / f"section{index + 1}.png")
        lines += [f"## {title}", "", section_table(groups), ""]
        memory = memory_table(groups)
        if memory:
            lines += ["Memory of one forward+backward pass (`bench.memory`):", "", memory, ""]
        lines += [f"![{title}]({chart.relative_to(out.parent).as_posix()})", ""]
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
    parser.add_argument("--readme", default=None, metavar="FILE",
                        help="also fill FILE's headline block (between "
                        f"'{README_BEGIN}' and '{README_END}'); `make bench` passes README.md")
    args = parser.parse_args(argv)
    if args.readme is not None and args.select:
        parser.error("--readme needs the full run: the headline of a -k subset would be partial")
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
        if args.readme is not None:
            update_readme(Path(args.readme), results)
    except (ValueError, KeyError, OSError) as err:
        print(f"error: cannot render {json_path}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}" + (f" and {args.readme}'s headline" if args.readme else "")
          + f" (from {json_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
