"""The model workloads of ``python -m bench.gpu``: one training iteration and BiSeNet inference.

- ``train``: ``rtda.train.step.train_step`` (segmenter on the source batch, adversarial loss on the
  target, the discriminator update, both optimiser steps) for BiSeNet-R18/-R101 with each
  discriminator, as ``bench/test_train_step.py`` builds it: ``eager`` is plain PyTorch,
  ``compile`` puts the segmenter and the discriminator under ``torch.compile``, the fused
  providers use the fused discriminator layers and losses (``--fused``) on their backend. Each
  provider trains its own copy of the same initial weights; the check compares the three losses
  of the first iteration.
- ``inference``: BiSeNet in eval mode, image in -> train-id map out (as
  ``bench/test_inference.py``), in float32 and float16: ``eager`` (the training model cast to the
  precision), ``compile`` (its ``torch.compile``) and ``runtime`` (``rtda.runtime.Segmenter``:
  BatchNorm folded, channels_last). The check compares logits with float32 eager.

Random weights are made numerically like trained ones (``conditioned_segmenter``): with raw
initialisation, ResNet-101's eval-mode activations reach ~1e8 and float16 overflows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bench.gpu_workloads import (
    FUSED_BACKEND, GROUPS, PRECISIONS, RUNTIME_ERROR, Runnable, Segmenter, Sizes, Variant,
    _in_backend, _Shared, _tolerance, compiled, exact_float32, normalise,
)
from bench.subjects import shape_label
from rtda.models import DISCRIMINATORS, BiSeNet, build_discriminator, build_segmenter
from rtda.models.discriminators import WIDTHS
from rtda.models.resnet import BasicBlock, Bottleneck
from rtda.train.step import StepSettings, train_step

# Scale of the last BatchNorm of every residual branch (torchvision's zero_init_residual uses 0):
# keeps a random ResNet-101 from amplifying rounding errors through its 33 blocks.
RESIDUAL_SCALE = 0.2
COMPILE_COST_S = {"train": {"resnet18": 90, "resnet101": 180},
                  "inference": {"resnet18": 45, "resnet101": 90}}


def conditioned_segmenter(backbone: str, device: str | torch.device,
                          calibration_shape: tuple[int, int, int, int],
                          prep: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> BiSeNet:
    """A seeded random BiSeNet in eval mode whose activations have a trained network's scale:
    residual branches scaled by ``RESIDUAL_SCALE``, BatchNorm statistics measured on two random
    (``prep``-ed) images batches of ``calibration_shape``. Speed does not depend on weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_segmenter(backbone)
    for module in model.modules():
        last = (module.bn3 if isinstance(module, Bottleneck)
                else module.bn2 if isinstance(module, BasicBlock) else None)
        if last is not None:
            nn.init.constant_(last.weight, RESIDUAL_SCALE)
    model.to(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(prep(torch.rand(calibration_shape, generator=generator).to(device)))
        for bn in norms:
            bn.momentum = 0.1
    return model.eval()


def train_variants(sizes: Sizes, providers: Sequence[str], device: str) -> list[Variant]:
    """One adaptation iteration for each backbone x discriminator at ``sizes.train`` (the source
    and the target batch each have that shape)."""
    variants = []
    shape = sizes.train
    for backbone in sizes.train_backbones:
        for name in DISCRIMINATORS:
            def factory(backbone: str = backbone, name: str = name) -> dict[str, Any]:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    segmenter = build_segmenter(backbone).to(device)
                    discriminator = build_discriminator(name, fused=False).to(device)
                g = torch.Generator().manual_seed(1)
                source = {"image": torch.randn(shape, generator=g).to(device),
                          "label": torch.randint(0, 19, (shape[0], *shape[2:]),
                                                 generator=g).to(device)}
                target = {"image": torch.randn(shape, generator=g).to(device)}
                return {"segmenter": segmenter, "discriminator": discriminator,
                        "source": source, "target": target, "name": name}

            state = _Shared(factory)

            def build(provider: str, state: _Shared = state) -> Runnable:
                return _train_runnable(state.get(), provider, device)

            def reference(state: _Shared = state) -> list[torch.Tensor]:
                s = state.get()
                if "reference" not in s:
                    with exact_float32():
                        s["reference"] = _train_runnable(s, "eager", device).check()
                return s["reference"]

            label = f"bisenet_{backbone} + {name} ({shape_label(shape)})"
            variants.append(Variant(GROUPS["train"], label, tuple(providers), build, reference,
                                    _tolerance(device), COMPILE_COST_S["train"][backbone],
                                    state.clear))
    return variants


def _train_runnable(s: dict[str, Any], provider: str, device: str) -> Runnable:
    fused = provider in FUSED_BACKEND
    segmenter = copy.deepcopy(s["segmenter"])
    if fused:
        discriminator = build_discriminator(s["name"], fused=True).to(device)
        discriminator.load_state_dict(s["discriminator"].state_dict())
    else:
        discriminator = copy.deepcopy(s["discriminator"])
    seg_opt = torch.optim.SGD(segmenter.parameters(), lr=1e-4, momentum=0.9)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=1e-5, betas=(0.9, 0.99))
    settings = StepSettings(fused=fused, upsample_map=2 ** len(WIDTHS[s["name"]]) == 32)
    seg_run, d_run = segmenter, discriminator
    if provider == "compile":
        seg_run, d_run = compiled(segmenter), compiled(discriminator)

    def step() -> dict[str, float]:
        return train_step(seg_run, d_run, seg_opt, d_opt, s["source"], s["target"], settings)

    if fused:
        step = _in_backend(provider, step)

    def check() -> list[torch.Tensor]:
        return [torch.tensor(value, dtype=torch.float64) for value in step().values()]

    return Runnable(step, check)


