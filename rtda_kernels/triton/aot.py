"""Ahead-of-time compilation of every Triton kernel variant, for real GPU targets, without a GPU.

The launchers (``dwsep_conv2d.forward/backward``, ``adversarial_loss.loss/loss_backward/
discriminator``, ``pseudo_label_loss.loss``) run on meta tensors under ``target.plan_for_gpu``, with ``JITFunction.run``
recording each launch instead of running it. Each launch is then specialised exactly as Triton's
JIT would specialise it for a target (its own binder: argument types, divisibility, ints equal to
1) and compiled with ``triton.compile(..., target=GPUTarget("cuda", cap, 32))``: PTX, then a cubin
by ptxas. Variants are the distinct (kernel, dtype, tl.constexpr values) the launchers produce.

    python -m rtda_kernels.triton.aot                      # paper shapes, every target
    python -m rtda_kernels.triton.aot --targets 80 90 --cases extra.json --json-out result.json

Needs TRITON_INTERPRET unset (interpreted kernels cannot be compiled); it is removed at import
when run as a script. Docs: the README's GPU section.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch

# Compute capability -> (device, streaming multiprocessors): the GPUs RTDA is built for.
TARGETS: dict[int, tuple[str, int]] = {
    70: ("V100", 80),
    72: ("Jetson AGX Xavier", 8),
    75: ("T4", 40),
    80: ("A100", 108),
    87: ("Jetson AGX Orin", 16),
    90: ("H100", 132),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# dwsep_conv2d cases: (N, C_in, C_out, H, W, k, stride, padding, negative_slope).
DwsepCase = tuple[int, int, int, int, int, int, int, int, "float | None"]
# loss cases: (logits N x C x h x w, output (H, W)).
LossCase = tuple[tuple[int, int, int, int], tuple[int, int]]

_STACKS = {"fcd_light": (64, 128, 256, 512, 1), "fcd_light_thin": (64, 128, 1)}
_PAPER_INPUTS = ((4, 19, 512, 1024), (2, 19, 256, 512), (1, 19, 512, 1024))


def paper_dwsep_cases() -> list[DwsepCase]:
    """Every layer of FCD-Light and FCD-Light&Thin at the paper's discriminator inputs."""
    cases = []
    for widths in _STACKS.values():
        for n, c, h, w in _PAPER_INPUTS:
            for i, c_out in enumerate(widths):
                slope = None if i == len(widths) - 1 else 0.2
                cases.append((n, c, c_out, h, w, 4, 2, 1, slope))
                c, h, w = c_out, h // 2, w // 2
    return cases


def paper_loss_cases() -> list[LossCase]:
    """The discriminators' maps at 512 x 1024: FCD(-Light) upsampled, Light&Thin at its size."""
    return [((4, 1, 16, 32), (512, 1024)), ((4, 1, 64, 128), (64, 128)),
            ((2, 1, 8, 16), (256, 512)), ((2, 1, 32, 64), (32, 64))]


@dataclass
class Launch:
    """One recorded kernel launch: the kernel, its arguments and where it came from."""

    kernel: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict
    dtype: str


@dataclass
class Variant:
    """A kernel specialised for one target, as the JIT would compile it."""

    kernel: object
    name: str
    dtype: str
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict = field(repr=False, default_factory=dict)
    key: tuple = field(repr=False, default=())

    def label(self) -> str:
        """``name [dtype] {declared constexprs}``: the same for every target."""
        values = ", ".join(f"{name}={value}" for name, value in self.key[2])
        return f"{self.name} [{self.dtype}] {{{values}}}"


@contextlib.contextmanager
def _recording(into: list[Launch], dtype: str) -> Iterator[None]:
    from triton.runtime.jit import JITFunction

    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        into.append(Launch(self, args, kwargs, dtype))

    JITFunction.run = record
    try:
        yield
    finally:
        JITFunction.run = original


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


def _dwsep_calls(case: DwsepCase, dtype: torch.dtype) -> Iterator[Callable[[], object]]:
    from rtda_kernels.triton import dwsep_conv2d as kernels

    n, c_in, c_out, h, w, k, s, p, slope = case
    x = _meta(n, c_in, h, w, dtype=dtype)
    dw, pw = _meta(c_in, 1, k, k, dtype=dtype), _meta(c_out, c_in, 1, 1, dtype=dtype)
    for bias in (True, False):
        db = _meta(c_in, dtype=dtype) if bias else None
        pb = _meta(c_out, dtype=dtype) if bias else None
        y = kernels.forward(x, dw, db, pw, pb, s, p, slope)
        yield lambda y=y, db=db: kernels.backward(torch.empty_like(y), x, y, dw, db, pw, s, p, slope)


