"""Side-by-side summary of one subject (default: the FCD-Light&Thin stack) in one process.

For each provider (eager, compile, fused): the median of ``--repeats`` timed forward passes and
forward+backward passes after warm-up, the speed-up over eager, the peak CPU-allocator memory of
one forward+backward pass and the bytes autograd saves for backward (``bench.memory``). Printed
as a Markdown table, followed by the torch version, thread count, CPU model and the command.

Repetitions are interleaved (round-robin over passes and providers), so that noise from other
processes on the machine hits every provider alike.

    python -m bench.summary                          # (2,19,256,512), 7 repeats
    python -m bench.summary --shape 1,19,512,1024 --repeats 5 --no-compile --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from bench.memory import (
    peak_allocated_bytes,
    retain_freed_memory,
    saved_for_backward_bytes,
    to_mb,
)
from bench.subjects import (
    PASSES,
    PROVIDERS,
    SHAPES,
    SUBJECTS,
    Case,
    make_case,
    make_input,
    parse_shape,
    shape_label,
    warm_up,
)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.summary",
        description="Time eager PyTorch, torch.compile and the fused rtda_kernels op side by side "
        "and print a Markdown table (medians of interleaved repetitions, speed-ups over eager, "
        "peak and saved-for-backward memory).",
    )
    parser.add_argument(
        "--shape", type=parse_shape, default=SHAPES[0], metavar="N,19,H,W",
        help=f"input shape (default: {shape_label(SHAPES[0])})",
    )
    parser.add_argument(
        "--repeats", type=int, default=7, metavar="R",
        help="timed runs per provider and pass, after warm-up; the table shows their median "
        "(default: 7)",
    )
    parser.add_argument(
        "--no-compile", action="store_true",
        help="leave out the torch.compile provider (compiling takes about a minute)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help=f"torch intra-op threads (default: torch's choice, {torch.get_num_threads()} here)",
    )
    parser.add_argument(
        "--default-malloc", action="store_true",
        help="leave glibc malloc's defaults: big tensors then come from fresh mmaps and every pass "
        "pays page faults (by default freed memory is kept for reuse; see bench/memory.py)",
    )
    parser.add_argument(
        "--subject", choices=sorted(SUBJECTS), default="light_thin",
        help="light_thin: the three-layer discriminator stack (default); op: one 19->64 layer",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def _time_ms(case: Case) -> float:
    case.reset()
    start = time.perf_counter()
    case.step()
    return (time.perf_counter() - start) * 1e3


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _command() -> str:
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else (
        sys.executable
    )
    return shlex.join([python, "-m", "bench.summary", *sys.argv[1:]])


def run(args: argparse.Namespace) -> str:
    """Build, warm up, measure and return the Markdown report."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    retained = not args.default_malloc and retain_freed_memory()
    malloc = "malloc keeps freed memory" if retained else "malloc defaults"
    providers = [p for p in PROVIDERS if not (args.no_compile and p == "compile")]
    subject = SUBJECTS[args.subject]()
    x = make_input(args.shape)
    cases = {(p, pass_): make_case(subject, p, pass_, x) for p in providers for pass_ in PASSES}

    for (provider, pass_), case in cases.items():
        verb = "compiling and warming up" if provider == "compile" else "warming up"
        _progress(f"{verb} {provider} {pass_} ...")
        start = time.perf_counter()
        warm_up(case)
        _progress(f"  done in {time.perf_counter() - start:.1f} s")

    memory = {}
    for provider in providers:
        _progress(f"measuring memory of {provider} fwd+bwd ...")
        case = cases[(provider, "fwd+bwd")]
        case.reset()
        peak = peak_allocated_bytes(case.step)
        case.reset()
        memory[provider] = (to_mb(peak), to_mb(saved_for_backward_bytes(case.step)))

    times: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    for repeat in range(args.repeats):
        _progress(f"timing: repetition {repeat + 1}/{args.repeats}")
        for pass_ in PASSES:
            for provider in providers:
                times[(provider, pass_)].append(_time_ms(cases[(provider, pass_)]))
    subject.clear_grads()

    median = {key: statistics.median(values) for key, values in times.items()}
    lines = [
        f"**{subject.name}**, input ({shape_label(args.shape)}), float32, CPU; median of "
        f"{args.repeats} interleaved runs; \"vs eager\" = eager median / provider median "
        "(higher is faster).",
        "",
        "| provider | fwd median ms | fwd vs eager (x) | fwd+bwd median ms | fwd+bwd vs eager (x) "
        "| peak MB fwd+bwd | saved-for-backward MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for provider in providers:
        fwd, both = median[(provider, "fwd")], median[(provider, "fwd+bwd")]
        peak_mb, saved_mb = memory[provider]
        lines.append(
            f"| {provider} | {fwd:.1f} | {median[('eager', 'fwd')] / fwd:.2f} | {both:.1f} "
            f"| {median[('eager', 'fwd+bwd')] / both:.2f} | {peak_mb:.1f} | {saved_mb:.1f} |"
        )
    lines += [
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {_cpu_model()}, {malloc}; "
        f"command: `{_command()}`",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    print(run(_parse_args(argv)))


if __name__ == "__main__":
    main()
