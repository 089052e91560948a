"""Registers, spills, shared memory and threads of every GPU kernel, per target, without a GPU.

Triton kernels: every variant the launchers produce at the paper's shapes
(``rtda_kernels.triton.aot``), compiled in a fresh Triton cache so that ptxas reports on each.
CUDA kernels: ``scripts/check_cuda.sh`` with ``-Xptxas -v`` (the nvcc flags of the real build),
threads per block from each kernel's ``__launch_bounds__``. A kernel is flagged when it spills, or
when at sm_80 registers or shared memory would leave fewer than 2 blocks per SM.

    python -m bench.gpu_resources                # writes docs/gpu_resources.md (~5 min here)
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CUDA_ARCHS = (75, 80, 86, 87, 89, 90)  # the CUDA 13 build's list (cmake/rtda_cuda.cmake)

# sm_80 (A100): 64 K registers, 164 KB shared memory (1 KB reserved per block), 2048 threads,
# 32 blocks per SM; registers are allocated per warp in units of 256.
SM80 = dict(registers=65536, shared=167936, reserved=1024, threads=2048, blocks=32, unit=256)


def blocks_per_sm(registers: int, shared: int, threads: int) -> tuple[int, str]:
    """Resident blocks per SM at sm_80 and what limits them."""
    warps = -(-threads // 32)
    per_warp = -(-max(registers, 1) * 32 // SM80["unit"]) * SM80["unit"]
    limits = {
        "registers": (SM80["registers"] // per_warp) // warps,
        "shared memory": SM80["shared"] // (shared + SM80["reserved"]),
        "threads": SM80["threads"] // (warps * 32),
        "blocks": SM80["blocks"],
    }
    name = min(limits, key=limits.get)
    return limits[name], name


def flag(row: dict) -> str:
    notes = []
    if row.get("spill_stores", 0) or row.get("spill_loads", 0):
        notes.append(f"spills {row['spill_stores']}/{row['spill_loads']} B")
    if row.get("local", 0):
        notes.append(f"{row['local']} B local memory")
    if not row["registers"]:
        notes.append("no register count")
    if row["target"] == "sm_80" and row["blocks_sm80"] < 2:
        notes.append(f"{row['blocks_sm80']} block/SM ({row['limit_sm80']})")
    return "; ".join(notes)


def triton_rows(jobs: int) -> list[dict]:
    """Compile the paper-shape variants in a child process (a fresh Triton cache, no interpreter)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.update(TRITON_CACHE_DIR=os.path.join(tmp, "cache"), TRITON_DEFAULT_FP_FUSION="1")
        out = os.path.join(tmp, "rows.json")
        subprocess.run([sys.executable, "-m", "rtda_kernels.triton.aot", "--jobs", str(jobs),
                        "--json-out", out], check=True, env=env)
        import json

        rows = json.loads(Path(out).read_text())
    for r in rows:
        r["threads"] = 32 * r["warps"]
    return rows


_PROPS_FOR = re.compile(r"Function properties for (?P<name>\S+)")
_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<target>sm_\d+)'")
_PROPS = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, "
                    r"(?P<loads>\d+) bytes spill loads")
_USED = re.compile(r"Used (?P<regs>\d+) registers")
_SMEM = re.compile(r"(?P<smem>\d+) bytes smem")


def parse_ptxas(log: str) -> list[dict]:
    """One row per (entry function, target) from nvcc's ``-Xptxas -v`` output."""
    rows, current, props_for = [], None, None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = {"kernel": m["name"], "target": m["target"], "shared": 0}
            rows.append(current)
        elif m := _PROPS_FOR.search(line):
            props_for = m["name"]  # the entry itself, or a device function it calls
        elif current and props_for == current["kernel"] and (m := _PROPS.search(line)):
            current.update(stack=int(m["stack"]), spill_stores=int(m["stores"]),
                           spill_loads=int(m["loads"]))
        elif current and (m := _USED.search(line)):
            smem = _SMEM.search(line)
            current.update(registers=int(m["regs"]), shared=int(smem["smem"]) if smem else 0)
    return [r for r in rows if "registers" in r]


def launch_bounds() -> dict[str, int]:
    """Kernel name -> threads per block, from ``__launch_bounds__(kName)`` in csrc/cuda."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "csrc" / "cuda").glob("*.cuh")))
    constants = {m[1]: int(m[2]) for m in re.finditer(r"constexpr int (k\w+) = (\d+);", text)}
    bounds = {}
    for m in re.finditer(r"__launch_bounds__\((\w+)\)\s*(\w+)\s*\(", text):
        bounds[m[2]] = constants.get(m[1], int(m[1]) if m[1].isdigit() else 0)
    return bounds


def _demangle(names: list[str]) -> list[str]:
    run = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    out = run.stdout.splitlines() if run.returncode == 0 else []
    return out if len(out) == len(names) else names


_DTYPES = {"c10::BFloat16": "bfloat16", "c10::Half": "float16", "double": "float64",
           "float": "float32"}


def _kernel_and_dtype(demangled: str) -> tuple[str, str]:
    """("dwsep_forward_kernel", "float16") from "void rtda::cuda::dwsep_forward_kernel<c10::Half,
    float>(...)": the name, and the first template argument (the tensor's scalar type)."""
    m = re.search(r"(\w+)<([^,>]+)", demangled)
    if not m:
        return demangled, ""
    return m[1], _DTYPES.get(m[2].strip(), m[2].strip())


