"""What the benchmarks measure, built in one place for the pytest suite and ``bench.summary``.

A *subject* is a workload (the fused op alone, or the FCD-Light&Thin discriminator stack) built
once per process, with one callable per *provider*:

- ``eager``: plain PyTorch (``rtda_kernels.reference`` / ``DepthwiseSeparableConv2d(fused=False)``);
- ``compile``: ``torch.compile`` of that same eager callable (it shares the eager parameters);
- ``fused``: ``rtda_kernels`` on the ``cpu`` (C++) backend, with the eager weights loaded into it.

A *case* binds a subject, a provider, a pass (``fwd`` under ``torch.no_grad``, or ``fwd+bwd``:
``output.sum().backward()`` into the input and every parameter) and an input. Its ``reset``
(clearing gradients) is not timed; its ``step`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
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

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Subject:
    """A workload: one callable per provider, and every parameter tensor behind them."""

    name: str  # how groups and tables call it, e.g. "light_thin stack"
    models: dict[str, Model]
    parameters: list[torch.Tensor] = field(default_factory=list)

    def clear_grads(self) -> None:
        for p in self.parameters:
            p.grad = None


@dataclass
class Case:
    """One subject x provider x pass on one input: ``reset()`` (untimed) then ``step()`` (timed)."""

    subject: Subject
    provider: str
    pass_: str
    x: torch.Tensor
    step: Callable[[], object]

    def reset(self) -> None:
        self.subject.clear_grads()
        self.x.grad = None


def shape_label(shape: tuple[int, ...], sep: str = ",") -> str:
    """``(2, 19, 256, 512)`` -> ``"2,19,256,512"`` (or ``"2x19x256x512"`` with ``sep="x"``)."""
    return sep.join(str(s) for s in shape)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"2,19,256,512"`` (or ``"2x19x256x512"``) -> ``(2, 19, 256, 512)``; C must be 19."""
    parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    if len(parts) != 4 or min(parts) < 1 or parts[1] != LIGHT_THIN_LAYERS[0][0]:
        raise ValueError(f"expected N,19,H,W with positive sizes, got {text!r}")
    return parts  # type: ignore[return-value]


def _on_cpu_backend(model: Model) -> Model:
    """Run ``model`` with the fused ops forced onto the C++ CPU backend (an error if missing)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with rtda_kernels.use_backend("cpu"):
            return model(x)

    return run


def _compiled(model: Model) -> Model:
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

    models = {"eager": eager, "compile": _compiled(eager), "fused": _on_cpu_backend(fused)}
    return Subject("dwsep_conv2d op", models, list(weights))


def light_thin_stack(fused: bool) -> nn.Sequential:
    """The FCD-Light&Thin discriminator: three depthwise-separable k4 s2 p1 layers."""
    return nn.Sequential(*(
        DepthwiseSeparableConv2d(c_in, c_out, KERNEL, STRIDE, PADDING, negative_slope=slope,
                                 fused=fused)
        for c_in, c_out, slope in LIGHT_THIN_LAYERS
    ))


def build_light_thin(seed: int = 0) -> Subject:
    """The stack as modules: ``fused=False`` (eager, compiled) and ``fused=True``, same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        eager = light_thin_stack(fused=False)
    fused = light_thin_stack(fused=True)
    fused.load_state_dict(eager.state_dict())
    models = {"eager": eager, "compile": _compiled(eager), "fused": _on_cpu_backend(fused)}
    return Subject("light_thin stack", models, [*eager.parameters(), *fused.parameters()])


# Subject ids (as used in test ids and ``bench.summary --subject``) -> builders.
SUBJECTS: dict[str, Callable[[], Subject]] = {"op": build_op, "light_thin": build_light_thin}


def make_input(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    """A standard-normal float32 input, the same for every provider."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def make_case(subject: Subject, provider: str, pass_: str, x: torch.Tensor) -> Case:
    """Bind ``subject.models[provider]`` to ``pass_`` on (a private copy of) ``x``."""
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
    model = subject.models[provider]
    x = x.detach().clone().requires_grad_(pass_ == "fwd+bwd")

    if pass_ == "fwd":
        def step() -> torch.Tensor:
            with torch.no_grad():
                return model(x)
    else:
        def step() -> None:
            model(x).sum().backward()

    return Case(subject, provider, pass_, x, step)


def warm_up(case: Case, runs: int = 3) -> None:
    """Run ``case`` a few times untimed: compiles (``compile``) and fills caches/allocators."""
    for _ in range(runs):
        case.reset()
        case.step()
    case.reset()


def group_name(subject: Subject, pass_: str, shape: tuple[int, ...]) -> str:
    """E.g. ``"light_thin stack fwd+bwd (1,19,512,1024)"``: the providers of one comparison."""
    return f"{subject.name} {pass_} ({shape_label(shape)})"
