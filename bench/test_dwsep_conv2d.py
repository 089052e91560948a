"""pytest-benchmark suite for ``dwsep_conv2d``: eager vs torch.compile vs fused, side by side.

Subjects (``bench.subjects``): the op alone (one 19 -> 64 layer) and the FCD-Light&Thin stack
(three layers). For each subject x shape x pass, the providers ``eager``, ``compile`` and
``fused`` share one benchmark group, e.g. ``"light_thin stack fwd+bwd (1,19,512,1024)"``.
Compilation and warm-up happen before the timed rounds; ``extra_info`` holds ``peak_mb`` (peak
CPU-allocator bytes during one pass) and ``saved_mb`` (bytes autograd saved for backward; 0 in
the ``fwd`` pass, which runs under ``torch.no_grad``), measured once, outside the timed rounds.

    pytest bench --benchmark-only                      # real shapes (a few minutes)
    pytest bench --benchmark-only -k 2x19x256x512      # one shape
    pytest bench --benchmark-disable                   # smoke: tiny shape + correctness checks
"""

from __future__ import annotations

import pytest
import torch

from bench.memory import peak_allocated_bytes, saved_for_backward_bytes, to_mb
from bench.subjects import (
    PASSES,
    PROVIDERS,
    SHAPES,
    SMOKE_SHAPE,
    SUBJECTS,
    Case,
    Subject,
    assert_matches_eager,
    group_name,
    make_case,
    make_input,
    shape_label,
    warm_up,
)

# Timed rounds per benchmark (after one warm-up round). Eager fwd+bwd of the stack takes about a
# second at the real shapes on 2 cores, so a handful keeps the suite to a few minutes.
ROUNDS = 5

_built: dict[str, Subject] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise over shape x subject x pass x provider, in that order, so that the tests of
    one group run one after another; ids read like ``2x19x256x512-light_thin-fwd+bwd-fused``.
    With pytest-benchmark disabled (a smoke run) the only shape is ``SMOKE_SHAPE``."""
    if metafunc.function.__name__ != "test_dwsep_conv2d":
        return
    smoke = metafunc.config.getoption("benchmark_disable", default=False)
    shapes = [SMOKE_SHAPE] if smoke else list(SHAPES)
    params = [
        pytest.param(shape, name, pass_, provider,
                     id=f"{shape_label(shape, 'x')}-{name}-{pass_}-{provider}")
        for shape in shapes for name in SUBJECTS for pass_ in PASSES for provider in PROVIDERS
    ]
    metafunc.parametrize("shape,subject,pass_,provider", params, indirect=["subject"])


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> Subject:
    """Each subject is built (and its torch.compile wrapper created) once per session, so a
    compiled graph is reused by every test with the same shape and pass."""
    name = request.param
    if name not in _built:
        _built[name] = SUBJECTS[name]()
    return _built[name]


def _check_against_eager(case: Case, shape: tuple[int, ...]) -> None:
    """The provider's output (and, for fwd+bwd, input gradient) equal eager's."""
    eager = make_case(case.subject, "eager", case.pass_, make_input(shape))
    models = case.subject.models
    for c in (case, eager):
        c.reset()
    with torch.set_grad_enabled(case.pass_ == "fwd+bwd"):
        actual, expected = models[case.provider](case.x), models["eager"](eager.x)
    if case.pass_ == "fwd+bwd":
        actual.sum().backward()
        expected.sum().backward()
        assert_matches_eager(actual, expected, case.x.grad, eager.x.grad)
    else:
        assert_matches_eager(actual, expected)
    for c in (case, eager):
        c.reset()


def test_dwsep_conv2d(benchmark, subject: Subject, pass_: str, shape: tuple[int, ...],
                      provider: str) -> None:
    """Time one provider on one subject, shape and pass, after checking it once at that shape
    against eager."""
    benchmark.group = group_name(subject, pass_, shape)
    case = make_case(subject, provider, pass_, make_input(shape))
    warm_up(case)  # compiles the `compile` provider: never inside the timed rounds
    if provider != "eager":
        _check_against_eager(case, shape)
    case.reset()
    benchmark.extra_info["peak_mb"] = to_mb(peak_allocated_bytes(case.step))
    case.reset()
    benchmark.extra_info["saved_mb"] = to_mb(saved_for_backward_bytes(case.step))
    benchmark.pedantic(case.step, setup=case.reset, rounds=ROUNDS, warmup_rounds=1)