def cuda_rows() -> list[dict]:
    env = dict(os.environ, PYTHON=sys.executable, NVCC_EXTRA_FLAGS="-Xptxas -v",
               CUDA_ARCHS=" ".join(map(str, CUDA_ARCHS)))
    run = subprocess.run(["bash", str(REPO / "scripts" / "check_cuda.sh")], env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"gpu_resources: scripts/check_cuda.sh failed:\n{run.stderr[-3000:]}")
    bounds = launch_bounds()
    rows = parse_ptxas(run.stdout + run.stderr)
    for r, name in zip(rows, _demangle([r["kernel"] for r in rows])):
        r["kernel"], r["dtype"] = _kernel_and_dtype(name)
        r["threads"] = bounds.get(r["kernel"], 256)
        r["variant"] = f"{r['kernel']} [{r['dtype']}]"
    return rows


def _annotate(rows: list[dict]) -> None:
    for r in rows:
        r.setdefault("registers", 0)  # 0: neither ptxas nor the cubin reported (listed as such)
        r["blocks_sm80"], r["limit_sm80"] = blocks_per_sm(r["registers"], r["shared"], r["threads"])
        r["flag"] = flag(r)


def _table(rows: list[dict]) -> list[str]:
    """Per (kernel, target): the worst variant's registers, spills, shared memory, threads."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["kernel"], r["target"])].append(r)
    lines = ["| kernel | target | variants | registers (max) | spill stores / loads (max, B) | "
             "shared memory (max, B) | threads | blocks/SM at sm_80 (min) | flagged |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (kernel, target), group in sorted(groups.items()):
        worst = min(group, key=lambda r: r["blocks_sm80"])
        flagged = sum(bool(r["flag"]) for r in group)
        lines.append(
            f"| `{kernel}` | {target} | {len(group)} | {max(r['registers'] for r in group)} | "
            f"{max(r.get('spill_stores', 0) for r in group)} / "
            f"{max(r.get('spill_loads', 0) for r in group)} | "
            f"{max(r['shared'] for r in group)} | {worst['threads']} | "
            f"{worst['blocks_sm80'] if target == 'sm_80' else ''} | {flagged or ''} |")
    return lines


def render(triton: list[dict], cuda: list[dict], command: str) -> str:
    out = [
        "# GPU kernel resources", "",
        f"Generated by `{command}` on {datetime.date.today()} (no GPU needed): Triton kernels "
        "compiled by `rtda_kernels.triton.aot` at the paper's shapes (every dtype and constexpr "
        "variant the launchers produce), CUDA kernels by `scripts/check_cuda.sh` with "
        "`-Xptxas -v`. Registers and spills are ptxas's; shared memory is Triton's dynamic "
        "allocation or the CUDA kernel's static `__shared__`. Threads: Triton's warps x 32, the "
        "CUDA kernel's `__launch_bounds__`. A variant is flagged when it spills, or when at sm_80 "
        "(64 K registers, 164 KB shared memory per SM) registers or shared memory allow fewer "
        "than 2 resident blocks per SM.", "",
        "## Triton kernels", "", *_table(triton), "",
        "## CUDA kernels", "", *_table(cuda), "",
        "## Flagged variants", ""]
    flagged = [r for r in triton + cuda if r["flag"]]
    if not flagged:
        out.append("None.")
    for r in sorted(flagged, key=lambda r: (r["kernel"], r["target"], r["variant"])):
        out.append(f"- {r['target']}: {r['variant']}: {r['registers']} registers, "
                   f"{r['shared']} B shared, {r['threads']} threads: **{r['flag']}**")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_resources", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "gpu_resources.md")
    parser.add_argument("--jobs", type=int, default=2, help="Triton compile workers (default 2)")
    args = parser.parse_args(argv)
    print("gpu_resources: CUDA kernels (nvcc -Xptxas -v) ...", flush=True)
    cuda = cuda_rows()
    print(f"gpu_resources: {len(cuda)} CUDA kernel builds; Triton variants ...", flush=True)
    triton = triton_rows(args.jobs)
    _annotate(triton)
    _annotate(cuda)
    args.out.write_text(render(triton, cuda, "python -m bench.gpu_resources"))
    flagged = sum(bool(r["flag"]) for r in triton + cuda)
    print(f"gpu_resources: wrote {args.out} ({len(triton)} Triton and {len(cuda)} CUDA rows, "
          f"{flagged} flagged)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
