"""The resource report's parsing and occupancy arithmetic (the compiles themselves are covered by
tests/kernels/test_triton_aot.py and scripts/check_cuda.sh)."""

from __future__ import annotations

from bench.gpu_resources import blocks_per_sm, flag, launch_bounds, parse_ptxas

LOG = """\
ptxas info    : Compiling entry function '_ZN9rtda_cuda6kernelIfEEvv' for 'sm_80'
ptxas info    : Function properties for _ZN9rtda_cuda6helperEv
    8 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Function properties for _ZN9rtda_cuda6kernelIfEEvv
    16 bytes stack frame, 32 bytes spill stores, 24 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 16 bytes cumulative stack size, 8192 bytes smem, 504 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN9rtda_cuda6kernelIdEEvv' for 'sm_90'
ptxas info    : Function properties for _ZN9rtda_cuda6kernelIdEEvv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 96 registers, used 0 barriers, 400 bytes cmem[0]
"""


def test_parse_ptxas_keeps_each_entry_and_ignores_device_functions():
    first, second = parse_ptxas(LOG)
    assert first == {"kernel": "_ZN9rtda_cuda6kernelIfEEvv", "target": "sm_80", "shared": 8192,
                     "stack": 16, "spill_stores": 32, "spill_loads": 24, "registers": 48}
    assert (second["target"], second["registers"], second["shared"], second["spill_stores"]) == (
        "sm_90", 96, 0, 0)


def test_blocks_per_sm_at_sm80():
    assert blocks_per_sm(255, 16384, 128) == (2, "registers")  # 8 K registers per warp
    assert blocks_per_sm(168, 8192, 256) == (1, "registers")
    assert blocks_per_sm(32, 100 * 1024, 128) == (1, "shared memory")
    assert blocks_per_sm(16, 0, 64)[0] == 32  # the 2048-thread and 32-block limits


def test_flag_names_spills_and_low_occupancy():
    row = {"target": "sm_80", "registers": 168, "spill_stores": 4, "spill_loads": 4,
           "blocks_sm80": 1, "limit_sm80": "registers"}
    assert flag(row) == "spills 4/4 B; 1 block/SM (registers)"
    assert flag(dict(row, target="sm_90", spill_stores=0, spill_loads=0)) == ""


def test_launch_bounds_of_every_cuda_kernel():
    bounds = launch_bounds()
    assert bounds and all(threads in (64, 128, 256, 512, 1024) for threads in bounds.values())
    assert "dwsep_forward_kernel" in bounds