def _loss_calls(case: LossCase, dtype: torch.dtype) -> Iterator[Callable[[], object]]:
    from rtda_kernels.triton import adversarial_loss as kernels

    shape, size = case
    logits = _meta(*shape, dtype=dtype)
    target = _meta(*shape[:2], *size, dtype=dtype)
    for t in (None, target):
        yield lambda t=t: kernels.loss_backward(_meta(*target.shape, dtype=dtype), logits, t, 1.0,
                                                list(size))
        for reduction in (kernels.REDUCE_NONE, kernels.REDUCE_MEAN, kernels.REDUCE_SUM):
            for grad in (False, True):
                yield lambda t=t, r=reduction, g=grad: kernels.loss(logits, t, 1.0, list(size), r, g)
    for grad in (False, True):
        yield lambda g=grad: kernels.discriminator(logits, logits.clone(), 1.0, 0.0, list(size), g)


def paper_pseudo_cases() -> list[LossCase]:
    """The self-training loss at the paper's training shape: 1/8 maps of 512 x 1024, batch 4."""
    return [((4, 19, 64, 128), (512, 1024))]


def _pseudo_calls(case: LossCase, dtype: torch.dtype) -> Iterator[Callable[[], object]]:
    from rtda_kernels.triton import pseudo_label_loss as kernels

    shape, size = case
    student, teacher = _meta(*shape, dtype=dtype), _meta(*shape, dtype=dtype)
    labels = torch.empty((shape[0], *size), device="meta", dtype=torch.int64)
    for given in (None, labels):
        for grad in (False, True):
            yield lambda l=given, g=grad: kernels.loss(student, teacher, l, 0.968, list(size), g)


def record_launches(dwsep_cases: Iterable[DwsepCase], loss_cases: Iterable[LossCase],
                    multiprocessors: int) -> list[Launch]:
    """Every launch the launchers make for these cases and dtypes on a GPU of that many SMs."""
    from rtda_kernels.triton.target import plan_for_gpu

    launches: list[Launch] = []
    dwsep_cases, loss_cases = list(dwsep_cases), list(loss_cases)
    with plan_for_gpu(multiprocessors):
        for name, dtype in DTYPES.items():
            with _recording(launches, name):
                for case in dwsep_cases:
                    for call in _dwsep_calls(case, dtype):
                        call()
                for case in loss_cases:
                    for call in _loss_calls(case, dtype):
                        call()
                for case in paper_pseudo_cases():
                    for call in _pseudo_calls(case, dtype):
                        call()
    return launches


def specialise(launches: Iterable[Launch], capability: int) -> list[Variant]:
    """The distinct variants of ``launches`` for one target, via Triton's own binder."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", capability, 32))
    binders: dict[int, Callable] = {}
    seen: dict[tuple, Variant] = {}
    for launch in launches:
        k = launch.kernel
        binder = binders.setdefault(id(k), create_function_from_signature(k.signature, k.params,
                                                                          backend))
        bound, spec, options = binder(*launch.args, **launch.kwargs)
        options, signature, constexprs, attrs = k._pack_args(backend, launch.kwargs, bound, spec,
                                                             options)
        # One variant per declared tl.constexpr values; ints the JIT specialises (== 1, multiples
        # of 16) are compiled as first met (the paper's shapes come first).
        declared = tuple((p.name, launch.kwargs.get(p.name)) for p in k.params if p.is_constexpr)
        key = (k.__name__, launch.dtype, declared)
        if key not in seen:
            seen[key] = Variant(k, k.__name__, launch.dtype, signature, constexprs, attrs,
                                options.__dict__, key)
    return list(seen.values())


_PTXAS = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, "
    r"(?P<loads>\d+) bytes spill loads\s+ptxas info\s+: Used (?P<regs>\d+) registers")


def parse_ptxas_log(log: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes from ``ptxas -v`` output (one kernel)."""
    m = _PTXAS.search(log)
    if not m:
        return {}
    return {"registers": int(m["regs"]), "stack": int(m["stack"]),
            "spill_stores": int(m["stores"]), "spill_loads": int(m["loads"])}


_RESOURCES = re.compile(r"REG:(?P<regs>\d+) STACK:(?P<stack>\d+) SHARED:\d+ LOCAL:(?P<local>\d+)")


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """Registers and stack from the cubin itself (cuobjdump, shipped with triton), for a compile
    that ptxas did not report on (a cache hit). Spills are not in the cubin: local memory is."""
    import tempfile

    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        run = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                             capture_output=True, text=True)
    m = _RESOURCES.search(run.stdout)
    if not m:
        return {}
    return {"registers": int(m["regs"]), "stack": int(m["stack"]), "local": int(m["local"])}


