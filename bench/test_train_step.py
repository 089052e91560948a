"""One full training iteration (segmenter + discriminator, both updates), plain vs ``--fused``.

BiSeNet-R18 with each discriminator at batch 2 x 3 x 256 x 512 (the source and the target batch),
the losses of ``rtda.train.step.train_step``: ``plain`` is PyTorch (``nn.Conv2d`` layers,
``F.interpolate`` + BCE), ``compile`` the same with the segmenter and the discriminator under
``torch.compile``, ``fused`` the fused discriminator layers and losses (``--fused``). Groups read
``"train step fcd_light_thin (2,3,256,512)"``; with ``--benchmark-disable`` the plain and fused
cases run once at 2 x 3 x 64 x 64 (compiling three training graphs would take minutes).

Also one fused iteration of each ``--method`` (adversarial, self-training, both), in the group
``"train step methods fcd_light_thin (2,3,256,512)"``.

    pytest bench/test_train_step.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from rtda.models import build_discriminator, build_segmenter
from rtda.models.discriminators import DISCRIMINATORS, WIDTHS
from rtda.train.self_training import EmaTeacher
from rtda.train.step import StepSettings, train_step

SHAPE, SMOKE_SHAPE = (2, 3, 256, 512), (2, 3, 64, 64)
ROUNDS = 3
# --method, fused, FCD-Light&Thin: "adversarial" is the paper's iteration, the baseline the
# others' cost is read against (bench.report's ratio column: adversarial / method).
METHODS = ("adversarial", "self-training", "both")


def _case(discriminator: str, provider: str, shape, method: str = "adversarial"):
    torch.manual_seed(0)
    fused = provider in ("fused", *METHODS)
    segmenter = build_segmenter("resnet18")
    disc = build_discriminator(discriminator, fused=fused)
    seg_opt = torch.optim.SGD(segmenter.parameters(), lr=1e-4, momentum=0.9)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-5, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(1)
    source = {"image": torch.randn(shape, generator=generator),
              "label": torch.randint(0, 19, (shape[0], *shape[2:]), generator=generator)}
    target = {"image": torch.randn(shape, generator=generator)}
    settings = StepSettings(fused=fused, upsample_map=2 ** len(WIDTHS[discriminator]) == 32,
                            adversarial=method != "self-training",
                            self_training=method != "adversarial")
    if provider == "compile":
        segmenter, disc = torch.compile(segmenter), torch.compile(disc)
    teacher = EmaTeacher(segmenter) if settings.self_training else None

    def step():
        losses = train_step(segmenter, disc, seg_opt, d_opt, source, target, settings,
                            teacher=teacher, generator=generator)
        if teacher is not None:
            teacher.update(segmenter, 1)
        return losses

    return step


@pytest.mark.parametrize("provider", ["plain", "compile", "fused"])
@pytest.mark.parametrize("discriminator", DISCRIMINATORS)
def test_train_step(benchmark, discriminator, provider, request):
    smoke = request.config.getoption("benchmark_disable", default=False)
    shape = SMOKE_SHAPE if smoke else SHAPE
    if smoke and provider == "compile":
        pytest.skip("compile is benchmarked, not smoke-tested: three training graphs take minutes")
    benchmark.group = f"train step {discriminator} ({','.join(map(str, shape))})"
    step = _case(discriminator, provider, shape)
    losses = step()  # warm-up (compiles the compile provider)
    if provider != "plain":  # the first step at the timed shape gives plain PyTorch's losses
        expected = _case(discriminator, "plain", shape)()
        for name, value in expected.items():
            assert losses[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    losses = benchmark.pedantic(step, rounds=1 if smoke else ROUNDS, iterations=1)
    assert set(losses) == {"seg", "adv", "d"} and all(v == v for v in losses.values())


@pytest.mark.parametrize("provider", METHODS)
def test_train_step_method(benchmark, provider, request):
    """One fused iteration of each --method: what self-training costs next to the adversarial
    iteration (the EMA teacher's forward and update, ClassMix, the student's second forward)."""
    smoke = request.config.getoption("benchmark_disable", default=False)
    shape = SMOKE_SHAPE if smoke else SHAPE
    benchmark.group = f"train step methods fcd_light_thin ({','.join(map(str, shape))})"
    step = _case("fcd_light_thin", provider, shape, method=provider)
    step()  # warm-up
    losses = benchmark.pedantic(step, rounds=1 if smoke else ROUNDS, iterations=1)
    expected = {"seg"} | ({"adv", "d"} if provider != "self-training" else set()) | (
        {"st", "pseudo_weight"} if provider != "adversarial" else set())
    assert set(losses) == expected and all(v == v for v in losses.values())
