"""One full training iteration (segmenter + discriminator, both updates), plain vs ``--fused``.

BiSeNet-R18 with each discriminator at batch 2 x 3 x 256 x 512 (the source and the target batch),
the losses of ``rtda.train.step.train_step``: ``plain`` is PyTorch (``nn.Conv2d`` layers,
``F.interpolate`` + BCE), ``fused`` the fused discriminator layers and losses. Groups read
``"train step fcd_light_thin (2,3,256,512)"``; with ``--benchmark-disable`` every case runs once at
2 x 3 x 64 x 64.

    pytest bench/test_train_step.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from rtda.models import build_discriminator, build_segmenter
from rtda.models.discriminators import DISCRIMINATORS, WIDTHS
from rtda.train.step import StepSettings, train_step

SHAPE, SMOKE_SHAPE = (2, 3, 256, 512), (2, 3, 64, 64)
ROUNDS = 3


def _case(discriminator: str, fused: bool, shape):
    torch.manual_seed(0)
    segmenter = build_segmenter("resnet18")
    disc = build_discriminator(discriminator, fused=fused)
    seg_opt = torch.optim.SGD(segmenter.parameters(), lr=1e-4, momentum=0.9)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-5, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(1)
    source = {"image": torch.randn(shape, generator=generator),
              "label": torch.randint(0, 19, (shape[0], *shape[2:]), generator=generator)}
    target = {"image": torch.randn(shape, generator=generator)}
    settings = StepSettings(fused=fused, upsample_map=2 ** len(WIDTHS[discriminator]) == 32)
    return lambda: train_step(segmenter, disc, seg_opt, d_opt, source, target, settings)


@pytest.mark.parametrize("provider", ["plain", "fused"])
@pytest.mark.parametrize("discriminator", DISCRIMINATORS)
def test_train_step(benchmark, discriminator, provider, request):
    smoke = request.config.getoption("benchmark_disable", default=False)
    shape = SMOKE_SHAPE if smoke else SHAPE
    benchmark.group = f"train step {discriminator} ({','.join(map(str, shape))})"
    step = _case(discriminator, provider == "fused", shape)
    step()  # warm-up
    losses = benchmark.pedantic(step, rounds=1 if smoke else ROUNDS, iterations=1)
    assert set(losses) == {"seg", "adv", "d"} and all(v == v for v in losses.values())
