"""GPU benchmarks side by side: fused (CUDA and Triton) vs eager cuDNN vs ``torch.compile``.

    python -m bench.gpu --out docs/gpu.md                         # on a CUDA GPU, ~4-5 minutes
    python -m bench.gpu --device cpu --quick --out /tmp/gpu.md    # tiny shapes, every code path

Groups (``bench.gpu_workloads``, ``bench.gpu_models``): the dwsep_conv2d op and the
FCD-Light&Thin stack at 4x19x512x1024, both losses, the three discriminators at 4x19x512x1024,
one training iteration (BiSeNet-R18/-R101 with each discriminator, source and target batches of
2x3x512x1024) and BiSeNet inference at 1024x512 and 2048x1024 in float32 and float16.

Every case is checked once against eager PyTorch in exact float32, then warmed up, then timed
(repeats sized to ``FULL_TIMING.case_seconds`` each). The cases without ``torch.compile`` run
first, the compile cases after them while the time budget (``--budget-s``) lasts: a compile case
starts only if its estimated compile time (a guess per workload, rescaled by the compile times
seen so far) still fits; the others are listed as skipped. A second run is faster (inductor's
caches).
On a CPU, ``fused-triton`` runs under ``TRITON_INTERPRET=1`` (set here before Triton loads).
Exit status 1 when any case raised or missed its tolerance; the page is written either way.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Before numpy loads (torch imports it): the Triton interpreter calls numpy, whose OpenBLAS threads
# otherwise keep spinning after each call, against torch's threads (CPU training steps ran 10x
# slower after the interpreted cases). No timed path on a GPU uses numpy's BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

from bench.gpu_report import MIB, Result, environment, render  # noqa: E402

if TYPE_CHECKING:  # not at run time: it imports rtda_kernels (and triton) before TRITON_INTERPRET
    from bench.gpu_workloads import Runnable, Variant

# Timing: warm-up runs, then repeats sized to ~case_seconds (within [min, max]).


@dataclass(frozen=True)
class Timing:
    warmup: int
    min_repeats: int
    max_repeats: int
    case_seconds: float


FULL_TIMING = Timing(warmup=2, min_repeats=5, max_repeats=200, case_seconds=0.4)
QUICK_TIMING = Timing(warmup=0, min_repeats=1, max_repeats=1, case_seconds=0.0)
DEFAULT_BUDGET_S = 270.0


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_once(runnable: Runnable, device: str) -> float:
    """Seconds of one ``step()`` (after an untimed ``reset()``): CUDA events on a GPU."""
    runnable.reset()
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runnable.step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    runnable.step()
    return time.perf_counter() - start_s


def relative_error(actual: Sequence[torch.Tensor | None],
                   expected: Sequence[torch.Tensor | None]) -> float:
    """max |a - e| / max |e| (1 when e is all zeros), the worst over the tensor pairs; inf for
    a missing tensor, a shape mismatch or a non-finite value."""
    if len(actual) != len(expected):
        return math.inf
    worst = 0.0
    for a, e in zip(actual, expected):
        if a is None or e is None:
            if a is e:
                continue
            return math.inf
        a, e = a.detach().double().cpu(), e.detach().double().cpu()
        if a.shape != e.shape:
            return math.inf
        if e.numel() == 0:
            continue
        scale, diff = e.abs().max().item(), (a - e).abs().max().item()
        if not (math.isfinite(scale) and math.isfinite(diff)):
            return math.inf
        worst = max(worst, diff / (scale if scale > 0 else 1.0))
    return worst


def run_case(variant: Variant, provider: str, device: str, timing: Timing) -> Result:
    """Check, warm up, measure the memory of one step and time ``provider`` on ``variant``."""
    from bench.memory import peak_allocated_bytes

    result = Result(variant.group, variant.label, provider, tolerance=variant.tolerance)
    reference = variant.reference()
    runnable = variant.build(provider)
    _sync(device)
    start = time.perf_counter()
    if device == "cuda":
        outputs = runnable.check()
        _sync(device)
    else:  # no allocator statistics on the CPU: the profiler's peak during the first call
        held: list = []
        result.step_mib = peak_allocated_bytes(lambda: held.append(runnable.check())) / MIB
        outputs = held[0]
    result.first_call_s = time.perf_counter() - start
    result.error = relative_error(outputs, reference)
    del outputs
    if not result.error <= variant.tolerance:
        result.status = "FAIL"
    last = None
    for _ in range(timing.warmup):
        last = _time_once(runnable, device)
    if device == "cuda":
        runnable.reset()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runnable.step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        result.peak_mib, result.step_mib = peak / MIB, (peak - before) / MIB
    repeats = timing.min_repeats
    if last is not None and timing.case_seconds > 0:
        repeats = min(timing.max_repeats,
                      max(timing.min_repeats, math.ceil(timing.case_seconds / max(last, 1e-6))))
    times = [_time_once(runnable, device) for _ in range(repeats)]
    result.median_ms, result.repeats = statistics.median(times) * 1e3, repeats
    return result


def _progress(index: int, total: int, r: Result, elapsed: float) -> str:
    head = f"[{index}/{total} {elapsed:4.0f} s] {r.group}: {r.label} {r.provider}:"
    if r.median_ms is None:
        return f"{head} {r.status}"
    memory = f"{r.peak_mib:.0f} MiB" if r.peak_mib is not None else f"+{r.step_mib:.1f} MiB"
    return (f"{head} {r.median_ms:.3f} ms, {memory}, err {r.error:.1e} {r.status} "
            f"(first call {r.first_call_s:.1f} s, {r.repeats} runs)")


def run_all(variants: Sequence[Variant], device: str, timing: Timing, budget_s: float,
            log: Callable[[str], None] = print) -> list[Result]:
    """Every variant x provider, compile cases last, within ``budget_s``; results in table
    order (variants as given, providers as listed)."""
    cases = [(v, p) for v in variants for p in v.providers]
    order = [c for c in cases if c[1] != "compile"] + [c for c in cases if c[1] == "compile"]
    done: dict[tuple[int, str], Result] = {}
    ratios: list[float] = []
    start, current = time.perf_counter(), None
    for index, (variant, provider) in enumerate(order, 1):
        if current is not variant:
            if current is not None:
                current.release()
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            current = variant
        elapsed = time.perf_counter() - start
        estimate = 0.0
        if provider == "compile":
            estimate = variant.compile_cost_s * (statistics.median(ratios) if ratios else 1.0)
        if elapsed + estimate > budget_s:
            why = f"skipped: time budget ({budget_s:.0f} s"
            why += f", compile estimated {estimate:.0f} s)" if estimate else ")"
            result = Result(variant.group, variant.label, provider, status=why)
        else:
            if provider == "compile":
                torch._dynamo.reset()  # past graphs count against dynamo's recompile limit
            try:
                result = run_case(variant, provider, device, timing)
            except Exception as exc:  # recorded, and the run goes on
                message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                result = Result(variant.group, variant.label, provider,
                                status=f"error: {type(exc).__name__}: {message}")
            if provider == "compile" and result.first_call_s is not None:
                ratios.append(result.first_call_s / variant.compile_cost_s)
        done[(id(variant), provider)] = result
        log(_progress(index, len(order), result, time.perf_counter() - start))
    if current is not None:
        current.release()
    return [done[(id(v), p)] for v, p in cases]


def build_variants(groups: Sequence[str], quick: bool, providers: Sequence[str],
                   device: str) -> tuple[list[Variant], list[str]]:
    """The variants of ``groups`` and the notes the page states about them."""
    from bench import gpu_models, gpu_workloads as w

    sizes = w.QUICK if quick else w.FULL
    interpreted = device == "cpu"
    notes = ["fcd has no depthwise-separable layer: no fused rows for it among the "
             "discriminators (its training step still uses the fused losses)."]
    if interpreted and "fused-triton" in providers:
        notes.append("fused-triton on the CPU runs under TRITON_INTERPRET=1 (correctness only); "
                     "it is left out of the training step and of the discriminators but "
                     "fcd_light_thin's forward, which the interpreter takes minutes over.")
    train_providers = [p for p in providers if not (interpreted and p == "fused-triton")]
    makers = {
        "op": lambda: w.op_variants(sizes, providers, device),
        "light_thin": lambda: w.light_thin_variants(sizes, providers, device),
        "losses": lambda: w.loss_variants(sizes, providers, device),
        "discriminators": lambda: w.discriminator_variants(sizes, providers, device,
                                                           interpreted=interpreted),
        "train": lambda: gpu_models.train_variants(sizes, train_providers, device),
        "inference": lambda: gpu_models.inference_variants(sizes, providers, device),
    }
    variants = []
    for group in groups:
        variants += makers[group]()
    for v in variants:
        notes += [n for n in v.notes if n not in notes]
    return variants, notes


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gpu.md"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one timed run")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"wall-time budget of the cases (default {DEFAULT_BUDGET_S:.0f}; "
                             "none with --quick)")
    parser.add_argument("--groups", default="op,light_thin,losses,discriminators,train,inference")
    parser.add_argument("--providers", default=None,
                        help="comma-separated subset (default: all; on the CPU without compile)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compile provider (tests: aot_eager)")
    parser.add_argument("--tests", type=Path, default=None,
                        help="a file of test summary lines to put on the page")
    parser.add_argument("--command", default=None, help="the command to record on the page")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("bench.gpu: --device cuda, but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    if device == "cpu":  # before any Triton kernel is defined: interpret them on the CPU
        if "triton" in sys.modules and not os.environ.get("TRITON_INTERPRET"):
            print("bench.gpu: triton was imported before TRITON_INTERPRET=1 could be set",
                  file=sys.stderr)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from bench import gpu_workloads

    names = gpu_workloads.provider_names(device)
    if args.providers is None:
        providers = [p for p in names if not (device == "cpu" and p == "compile")]
    else:
        providers = [p.strip() for p in args.providers.split(",") if p.strip()]
        unknown = sorted(set(providers) - set(names))
        if unknown:
            raise SystemExit(f"bench.gpu: unknown providers {unknown} on {device}; have {names}")
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(gpu_workloads.GROUPS))
    if unknown:
        raise SystemExit(f"bench.gpu: unknown groups {unknown}; have {list(gpu_workloads.GROUPS)}")
    gpu_workloads.compile_backend = args.compile_backend
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # what a training or inference script sets
    from rtda.timing import timing_allocator

    allocator = timing_allocator()  # host memory: the same setting as every timing tool here
    budget = args.budget_s if args.budget_s is not None else (
        math.inf if args.quick else DEFAULT_BUDGET_S)
    command = args.command or " ".join(["python -m bench.gpu", *(argv or sys.argv[1:])])
    variants, notes = build_variants(groups, args.quick, providers, device)
    notes.append(f"host allocator: {allocator}.")
    notes.append(f"shapes: {'quick (tiny, for tests)' if args.quick else 'full'}; providers "
                 f"{', '.join(providers)}; compile backend {args.compile_backend}; budget "
                 f"{budget:g} s.")
    total = sum(len(v.providers) for v in variants)
    print(f"bench.gpu: {total} cases on {device} ({len(variants)} variants), budget {budget:g} s",
          flush=True)
    start = time.perf_counter()
    timing = QUICK_TIMING if args.quick else FULL_TIMING
    results = run_all(variants, device, timing, budget, lambda line: print(line, flush=True))
    notes.append(f"the cases took {time.perf_counter() - start:.0f} s.")
    tests = None
    if args.tests is not None:
        tests = (args.tests.read_text(encoding="utf-8").splitlines() if args.tests.exists()
                 else [f"(no test summary: {args.tests} is missing)"])
    sizes = gpu_workloads.QUICK if args.quick else gpu_workloads.FULL
    page = render(results, environment(device, command), notes, tests,
                  gpu_workloads.describe(sizes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    failed = [r for r in results if r.failed]
    skipped = sum(r.status.startswith("skipped") for r in results)
    print(f"bench.gpu: wrote {args.out}: {len(results) - len(failed) - skipped} ok, "
          f"{len(failed)} failed, {skipped} skipped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
