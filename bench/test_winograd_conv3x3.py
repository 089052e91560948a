"""pytest-benchmark suite for ``winograd_conv3x3``: the 3x3 conv + residual + ReLU of a ResNet
BasicBlock (inference, float32), eager vs torch.compile vs fused, side by side.

One group per ResNet-18 stage at BiSeNet's 512x1024 input (stride 4 to 32: 64 to 512 channels),
e.g. ``"stage1 conv3x3+residual+relu fwd (1,64,128,256)"``. Every provider gets channels_last
input (oneDNN's fastest layout for the direct convolution):

- ``eager``: ``relu(F.conv2d(x, w, b, padding=1) + residual)``;
- ``compile``: ``torch.compile`` of that (inductor fuses the add and ReLU into the conv);
- ``fused``: ``rtda_kernels.nn.WinogradConv2d`` (Winograd F(4x4, 3x3), add and ReLU fused).

    pytest bench/test_winograd_conv3x3.py --benchmark-only     # about a minute
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtda_kernels
from rtda_kernels.nn import WinogradConv2d

# (stage, channels, height, width) of ResNet-18 at a 512x1024 input
STAGES = [(1, 64, 128, 256), (2, 128, 64, 128), (3, 256, 32, 64), (4, 512, 16, 32)]
SMOKE_STAGES = [(1, 16, 9, 13)]
PROVIDERS = ("eager", "compile", "fused")
ROUNDS = 15

pytestmark = pytest.mark.skipif(not rtda_kernels.has_kernel("winograd_conv3x3", "cpu"),
                                reason="the compiled Winograd CPU kernel is not built")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ != "test_winograd_conv3x3":
        return
    smoke = metafunc.config.getoption("benchmark_disable", default=False)
    stages = SMOKE_STAGES if smoke else STAGES
    metafunc.parametrize("stage,provider", [
        pytest.param(stage, provider, id=f"stage{stage[0]}-{provider}")
        for stage in stages for provider in PROVIDERS])


def _conv_add_relu(conv: nn.Conv2d):
    def block(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.relu(F.conv2d(x, conv.weight, conv.bias, padding=1) + residual)

    return block


@torch.inference_mode()
def test_winograd_conv3x3(benchmark, stage, provider: str) -> None:
    index, channels, height, width = stage
    shape = (1, channels, height, width)
    benchmark.group = f"stage{index} conv3x3+residual+relu fwd ({','.join(map(str, shape))})"
    generator = torch.Generator().manual_seed(index)
    conv = nn.Conv2d(channels, channels, 3, padding=1).eval().requires_grad_(False)
    conv = conv.to(memory_format=torch.channels_last)
    x, residual = (torch.randn(shape, generator=generator).contiguous(
        memory_format=torch.channels_last) for _ in range(2))
    eager = _conv_add_relu(conv)
    run = {"eager": lambda: eager,
           "compile": lambda: torch.compile(eager, dynamic=False),
           "fused": lambda: WinogradConv2d.from_conv(conv, relu=True)}[provider]()
    y = run(x, residual)  # warm-up: compiles, prepacks, allocates
    torch.testing.assert_close(y, eager(x, residual), atol=1e-4, rtol=1e-4)  # at the timed shape
    rounds = 1 if benchmark.disabled else ROUNDS
    benchmark.pedantic(run, args=(x, residual), rounds=rounds, iterations=1, warmup_rounds=1)
