"""What the benchmarks measure, built in one place for the pytest suites and ``bench.gpu``.

A *subject* is a workload (the fused op alone, the FCD-Light&Thin discriminator stack, or one of
the pixel-wise adversarial losses) built once per process, with one callable per *provider*:

- ``eager``: plain PyTorch as a user writes it (``rtda_kernels.reference`` for the op; for the
  stack and the discriminators each layer's two ``nn.Conv2d`` then LeakyReLU *in place*, as
  rtda.models' ``fcd`` does: ``plain_pytorch``; ``F.interpolate`` then
  ``F.binary_cross_entropy_with_logits`` against a full-size label);
- ``compile``: ``torch.compile`` of that same eager callable (it shares the eager parameters);
- ``fused``: ``rtda_kernels`` on the ``cpu`` (C++) backend, with the eager weights loaded into it
  (the losses call it on the default backend, checked to be ``cpu`` when they are built).

A *case* binds a subject, a provider, a pass (``fwd`` under ``torch.no_grad``, or ``fwd+bwd``:
``output.sum().backward()``, or ``loss.backward()`` for a 0-dim loss, into the inputs and every
parameter) and its inputs. Its ``reset`` (clearing gradients) is not timed; its ``step`` is.

The loss subjects (``LOSS_SUBJECTS``) are built for one output size: the discriminator's map is
N x 1 x h x w, upsampled to the label resolution ``output_size`` (None: no upsampling), and a
``LossShape`` names both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import rtda_kernels
from rtda_kernels.nn import DepthwiseSeparableConv2d

PROVIDERS = ("eager", "compile", "fused")
PASSES = ("fwd", "fwd+bwd")
# The discriminator input of the paper (19 classes, 512x1024), and a smaller one for quick runs.
SHAPES = ((2, 19, 256, 512), (1, 19, 512, 1024))
# What smoke runs (``pytest bench --benchmark-disable``) use instead: every provider, in seconds.
SMOKE_SHAPE = (1, 19, 32, 64)

KERNEL, STRIDE, PADDING, SLOPE = 4, 2, 1, 0.2
# FCD-Light&Thin: (in_channels, out_channels, negative_slope) of each layer; the last is linear.
LIGHT_THIN_LAYERS = ((19, 64, SLOPE), (64, 128, SLOPE), (128, 1, None))

Model = Callable[..., torch.Tensor]  # called with the case's inputs: one tensor, or two maps


class LossShape(NamedTuple):
    """A loss workload's size: the discriminator's map (N, C, h, w) and the size it is upsampled
    to, (H, W), or None (the loss is taken at the map's own resolution)."""

    logits: tuple[int, int, int, int]
    output_size: tuple[int, int] | None

    @property
    def loss_map(self) -> tuple[int, ...]:
        """(N, C, H, W): the full-resolution map that eager PyTorch materialises."""
        return self.logits if self.output_size is None else (*self.logits[:2], *self.output_size)

    def label(self, sep: str = ",") -> str:
        """``"4,1,16,32->512,1024"`` (``sep="x"``: ``"4x1x16x32-to-512x1024"``, for test ids)."""
        text = shape_label(self.logits, sep)
        if self.output_size is not None:
            arrow = "-to-" if sep == "x" else "->"
            text += arrow + shape_label(self.output_size, sep)
        return text


# The paper's training resolution (labels 512x1024) with batch 4: FCD / FCD-Light output a 1/32
# map that is upsampled to the labels; FCD-Light&Thin's 1/8 map is taken as it is.
LOSS_SHAPES = (LossShape((4, 1, 16, 32), (512, 1024)), LossShape((4, 1, 64, 128), None))
# What smoke runs use instead (both kinds, so the resize and no-resize paths are both checked).
LOSS_SMOKE_SHAPES = (LossShape((2, 1, 4, 8), (32, 64)), LossShape((2, 1, 8, 16), None))
# Domain labels of Eq. (1): source 0, target 1. The adversarial_loss subject uses 1.0 (the value
# does not change the work).
SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0
ADVERSARIAL_LABEL = 1.0


@dataclass
class Subject:
    """A workload: one callable per provider, and every parameter tensor behind them."""

    name: str  # how groups and tables call it, e.g. "light_thin stack"
    models: dict[str, Model]
    parameters: list[torch.Tensor] = field(default_factory=list)
    inputs: int = 1  # how many input tensors (all of one shape) the models take
    output_size: tuple[int, int] | None = None  # loss subjects: the upsampled size, if any

    def clear_grads(self) -> None:
        for p in self.parameters:
            p.grad = None


@dataclass
class Case:
    """One subject x provider x pass on its inputs: ``reset()`` (untimed), ``step()`` (timed)."""

    subject: Subject
    provider: str
    pass_: str
    inputs: tuple[torch.Tensor, ...]
    step: Callable[[], object]

    @property
    def x(self) -> torch.Tensor:
        """The (first) input."""
        return self.inputs[0]

    def reset(self) -> None:
        self.subject.clear_grads()
        for x in self.inputs:
            x.grad = None


def shape_label(shape: tuple[int, ...], sep: str = ",") -> str:
    """``(2, 19, 256, 512)`` -> ``"2,19,256,512"`` (or ``"2x19x256x512"`` with ``sep="x"``)."""
    return sep.join(str(s) for s in shape)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"2,19,256,512"`` (or ``"2x19x256x512"``) -> ``(2, 19, 256, 512)``; C must be 19."""
    parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    if len(parts) != 4 or min(parts) < 1 or parts[1] != LIGHT_THIN_LAYERS[0][0]:
        raise ValueError(f"expected N,19,H,W with positive sizes, got {text!r}")
    return parts  # type: ignore[return-value]


def on_cpu_backend(model: Model) -> Model:
    """Run ``model`` with the fused ops forced onto the C++ CPU backend (an error if missing)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with rtda_kernels.use_backend("cpu"):
            return model(x)

    return run


def compiled(model: Model) -> Model:
    # Static shapes: each benchmarked shape gets its own specialised graph, as a deployment would.
    return torch.compile(model, dynamic=False)


def build_op(seed: int = 0) -> Subject:
    """One layer 19 -> 64, k4 s2 p1, slope 0.2, called as a function on shared weight tensors."""
    c_in, c_out, slope = LIGHT_THIN_LAYERS[0]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = DepthwiseSeparableConv2d(c_in, c_out, KERNEL, STRIDE, PADDING, negative_slope=slope)
    weights = (layer.depthwise.weight, layer.depthwise.bias, layer.pointwise.weight,
               layer.pointwise.bias)
    conv = {"stride": STRIDE, "padding": PADDING, "negative_slope": slope}

    def eager(x: torch.Tensor) -> torch.Tensor:
        return rtda_kernels.reference.dwsep_conv2d(x, *weights, **conv)

    def fused(x: torch.Tensor) -> torch.Tensor:
        return rtda_kernels.dwsep_conv2d(x, *weights, **conv)

    models = {"eager": eager, "compile": compiled(eager), "fused": on_cpu_backend(fused)}
    return Subject("dwsep_conv2d op", models, list(weights))


class PlainSeparableConv2d(nn.Module):
    """A ``DepthwiseSeparableConv2d(fused=False)`` as a user writes it in plain PyTorch: the two
    convolutions, then LeakyReLU in place (``nn.LeakyReLU(inplace=True)``, as rtda.models' ``fcd``
    does), so that the eager baseline does not keep an activation copy the fused op never makes.
    Holds the same conv modules (parameters shared, state_dict keys unchanged)."""

    def __init__(self, layer: DepthwiseSeparableConv2d) -> None:
        super().__init__()
        self.depthwise, self.pointwise = layer.depthwise, layer.pointwise
        self.negative_slope = layer.negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        if self.negative_slope is None:
            return y
        return F.leaky_relu(y, self.negative_slope, inplace=True)


def plain_pytorch(model: nn.Module) -> nn.Module:
    """``model`` with each unfused ``DepthwiseSeparableConv2d`` swapped for a
    ``PlainSeparableConv2d`` (in place; the same parameters and state_dict keys)."""
    if isinstance(model, DepthwiseSeparableConv2d) and not model.fused:
        return PlainSeparableConv2d(model)
    for name, child in model.named_children():
        plain = plain_pytorch(child)
        if plain is not child:
            setattr(model, name, plain)
    return model


def light_thin_stack(fused: bool) -> nn.Sequential:
    """The FCD-Light&Thin discriminator: three depthwise-separable k4 s2 p1 layers."""
    return nn.Sequential(*(
        DepthwiseSeparableConv2d(c_in, c_out, KERNEL, STRIDE, PADDING, negative_slope=slope,
                                 fused=fused)
        for c_in, c_out, slope in LIGHT_THIN_LAYERS
    ))


def build_light_thin(seed: int = 0) -> Subject:
    """The stack as modules: plain PyTorch (eager, compiled; ``plain_pytorch``) and
    ``fused=True``, same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        eager = plain_pytorch(light_thin_stack(fused=False))
    fused = light_thin_stack(fused=True)
    fused.load_state_dict(eager.state_dict())
    models = {"eager": eager, "compile": compiled(eager), "fused": on_cpu_backend(fused)}
    return Subject("light_thin stack", models, [*eager.parameters(), *fused.parameters()])


# Subject ids (as used in test ids) -> builders.
SUBJECTS: dict[str, Callable[[], Subject]] = {"op": build_op, "light_thin": build_light_thin}


def _check_fused_loss_on_cpu() -> None:
    """The fused losses run on the default backend (forcing one with ``use_backend`` would time
    its checks too): make sure that it is the C++ one, not a silent fallback to the reference."""
    backend = rtda_kernels.select_backend("adversarial_loss", torch.device("cpu"))
    if backend != "cpu":
        raise RuntimeError(
            f"the default backend for CPU tensors is {backend!r}, not 'cpu': the fused loss would "
            f"not be the C++ kernel ({rtda_kernels.available_backends()['cpu']}; is "
            "RTDA_KERNELS_BACKEND set?)"
        )


def _upsampled(logits: torch.Tensor, output_size: tuple[int, int] | None) -> torch.Tensor:
    if output_size is None:
        return logits
    return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)


def _eager_bce(
    logits: torch.Tensor, label: float, output_size: tuple[int, int] | None
) -> torch.Tensor:
    """What a training script writes: upsample, build the full-size label map, BCE with logits."""
    upsampled = _upsampled(logits, output_size)
    return F.binary_cross_entropy_with_logits(upsampled, torch.full_like(upsampled, label))


def build_adversarial_loss(output_size: tuple[int, int] | None) -> Subject:
    """The pixel-wise adversarial loss: BCE of one map of D against the constant label
    ``ADVERSARIAL_LABEL`` (the fused call takes it as a float; eager materialises a label map)."""
    _check_fused_loss_on_cpu()
    size = None if output_size is None else tuple(output_size)

    def eager(logits: torch.Tensor) -> torch.Tensor:
        return _eager_bce(logits, ADVERSARIAL_LABEL, size)

    def fused(logits: torch.Tensor) -> torch.Tensor:
        return rtda_kernels.adversarial_loss(logits, ADVERSARIAL_LABEL, output_size=size)

    models = {"eager": eager, "compile": compiled(eager), "fused": fused}
    return Subject("adversarial_loss", models, output_size=size)


def build_discriminator_loss(output_size: tuple[int, int] | None) -> Subject:
    """D's update, Eq. (1): 0.5 * (BCE(D(source), 0) + BCE(D(target), 1)) on two maps."""
    _check_fused_loss_on_cpu()
    size = None if output_size is None else tuple(output_size)

    def eager(d_source: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (_eager_bce(d_source, SOURCE_LABEL, size)
                      + _eager_bce(d_target, TARGET_LABEL, size))

    def fused(d_source: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
        return rtda_kernels.discriminator_loss(
            d_source, d_target, source_label=SOURCE_LABEL, target_label=TARGET_LABEL,
            output_size=size,
        )

    models = {"eager": eager, "compile": compiled(eager), "fused": fused}
    return Subject("discriminator_loss", models, inputs=2, output_size=size)


# Loss subject ids (test ids) -> builders, given the output size.
LOSS_SUBJECTS: dict[str, Callable[[tuple[int, int] | None], Subject]] = {
    "adversarial_loss": build_adversarial_loss,
    "discriminator_loss": build_discriminator_loss,
}


# How the benchmarks check a provider against eager once at the timed shape. Outputs elementwise;
# input gradients by the norm of the difference relative to eager's: at the timed shapes a few
# pixels sit within rounding of a LeakyReLU kink, where any two correct implementations may pick
# different slopes (measured at 1x19x512x1024: 600 of 10M input-gradient elements off by up to
# 0.04 for the fused op, 284 for torch.compile; norm errors 2.3e-4 to 4.8e-4 for both providers of
# the op and the Light&Thin stack), while a wrong kernel is off by O(1).
OUTPUT_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
GRADIENT_NORM_TOLERANCE = 2e-3


def assert_matches_eager(actual: torch.Tensor, expected: torch.Tensor,
                         grad: torch.Tensor | None = None,
                         expected_grad: torch.Tensor | None = None) -> None:
    """A provider's output (and input gradient, when given) against eager's, as above."""
    torch.testing.assert_close(actual, expected, **OUTPUT_TOLERANCE)
    if grad is not None:
        error = ((grad - expected_grad).norm() / expected_grad.norm()).item()
        assert error <= GRADIENT_NORM_TOLERANCE, (
            f"input gradient: |grad - eager's| / |eager's| = {error:.3g} > "
            f"{GRADIENT_NORM_TOLERANCE}")


def make_input(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    """A standard-normal float32 input, the same for every provider."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def make_inputs(
    subject: Subject, shape: tuple[int, ...], seed: int = 1
) -> tuple[torch.Tensor, ...]:
    """``subject.inputs`` standard-normal inputs of one shape (seeds ``seed``, ``seed + 1``...)."""
    return tuple(make_input(shape, seed + i) for i in range(subject.inputs))


def make_case(
    subject: Subject, provider: str, pass_: str, x: torch.Tensor | Sequence[torch.Tensor]
) -> Case:
    """Bind ``subject.models[provider]`` to ``pass_`` on (private copies of) ``x``: one tensor, or
    ``subject.inputs`` of them."""
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
    model = subject.models[provider]
    given = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    if len(given) != subject.inputs:
        raise ValueError(f"{subject.name} takes {subject.inputs} input(s), got {len(given)}")
    inputs = tuple(t.detach().clone().requires_grad_(pass_ == "fwd+bwd") for t in given)

    if pass_ == "fwd":
        def step() -> torch.Tensor:
            with torch.no_grad():
                return model(*inputs)
    else:
        def step() -> None:
            out = model(*inputs)
            (out if out.dim() == 0 else out.sum()).backward()  # a loss: as training calls it

    return Case(subject, provider, pass_, inputs, step)


def warm_up(case: Case, runs: int = 3) -> None:
    """Run ``case`` a few times untimed: compiles (``compile``) and fills caches/allocators."""
    for _ in range(runs):
        case.reset()
        case.step()
    case.reset()


def group_name(subject: Subject, pass_: str, shape: tuple[int, ...]) -> str:
    """E.g. ``"light_thin stack fwd+bwd (1,19,512,1024)"``, or for a loss subject upsampled to
    512x1024 ``"adversarial_loss fwd+bwd (4,1,16,32->512,1024)"``: the providers of one
    comparison."""
    label = shape_label(shape)
    if subject.output_size is not None:
        label += "->" + shape_label(subject.output_size)
    return f"{subject.name} {pass_} ({label})"