def inference_variants(sizes: Sizes, providers: Sequence[str], device: str) -> list[Variant]:
    """BiSeNet inference for each backbone x resolution x precision, batch 1."""
    names = tuple(p for p in providers if p in ("eager", "compile"))
    notes = []
    if RUNTIME_ERROR is None:
        names += ("runtime",)
    else:
        notes.append(f"runtime provider omitted: {RUNTIME_ERROR}; eager and compile take the "
                     "0-1 image without normalisation (the normaliser lives in rtda.runtime)")
    variants = []
    for backbone in sizes.inference_backbones:
        for shape in sizes.inference:
            for precision in PRECISIONS:
                def factory(backbone: str = backbone, shape: Any = shape) -> dict[str, Any]:
                    _, _, height, width = shape
                    calibration = (2, 3, min(height, 256), min(width, 512))
                    model = conditioned_segmenter(backbone, device, calibration, _prep)
                    image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
                    return {"model": model, "image": image.to(device)}

                state = _Shared(factory)

                def build(provider: str, state: _Shared = state, precision: str = precision
                          ) -> Runnable:
                    return _inference_runnable(state.get(), provider, precision, device)

                def reference(state: _Shared = state) -> list[torch.Tensor]:
                    s = state.get()
                    if "reference" not in s:
                        with exact_float32():
                            s["reference"] = _inference_runnable(
                                s, "eager", "float32", device).check()
                    return s["reference"]

                label = f"bisenet_{backbone} {precision} ({shape_label(shape)})"
                variants.append(Variant(
                    GROUPS["inference"], label, names, build, reference,
                    _tolerance(device, precision), COMPILE_COST_S["inference"][backbone],
                    state.clear, list(notes)))
    return variants


def _prep(image: torch.Tensor) -> torch.Tensor:
    return image if normalise is None else normalise(image)


def _inference_runnable(s: dict[str, Any], provider: str, precision: str,
                        device: str) -> Runnable:
    image, dtype = s["image"], PRECISIONS[precision]
    if provider == "runtime":
        segmenter = Segmenter(s["model"], device=device, precision=precision,
                              resolution=tuple(image.shape[2:]))
        return Runnable(lambda: segmenter.predict(image), lambda: [segmenter.logits(image)])
    net = copy.deepcopy(s["model"]).to(dtype)
    if provider == "compile":
        net = compiled(net)
    elif provider != "eager":
        raise ValueError(f"inference has no provider {provider!r}")

    @torch.inference_mode()
    def step() -> torch.Tensor:
        return net(_prep(image).to(dtype)).argmax(1)

    @torch.inference_mode()
    def check() -> list[torch.Tensor]:
        return [net(_prep(image).to(dtype)).float()]

    return Runnable(step, check)
