"""Building the CUDA emulation drivers (tests/cuda_emulation/*_driver.cpp) for the
``*_cuda_emulated.py`` tests: the host g++, a toolchain probe, the driver compiled once per test
module into a shared library and loaded with ctypes."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from .helpers import EMULATION_CXXFLAGS

REPO = Path(__file__).resolve().parents[2]
INCLUDES = ["-I", str(REPO / "csrc" / "include"), "-I", str(REPO / "csrc" / "cuda")]

# What the drivers need from the toolchain, and nothing from this repository: if this does not
# build, the machine cannot run the tests (skip); if it builds but a driver does not, the code is
# wrong (fail).
TOOLCHAIN_PROBE = """
#include <barrier>
#include <optional>
#include <thread>
extern "C" int probe() {
  std::optional<std::barrier<>> b;
  b.emplace(2);
  std::thread t([&] { b->arrive_and_wait(); });
  b->arrive_and_wait();
  t.join();
  return 1;
}
"""


@dataclass
class Build:
    driver: Path
    lib: ctypes.CDLL | None
    error: str | None  # the compiler's output when the driver does not compile

    def loaded(self) -> ctypes.CDLL:
        """The library, or a test failure showing why the driver does not compile."""
        if self.lib is None:
            pytest.fail(f"{self.driver.relative_to(REPO)} does not compile:\n{self.error}",
                        pytrace=False)
        return self.lib


def _compile(cxx: str, source: Path, output: Path, includes: list[str]
             ) -> subprocess.CompletedProcess:
    return subprocess.run([cxx, *EMULATION_CXXFLAGS, *includes, str(source), "-o", str(output)],
                          capture_output=True, text=True, timeout=600)


def build_driver(tmp_path_factory: pytest.TempPathFactory, name: str) -> Build:
    """tests/cuda_emulation/<name>.cpp built and loaded; skips when the toolchain can't."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found on PATH: cannot build the CUDA emulation")
    build_dir = tmp_path_factory.mktemp(f"cuda_emulation_{name}")
    probe_src = build_dir / "probe.cpp"
    probe_src.write_text(TOOLCHAIN_PROBE)
    try:
        probe = _compile(cxx, probe_src, build_dir / "libprobe.so", [])
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"g++ could not be run: {e}")
    if probe.returncode != 0:
        pytest.skip("g++ cannot build a C++20 shared library using <barrier> and threads "
                    f"({' '.join(EMULATION_CXXFLAGS)}):\n{probe.stderr[-2000:]}")
    driver = REPO / "tests" / "cuda_emulation" / f"{name}.cpp"
    library = build_dir / f"lib{name}.so"
    result = _compile(cxx, driver, library, INCLUDES)
    if result.returncode != 0:
        return Build(driver, None, result.stderr[-6000:] or result.stdout[-6000:])
    return Build(driver, ctypes.CDLL(str(library)), None)


def pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def check(last_error, status: int, what: str) -> None:
    """A driver call's status is 0, else the driver's last error names why."""
    assert status == 0, f"{what} failed in the emulation: {last_error().decode()}"


def unwritten(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """An output buffer of NaN: an element the kernels do not write fails the comparison."""
    return torch.full(shape, float("nan"), dtype=dtype)