def compile_variant(variant: Variant, capability: int) -> dict:
    """Compile one variant for sm_<capability>; a dict with its resources, or its error."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = {"kernel": variant.name, "dtype": variant.dtype, "variant": variant.label(),
           "target": f"sm_{capability}"}
    source = ASTSource(variant.kernel, variant.signature, variant.constexprs, variant.attrs)
    log = io.StringIO()
    try:
        with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                                      options=variant.options)
    except Exception as exc:  # any compiler failure is a result to report
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        return row
    resources = parse_ptxas_log(log.getvalue()) or cubin_resources(compiled.asm["cubin"])
    row.update(shared=compiled.metadata.shared, warps=compiled.metadata.num_warps,
               cubin_bytes=len(compiled.asm["cubin"]), **resources)
    return row


def compile_target(capability: int, dwsep_cases: list, loss_cases: list,
                   spread: tuple[list, list, list[int]] | None = None) -> list[dict]:
    """Record, specialise and compile everything for one target (one worker's job).

    ``spread`` = (paper dwsep cases, paper loss cases, all targets): variants the paper cases
    produce are compiled for every target, the others for one target each (round robin)."""
    sms = TARGETS[capability][1]
    variants = specialise(record_launches(dwsep_cases, loss_cases, sms), capability)
    if spread is not None:
        paper_dwsep, paper_loss, targets = spread
        paper = {v.key for v in specialise(record_launches(paper_dwsep, paper_loss, sms),
                                           capability)}
        extra = [v.key for v in variants if v.key not in paper]
        mine = set(extra[targets.index(capability)::len(targets)])
        variants = [v for v in variants if v.key in paper or v.key in mine]
    return [compile_variant(v, capability) for v in variants]


def compile_all(capabilities: Iterable[int], dwsep_cases: list, loss_cases: list, jobs: int = 2,
                progress: Callable[[str], None] = print,
                spread_from: tuple[list, list] | None = None) -> list[dict]:
    """compile_target for every capability, ``jobs`` targets at a time in worker processes;
    ``spread_from`` = (paper dwsep cases, paper loss cases) spreads the others (compile_target)."""
    capabilities = list(capabilities)
    spread = None if spread_from is None else (*spread_from, capabilities)
    rows: list[dict] = []
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {cap: pool.submit(compile_target, cap, dwsep_cases, loss_cases, spread)
                   for cap in capabilities}
        for cap, future in futures.items():
            result = future.result()
            failed = sum("error" in r for r in result)
            progress(f"aot: sm_{cap} ({TARGETS[cap][0]}): {len(result)} variants, {failed} failed "
                     f"({time.perf_counter() - start:.0f} s)")
            rows += result
    return rows


def summary(rows: list[dict]) -> str:
    """Kernels, distinct (kernel, dtype, variant) combinations, compiles and failures."""
    kernels = {r["kernel"] for r in rows}
    targets = {r["target"] for r in rows}
    combos = {(r["kernel"], r["variant"]) for r in rows}
    everywhere = sum(1 for c in combos
                     if sum((r["kernel"], r["variant"]) == c for r in rows) == len(targets))
    dtypes = {r["dtype"] for r in rows}
    failed = sum("error" in r for r in rows)
    where = (f"each for all {len(targets)} targets" if everywhere == len(combos) else
             f"{everywhere} for all {len(targets)} targets, the rest for one each")
    return (f"{len(kernels)} kernels, {len(combos)} (kernel, dtype, variant) combinations over "
            f"{len(dtypes)} dtypes ({where}), {len(rows)} compiles, {failed} failed")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rtda_kernels.triton.aot",
        description="Compile every Triton kernel variant the launchers produce (paper shapes, "
                    "plus --cases) for real GPU targets; no GPU needed.")
    parser.add_argument("--targets", type=int, nargs="+", default=sorted(TARGETS),
                        choices=sorted(TARGETS), metavar="CAP",
                        help=f"compute capabilities (default: all of {sorted(TARGETS)})")
    parser.add_argument("--cases", help="JSON file {\"dwsep\": [...], \"loss\": [...]} of extra "
                                        "cases, in the tuple forms of this module")
    parser.add_argument("--spread", action="store_true",
                        help="compile the variants only --cases produce for one target each "
                             "(round robin) instead of every target: ~2.5x fewer compiles")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--json-out", help="write one row per compile (resources or error) here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if "triton" not in sys.modules:
        os.environ.pop("TRITON_INTERPRET", None)  # interpreted kernels cannot be compiled
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("aot: triton was imported with TRITON_INTERPRET set; run this in a "
                         "fresh process without it")
    dwsep, loss = paper_dwsep_cases(), paper_loss_cases()
    if args.cases:
        with open(args.cases) as f:
            extra = json.load(f)
        dwsep += [tuple(c) for c in extra.get("dwsep", [])]
        loss += [(tuple(a), tuple(b)) for a, b in extra.get("loss", [])]
    spread_from = (paper_dwsep_cases(), paper_loss_cases()) if args.spread else None
    rows = compile_all(args.targets, dwsep, loss, args.jobs, spread_from=spread_from)
    for r in rows:
        if "error" in r:
            print(f"aot: FAIL {r['variant']} for {r['target']}: {r['error']}", file=sys.stderr)
    print(f"aot: {summary(rows)}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
