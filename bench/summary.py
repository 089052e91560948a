"""Side-by-side summary of one subject (default: the FCD-Light&Thin stack) in one process.

For each provider (eager, compile, fused): the median of ``--repeats`` timed forward passes and
forward+backward passes after warm-up, the speed-up over eager, the peak CPU-allocator memory of
one forward+backward pass and the bytes autograd saves for backward (``bench.memory``). Printed
as a Markdown table, followed by the torch version, thread count, CPU model and the command.

The loss subjects (``--subject adversarial_loss`` or ``discriminator_loss``) run the paper's two
discriminator maps (``bench.subjects.LOSS_SHAPES``: 4x1x16x32 upsampled to 512x1024, and
4x1x64x128 as it is) in one table, with the speed-ups over eager and over torch.compile and the
peak also in units of one full-resolution float32 loss map, which the fused loss never allocates
(reported here; ``bench/test_memory.py`` asserts it).

Repetitions are interleaved (round-robin over shapes, passes and providers), so that noise from
other processes on the machine hits every provider alike.

    python -m bench.summary                          # (2,19,256,512), 7 repeats
    python -m bench.summary --shape 1,19,512,1024 --repeats 5 --no-compile --threads 2
    python -m bench.summary --subject adversarial_loss   # 31 repeats
    python -m bench.summary --subject discriminator_loss --no-compile
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from bench.memory import peak_allocated_bytes, saved_for_backward_bytes, to_mb
from bench.subjects import (
    LOSS_SHAPES,
    LOSS_SUBJECTS,
    PASSES,
    PROVIDERS,
    SHAPES,
    SUBJECTS,
    Case,
    make_case,
    make_input,
    make_inputs,
    parse_shape,
    shape_label,
    warm_up,
)
from rtda.complexity import timing_allocator
from rtda.machine import cpu_model

# Default --repeats: a loss pass takes micro- to milliseconds, so many repeats are cheap.
REPEATS, LOSS_REPEATS = 7, 31


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
        "--shape", type=parse_shape, default=None, metavar="N,19,H,W",
        help=f"input shape of the dwsep subjects (default: {shape_label(SHAPES[0])}); the loss "
        "subjects always run the paper's maps: "
        + ", ".join(shape.label() for shape in LOSS_SHAPES),
    )
    parser.add_argument(
        "--repeats", type=int, default=None, metavar="R",
        help="timed runs per provider and pass, after warm-up; the table shows their median "
        f"(default: {REPEATS}; {LOSS_REPEATS} for the loss subjects)",
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
        "pays page faults (by default freed memory is kept for reuse, as in every timing tool "
        "here: rtda.complexity.timing_allocator)",
    )
    parser.add_argument(
        "--subject", choices=[*sorted(SUBJECTS), *sorted(LOSS_SUBJECTS)], default="light_thin",
        help="light_thin: the three-layer discriminator stack (default); op: one 19->64 layer; "
        "adversarial_loss: the pixel-wise adversarial loss (one map against label 1); "
        "discriminator_loss: D's loss, Eq. (1) (a source map against 0, a target map against 1)",
    )
    args = parser.parse_args(argv)
    loss = args.subject in LOSS_SUBJECTS
    if loss and args.shape is not None:
        parser.error(f"--shape applies to {', '.join(sorted(SUBJECTS))}; {args.subject} runs "
                     "the paper's maps: " + ", ".join(shape.label() for shape in LOSS_SHAPES))
    if args.shape is None and not loss:
        args.shape = SHAPES[0]
    if args.repeats is None:
        args.repeats = LOSS_REPEATS if loss else REPEATS
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


def _command() -> str:
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else (
        sys.executable
    )
    return shlex.join([python, "-m", "bench.summary", *sys.argv[1:]])


def _warm_up_all(cases: dict[tuple, Case]) -> None:
    for key, case in cases.items():
        verb = "compiling and warming up" if case.provider == "compile" else "warming up"
        _progress(f"{verb} {' '.join(str(k) for k in key)} ...")
        start = time.perf_counter()
        warm_up(case)
        _progress(f"  done in {time.perf_counter() - start:.1f} s")


def _memory(case: Case) -> tuple[int, int]:
    """(peak allocated bytes, saved-for-backward bytes) of one pass of ``case``."""
    case.reset()
    peak = peak_allocated_bytes(case.step)
    case.reset()
    saved = saved_for_backward_bytes(case.step)
    case.reset()
    return peak, saved


def _medians(cases: dict[tuple, Case], repeats: int) -> dict[tuple, float]:
    """Median ms of each case over ``repeats`` rounds, each round running every case once in
    the dict's order (interleaved)."""
    times: dict[tuple, list[float]] = {key: [] for key in cases}
    for repeat in range(repeats):
        _progress(f"timing: repetition {repeat + 1}/{repeats}")
        for key, case in cases.items():
            times[key].append(_time_ms(case))
    for case in cases.values():
        case.reset()
    return {key: statistics.median(values) for key, values in times.items()}


