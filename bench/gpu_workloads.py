"""The workloads of ``python -m bench.gpu``, built for any device (``bench.subjects`` pins its
``fused`` provider to the CPU backend; these take the device and the backend as parameters).

A *variant* is one row-set of a table: a workload at one shape (and pass or precision) with the
providers compared side by side. Each provider is built into a ``Runnable``: ``check()`` runs it
once and returns the tensors compared with the variant's reference (eager PyTorch in exact
float32: no TF32), ``step()`` is what is timed, ``reset()`` runs untimed before each step.

Providers: ``eager`` (plain PyTorch: cuDNN on a GPU), ``compile`` (``torch.compile`` of eager),
``fused-cuda`` / ``fused-cpu`` (rtda_kernels on its compiled backend for the device) and
``fused-triton``. Groups, as ``--groups`` names them: ``op`` (one dwsep_conv2d layer), ``light_thin``
(the FCD-Light&Thin stack), ``losses`` and ``discriminators`` here; ``train`` and ``inference``
in ``bench.gpu_models``, built from the types and helpers of this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import rtda_kernels
from bench.subjects import (
    ADVERSARIAL_LABEL, KERNEL, LIGHT_THIN_LAYERS, LOSS_SHAPES, LOSS_SMOKE_SHAPES, PADDING,
    SOURCE_LABEL, STRIDE, TARGET_LABEL, LossShape, _eager_bce, light_thin_stack, make_input,
    plain_pytorch, shape_label,
)
from rtda.models import DISCRIMINATORS, build_discriminator
from rtda_kernels.nn import DepthwiseSeparableConv2d

try:  # rtda.runtime imports rtda.data, which needs cityscapesscripts (absent on some GPU hosts)
    from rtda.runtime import Segmenter, normalise
    RUNTIME_ERROR: str | None = None
except ImportError as exc:
    Segmenter = normalise = None  # type: ignore[assignment,misc]
    RUNTIME_ERROR = f"rtda.runtime could not be imported ({exc})"

GROUPS: dict[str, str] = {  # --groups id -> table title
    "op": "dwsep_conv2d op", "light_thin": "light_thin stack", "losses": "losses",
    "discriminators": "discriminators", "train": "train step", "inference": "inference",
}
FUSED_BACKEND = {"fused-cpu": "cpu", "fused-cuda": "cuda", "fused-triton": "triton"}
# Tolerance of the max error relative to the reference's largest magnitude. float32 on a GPU
# allows for cuDNN's TF32 convolutions (PyTorch's default) in eager and compile.
TOLERANCE = {("cuda", "float32"): 1e-2, ("cpu", "float32"): 1e-3, "float16": 1e-1}


@dataclass(frozen=True)
class Sizes:
    """The shapes of one run: full (the paper's, on a GPU) or quick (tiny, CPU tests)."""

    kernel: tuple[int, int, int, int]
    losses: tuple[LossShape, ...]
    discriminator: tuple[int, int, int, int]
    train: tuple[int, int, int, int]
    train_backbones: tuple[str, ...]
    inference: tuple[tuple[int, int, int, int], ...]
    inference_backbones: tuple[str, ...]
    # pseudo_label_loss: the segmenter's 1/8 logits and the size they are upsampled to
    pseudo_label: tuple[tuple[int, int, int, int], tuple[int, int]]


FULL = Sizes(kernel=(4, 19, 512, 1024), losses=LOSS_SHAPES, discriminator=(4, 19, 512, 1024),
             train=(2, 3, 512, 1024), train_backbones=("resnet18", "resnet101"),
             inference=((1, 3, 512, 1024), (1, 3, 1024, 2048)),
             inference_backbones=("resnet18", "resnet101"),
             pseudo_label=((4, 19, 64, 128), (512, 1024)))
QUICK = Sizes(kernel=(1, 19, 16, 32), losses=LOSS_SMOKE_SHAPES, discriminator=(1, 19, 32, 32),
              train=(2, 3, 32, 32), train_backbones=("resnet18",), inference=((1, 3, 64, 64),),
              inference_backbones=("resnet18",), pseudo_label=((1, 19, 4, 8), (32, 64)))
PRECISIONS = {"float32": torch.float32, "float16": torch.float16}
# torch.compile's backend for the compile provider (``--compile-backend``; tests use aot_eager).
compile_backend = "inductor"


def compiled(model: Callable[..., Any]) -> Callable[..., Any]:
    """The compile provider: static shapes, each benchmarked shape gets its own graph."""
    return torch.compile(model, dynamic=False, backend=compile_backend)


def describe(sizes: Sizes) -> dict[str, str]:
    """What each group's table measures (stated under its heading on the page)."""
    train, kernel = shape_label(sizes.train), shape_label(sizes.kernel)
    return {
        GROUPS["op"]: f"One FCD-Light&Thin layer (19 -> 64, k4 s2 p1, LeakyReLU 0.2) on {kernel}, "
                      "float32: eager is depthwise + 1x1 conv + LeakyReLU in cuDNN/PyTorch.",
        GROUPS["light_thin"]: f"The FCD-Light&Thin stack (19 -> 64 -> 128 -> 1) on {kernel}.",
        GROUPS["losses"]: "adversarial_loss and discriminator_loss (Eq. 1), forward + backward: "
                          "eager upsamples the map and builds full-size label maps; fused does "
                          "neither.",
        GROUPS["discriminators"]: "The paper's discriminators on "
                                  f"{shape_label(sizes.discriminator)} (softmax of 19 classes).",
        GROUPS["train"]: "One iteration of rtda.train.step.train_step (segmenter on the source "
                         "batch, adversarial loss on the target batch, the discriminator "
                         f"update, both optimiser steps), source and target batches of {train} "
                         "each, float32; fused = the fused discriminator layers and losses "
                         "(--fused); compile = segmenter and discriminator under torch.compile.",
        GROUPS["inference"]: "BiSeNet in eval mode, batch 1, image in -> train-id map out; "
                             "eager/compile: model(normalised image).argmax(1), the model cast to "
                             "the precision; runtime: rtda.runtime.Segmenter.predict (BatchNorm "
                             "folded, channels_last). Errors are against float32 eager logits.",
    }


@dataclass
class Runnable:
    """One provider's workload on its own inputs (see the module docstring)."""

    step: Callable[[], object]
    check: Callable[[], list[torch.Tensor]]
    reset: Callable[[], None] = lambda: None


@dataclass
class Variant:
    """A row-set of a table: ``build(provider)`` makes a provider's Runnable, ``reference()``
    the tensors it is checked against; ``release()`` frees what the builds share."""

    group: str
    label: str
    providers: tuple[str, ...]
    build: Callable[[str], Runnable]
    reference: Callable[[], list[torch.Tensor]]
    tolerance: float
    compile_cost_s: float  # a guess of the compile provider's first call on an H100 host
    release: Callable[[], None] = lambda: None
    notes: list[str] = field(default_factory=list)


class _Shared:
    """What a variant's providers share (weights, inputs, the reference), built on first use."""

    def __init__(self, factory: Callable[[], dict[str, Any]]) -> None:
        self.factory, self.value = factory, None

    def get(self) -> dict[str, Any]:
        if self.value is None:
            self.value = self.factory()
        return self.value

    def clear(self) -> None:
        self.value = None


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """No TF32 in cuDNN convolutions or matmuls: how references are computed."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    if not hasattr(conv, "fp32_precision"):  # torch < 2.9: the legacy flags
        saved = torch.backends.cudnn.allow_tf32, matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved
        return
    saved = conv.fp32_precision, matmul.fp32_precision
    try:
        conv.fp32_precision = matmul.fp32_precision = "ieee"
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def provider_names(device: str) -> tuple[str, ...]:
    """Every provider on ``device``: eager, compile, the compiled fused backend, Triton."""
    return ("eager", "compile", "fused-cuda" if device == "cuda" else "fused-cpu", "fused-triton")


def _in_backend(provider: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    backend = FUSED_BACKEND[provider]

    def run(*args: Any) -> Any:
        with rtda_kernels.use_backend(backend):
            return fn(*args)

    return run


def _tolerance(device: str, precision: str = "float32") -> float:
    return TOLERANCE.get((device, precision), TOLERANCE.get(precision, 1e-3))


def _module_variants(group: str, title: str, make: Callable[[bool], nn.Module],
                     shape: tuple[int, ...], providers: Sequence[str], device: str,
                     compile_cost: tuple[float, float]) -> list[Variant]:
    """fwd and fwd+bwd of a module made by ``make(fused)`` (same weights in both modes)."""
    variants = []
    for pass_, cost in zip(("fwd", "fwd+bwd"), compile_cost):
        def factory(pass_: str = pass_) -> dict[str, Any]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                # LeakyReLU in place, as a user writes it (bench.subjects.plain_pytorch)
                eager = plain_pytorch(make(False)).to(device)
            shared = {"eager": eager, "x": make_input(shape).to(device), "pass": pass_}
            if any(p in FUSED_BACKEND for p in providers):
                shared["fused"] = make(True).to(device)
                shared["fused"].load_state_dict(eager.state_dict())
            return shared

        state = _Shared(factory)

        def build(provider: str, state: _Shared = state) -> Runnable:
            s = state.get()
            module = s["fused"] if provider in FUSED_BACKEND else s["eager"]
            model: Callable[..., torch.Tensor] = module
            if provider == "compile":
                model = compiled(module)
            elif provider in FUSED_BACKEND:
                model = _in_backend(provider, module)
            return _model_runnable(model, list(module.parameters()), s["x"], s["pass"])

        def reference(state: _Shared = state) -> list[torch.Tensor]:
            s = state.get()
            if "reference" not in s:
                with exact_float32():
                    run = _model_runnable(s["eager"], list(s["eager"].parameters()), s["x"],
                                          s["pass"])
                    s["reference"] = run.check()
            return s["reference"]

        variants.append(Variant(title, f"{pass_} ({shape_label(shape)})", tuple(providers),
                                build, reference, _tolerance(device), cost, state.clear))
    return variants


def _model_runnable(model: Callable[..., torch.Tensor], params: list[torch.Tensor],
                    x: torch.Tensor, pass_: str) -> Runnable:
    x = x.detach().clone().requires_grad_(pass_ == "fwd+bwd")

    def reset() -> None:
        x.grad = None
        for p in params:
            p.grad = None

    if pass_ == "fwd":
        def step() -> torch.Tensor:
            with torch.no_grad():
                return model(x)

        return Runnable(step, lambda: [step()], reset)

    def step() -> torch.Tensor:
        out = model(x)
        out.sum().backward()
        return out

    def check() -> list[torch.Tensor]:
        reset()
        out = step().detach()
        return [out, x.grad, *(p.grad for p in params)]

    return Runnable(step, check, reset)


def op_variants(sizes: Sizes, providers: Sequence[str], device: str) -> list[Variant]:
    """One FCD-Light&Thin layer, 19 -> 64, k4 s2 p1, LeakyReLU 0.2."""
    c_in, c_out, slope = LIGHT_THIN_LAYERS[0]

    def make(fused: bool) -> nn.Module:
        return DepthwiseSeparableConv2d(c_in, c_out, KERNEL, STRIDE, PADDING,
                                        negative_slope=slope, fused=fused)

    return _module_variants("op", GROUPS["op"], make, sizes.kernel, providers, device, (10, 20))


def light_thin_variants(sizes: Sizes, providers: Sequence[str], device: str) -> list[Variant]:
    """The three-layer FCD-Light&Thin stack (``bench.subjects.light_thin_stack``)."""
    return _module_variants("light_thin", GROUPS["light_thin"], light_thin_stack, sizes.kernel,
                            providers, device, (15, 30))


def discriminator_variants(sizes: Sizes, providers: Sequence[str], device: str,
                           interpreted: bool = False) -> list[Variant]:
    """The paper's three discriminators; ``fcd`` has no depthwise-separable layer, so no fused
    provider. ``interpreted`` (Triton on the CPU): fused-triton only for fcd_light_thin's
    forward, since the interpreter takes many seconds per pass of the wider ones."""
    variants = []
    for name in DISCRIMINATORS:
        names = [p for p in providers if name != "fcd" or p not in FUSED_BACKEND]

        def make(fused: bool, name: str = name) -> nn.Module:
            return build_discriminator(name, fused=fused)

        for v in _module_variants("discriminators", GROUPS["discriminators"], make,
                                  sizes.discriminator, names, device, (15, 30)):
            if interpreted and (name != "fcd_light_thin" or not v.label.startswith("fwd ")):
                v.providers = tuple(p for p in v.providers if p != "fused-triton")
            v.label = f"{name} {v.label}"
            variants.append(v)
    return variants


def loss_variants(sizes: Sizes, providers: Sequence[str], device: str) -> list[Variant]:
    """adversarial_loss (one map against 1.0) and discriminator_loss (Eq. 1), fwd+bwd: eager
    upsamples and builds full-size label maps, fused does neither."""
    variants = []
    for shape in sizes.losses:
        for name, inputs in (("adversarial_loss", 1), ("discriminator_loss", 2)):
            size = shape.output_size

            def eager(*maps: torch.Tensor, size: Any = size) -> torch.Tensor:
                if len(maps) == 1:
                    return _eager_bce(maps[0], ADVERSARIAL_LABEL, size)
                return 0.5 * (_eager_bce(maps[0], SOURCE_LABEL, size)
                              + _eager_bce(maps[1], TARGET_LABEL, size))

            def fused(*maps: torch.Tensor, size: Any = size) -> torch.Tensor:
                if len(maps) == 1:
                    return rtda_kernels.adversarial_loss(maps[0], ADVERSARIAL_LABEL,
                                                         output_size=size)
                return rtda_kernels.discriminator_loss(
                    maps[0], maps[1], source_label=SOURCE_LABEL, target_label=TARGET_LABEL,
                    output_size=size)

            maps = [make_input(shape.logits, seed=1 + i).to(device) for i in range(inputs)]

            def build(provider: str, eager: Any = eager, fused: Any = fused,
                      maps: list[torch.Tensor] = maps) -> Runnable:
                fn = eager
                if provider == "compile":
                    fn = compiled(eager)
                elif provider in FUSED_BACKEND:
                    fn = _in_backend(provider, fused)
                return _loss_runnable(fn, maps)

            def reference(eager: Any = eager, maps: list[torch.Tensor] = maps
                          ) -> list[torch.Tensor]:
                return _loss_runnable(eager, maps).check()

            label = f"{name} fwd+bwd ({shape.label()})"
            variants.append(Variant(GROUPS["losses"], label, tuple(providers), build, reference,
                                    _tolerance(device), 10))
    variants.append(_pseudo_label_variant(sizes, providers, device))
    return variants


def _pseudo_label_variant(sizes: Sizes, providers: Sequence[str], device: str) -> Variant:
    """pseudo_label_loss fwd+bwd: eager (its reference) upsamples both maps and takes the
    softmax at full size, fused does neither; half of each image ClassMix labels."""
    shape, size = sizes.pseudo_label
    generator = torch.Generator().manual_seed(3)
    student = (4 * torch.randn(shape, generator=generator)).to(device)
    teacher = (4 * torch.randn(shape, generator=generator)).to(device)
    labels = torch.randint(0, shape[1], (shape[0], *size), generator=generator)
    labels[:, :, size[1] // 2:] = rtda_kernels.reference.PSEUDO_LABEL
    labels = labels.to(device)

    def eager(s: torch.Tensor) -> torch.Tensor:
        return rtda_kernels.reference.pseudo_label_loss(s, teacher, labels, output_size=size)[0]

    def fused(s: torch.Tensor) -> torch.Tensor:
        return rtda_kernels.pseudo_label_loss(s, teacher, labels, output_size=size)[0]

    def build(provider: str) -> Runnable:
        fn = eager
        if provider == "compile":
            fn = compiled(eager)
        elif provider in FUSED_BACKEND:
            fn = _in_backend(provider, fused)
        return _loss_runnable(fn, [student])

    label = f"pseudo_label_loss fwd+bwd ({','.join(map(str, shape))}->{size[0]},{size[1]})"
    return Variant(GROUPS["losses"], label, tuple(providers), build,
                   lambda: _loss_runnable(eager, [student]).check(), _tolerance(device), 20)


def _loss_runnable(fn: Callable[..., torch.Tensor], maps: list[torch.Tensor]) -> Runnable:
    inputs = [m.detach().clone().requires_grad_(True) for m in maps]

    def reset() -> None:
        for t in inputs:
            t.grad = None

    def step() -> torch.Tensor:
        loss = fn(*inputs)
        loss.backward()
        return loss

    def check() -> list[torch.Tensor]:
        reset()
        return [step().detach(), *(t.grad for t in inputs)]

    return Runnable(step, check, reset)
