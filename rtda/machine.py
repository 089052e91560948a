"""What CPU the figures come from: its model name and vector extensions, written once for every
tool that prints a timing (rtda.complexity, bench)."""

from __future__ import annotations

import platform
from pathlib import Path

# The extensions the fused CPU kernels' speed depends on, widest last.
SIMD = ("neon", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")


def _cpuinfo() -> tuple[str | None, set[str]]:
    name, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name is None:
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name, flags


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ...")."""
    name, _ = _cpuinfo()
    return name or platform.processor() or platform.machine() or "unknown CPU"


def simd_extensions() -> list[str]:
    """The extensions of ``SIMD`` this CPU has (empty when /proc/cpuinfo cannot tell)."""
    _, flags = _cpuinfo()
    return [name for name in SIMD if name in flags or (name == "neon" and "asimd" in flags)]


def cpu_description() -> str:
    """Model name and widest vector extension, e.g. "AMD EPYC, AVX2"."""
    widest = next((f for f in ("avx512f", "avx2", "avx", "neon") if f in simd_extensions()), None)
    return f"{cpu_model()}, {widest.upper()}" if widest else cpu_model()