def _setup(args: argparse.Namespace) -> tuple[str, list[str]]:
    """Threads and malloc as asked: (the malloc note, the providers to run)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    malloc = timing_allocator(args.default_malloc)
    providers = [p for p in PROVIDERS if not (args.no_compile and p == "compile")]
    return malloc, providers


def _footer(malloc: str) -> list[str]:
    return [
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}, {malloc}; "
        f"command: `{_command()}`",
    ]


def run(args: argparse.Namespace) -> str:
    """Build, warm up, measure and return the Markdown report."""
    if args.subject in LOSS_SUBJECTS:
        return run_loss(args)
    malloc, providers = _setup(args)
    subject = SUBJECTS[args.subject]()
    x = make_input(args.shape)
    # Timing order: pass-major, then provider (the round-robin of _medians).
    cases = {(p, pass_): make_case(subject, p, pass_, x) for pass_ in PASSES for p in providers}
    _warm_up_all(cases)

    memory = {}
    for provider in providers:
        _progress(f"measuring memory of {provider} fwd+bwd ...")
        peak, saved = _memory(cases[(provider, "fwd+bwd")])
        memory[provider] = (to_mb(peak), to_mb(saved))

    median = _medians(cases, args.repeats)
    subject.clear_grads()
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
    return "\n".join(lines + _footer(malloc))


def _ms(value: float) -> str:
    """Milliseconds with three significant-ish digits: 123.4, 12.3, 1.23, 0.123."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def run_loss(args: argparse.Namespace) -> str:
    """The loss subjects: every provider on each of ``LOSS_SHAPES``, in one Markdown table."""
    malloc, providers = _setup(args)
    subjects = {shape: LOSS_SUBJECTS[args.subject](shape.output_size) for shape in LOSS_SHAPES}
    cases = {
        (shape.label(), provider, pass_): make_case(
            subjects[shape], provider, pass_, make_inputs(subjects[shape], shape.logits))
        for shape in LOSS_SHAPES for pass_ in PASSES for provider in providers
    }
    _warm_up_all(cases)

    memory = {}
    for shape in LOSS_SHAPES:
        for provider in providers:
            _progress(f"measuring memory of {shape.label()} {provider} fwd+bwd ...")
            memory[(shape, provider)] = _memory(cases[(shape.label(), provider, "fwd+bwd")])

    median = _medians(cases, args.repeats)
    baselines = [b for b in ("eager", "compile") if b in providers]
    speedups = [f"{pass_} vs {b} (x)" for pass_ in PASSES for b in baselines]
    header = ["map -> loss map", "provider", "fwd median ms", *speedups[:len(baselines)],
              "fwd+bwd median ms", *speedups[len(baselines):], "peak MB fwd+bwd",
              "peak in full-res maps", "saved-for-backward MB"]
    inputs = "one map against label 1" if subjects[LOSS_SHAPES[0]].inputs == 1 else (
        "a source map against 0 and a target map against 1, Eq. (1)"
    )
    lines = [
        f"**{args.subject}** ({inputs}; N x 1 x h x w, bilinearly upsampled to the loss map when "
        "it is larger), float32, CPU; median of "
        f"{args.repeats} interleaved runs; \"vs eager\" = eager median / provider median, "
        "\"vs compile\" = torch.compile median / provider median (higher is faster); \"peak in "
        "full-res maps\" = peak / the bytes of one float32 N x 1 x H x W loss map.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * (len(header) - 2),
    ]
    for shape in LOSS_SHAPES:
        label = shape.label()
        map_bytes = torch.Size(shape.loss_map).numel() * torch.float32.itemsize
        for provider in providers:
            row = [label, provider]
            for pass_ in PASSES:
                own = median[(label, provider, pass_)]
                row.append(_ms(own))
                row += [f"{median[(label, b, pass_)] / own:.2f}" for b in baselines]
            peak, saved = memory[(shape, provider)]
            row += [f"{to_mb(peak):.1f}", f"{peak / map_bytes:.3f}", f"{to_mb(saved):.1f}"]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for shape in LOSS_SHAPES:
        if shape.output_size is None:
            continue
        map_bytes = torch.Size(shape.loss_map).numel() * torch.float32.itemsize
        peaks = ", ".join(
            f"{p} {memory[(shape, p)][0] / 1024:.0f} KiB" for p in providers
        )
        lines.append(
            f"{shape.label()}: one full-resolution float32 loss map "
            f"({shape_label(shape.loss_map, 'x')}) is {map_bytes / 1024:.0f} KiB; peak "
            f"allocation of one fwd+bwd pass: {peaks}."
        )
    return "\n".join(lines + _footer(malloc))


def main(argv: Sequence[str] | None = None) -> None:
    print(run(_parse_args(argv)))


if __name__ == "__main__":
    main()
