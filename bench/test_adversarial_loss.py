"""pytest-benchmark suite for the pixel-wise adversarial losses: eager vs torch.compile vs fused.

Subjects (``bench.subjects.LOSS_SUBJECTS``): ``adversarial_loss`` (one map of D against the label
1.0) and D's ``discriminator_loss`` (Eq. (1): a source map against 0 and a target
map against 1). Eager PyTorch is ``F.interpolate`` (bilinear, align_corners=False) to the label
resolution, then ``F.binary_cross_entropy_with_logits`` against a label map built with
``torch.full_like``; ``compile`` is ``torch.compile`` of it; ``fused`` is
``rtda_kernels.adversarial_loss(logits, 1.0, output_size=(H, W))`` / ``discriminator_loss`` on the
default backend (C++ on CPU), which never materialises the full-resolution map.

Shapes (``LOSS_SHAPES``), the paper's training resolution with batch 4: the FCD / FCD-Light map
4x1x16x32 upsampled to 512x1024, and the FCD-Light&Thin map 4x1x64x128 taken as it is. For each
subject x shape x pass the three providers share one benchmark group, e.g.
``"discriminator_loss fwd+bwd (4,1,16,32->512,1024)"``; ``extra_info`` holds ``peak_mb`` and
``saved_mb`` as in ``test_dwsep_conv2d.py``, plus ``peak_maps``: the peak in units of one
full-resolution float32 loss map (the fused provider stays far below 1; ``test_memory.py``
asserts it).

    pytest bench/test_adversarial_loss.py --benchmark-only             # real shapes (a minute)
    pytest bench/test_adversarial_loss.py --benchmark-only -k 512x1024 # the upsampled case
    pytest bench/test_adversarial_loss.py --benchmark-disable          # smoke: tiny + checks
"""

from __future__ import annotations

import pytest
import torch

import rtda_kernels
from bench.memory import peak_allocated_bytes, saved_for_backward_bytes, to_mb
from bench.subjects import (
    LOSS_SHAPES,
    LOSS_SMOKE_SHAPES,
    LOSS_SUBJECTS,
    PASSES,
    PROVIDERS,
    ADVERSARIAL_LABEL,
    SOURCE_LABEL,
    TARGET_LABEL,
    Case,
    LossShape,
    Subject,
    group_name,
    make_case,
    make_inputs,
    warm_up,
)

# Timed rounds per benchmark (after one warm-up round). A pass takes from tens of microseconds
# (fused, 4x1x64x128) to tens of milliseconds (eager fwd+bwd at 512x1024): many rounds are cheap.
ROUNDS = 50
# The loss is a mean: its gradient per logit is small (about 1 / pixels per pixel), so the
# absolute tolerance must be far below 1e-4 for the gradient check to mean anything.
TOLERANCE = {"atol": 1e-6, "rtol": 1e-4}

_built: dict[tuple[str, tuple[int, int] | None], Subject] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise over shape x subject x pass x provider, in that order, so that the tests of
    one group run one after another; ids read like
    ``4x1x16x32-to-512x1024-discriminator_loss-fwd+bwd-fused``. With pytest-benchmark disabled
    (a smoke run) the shapes are ``LOSS_SMOKE_SHAPES``."""
    if metafunc.function.__name__ != "test_adversarial_loss":
        return
    smoke = metafunc.config.getoption("benchmark_disable", default=False)
    shapes = LOSS_SMOKE_SHAPES if smoke else LOSS_SHAPES
    params = [
        pytest.param(shape, (name, shape.output_size), pass_, provider,
                     id=f"{shape.label('x')}-{name}-{pass_}-{provider}")
        for shape in shapes for name in LOSS_SUBJECTS for pass_ in PASSES
        for provider in PROVIDERS
    ]
    metafunc.parametrize("shape,subject,pass_,provider", params, indirect=["subject"])


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> Subject:
    """Each subject is built (and its torch.compile wrapper created) once per session and output
    size, so a compiled graph is reused by every test with the same shape and pass."""
    key = request.param
    if key not in _built:
        name, output_size = key
        _built[key] = LOSS_SUBJECTS[name](output_size)
    return _built[key]


def _reference(subject: Subject, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``rtda_kernels.reference``'s loss: what the fused op promises to compute."""
    ref = rtda_kernels.reference
    if subject.inputs == 1:
        return ref.adversarial_loss(inputs[0], ADVERSARIAL_LABEL, output_size=subject.output_size)
    return ref.discriminator_loss(*inputs, source_label=SOURCE_LABEL, target_label=TARGET_LABEL,
                                  output_size=subject.output_size)


def _check(case: Case) -> None:
    """The provider's loss (and, for fwd+bwd, the gradient of every input map) equal those of
    ``rtda_kernels.reference`` (for ``eager``: the eager formula is the reference's)."""
    backward = case.pass_ == "fwd+bwd"
    expected_inputs = tuple(x.detach().clone().requires_grad_(backward) for x in case.inputs)
    case.reset()
    with torch.set_grad_enabled(backward):
        actual = case.subject.models[case.provider](*case.inputs)
        expected = _reference(case.subject, expected_inputs)
    assert actual.shape == () and actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, **TOLERANCE)
    if backward:
        actual.backward()
        expected.backward()
        for got, want in zip(case.inputs, expected_inputs):
            torch.testing.assert_close(got.grad, want.grad, **TOLERANCE)
    case.reset()


def test_adversarial_loss(benchmark, subject: Subject, pass_: str, shape: LossShape,
                          provider: str) -> None:
    """Time one provider on one loss, shape and pass, after checking it once at that shape
    against the reference."""
    benchmark.group = group_name(subject, pass_, shape.logits)
    case = make_case(subject, provider, pass_, make_inputs(subject, shape.logits))
    warm_up(case)  # compiles the `compile` provider: never inside the timed rounds
    _check(case)
    case.reset()
    peak = peak_allocated_bytes(case.step)
    map_bytes = torch.Size(shape.loss_map).numel() * torch.float32.itemsize
    benchmark.extra_info["peak_mb"] = to_mb(peak)
    benchmark.extra_info["peak_maps"] = round(peak / map_bytes, 3)
    case.reset()
    benchmark.extra_info["saved_mb"] = to_mb(saved_for_backward_bytes(case.step))
    benchmark.pedantic(case.step, setup=case.reset, rounds=ROUNDS, warmup_rounds=1)
