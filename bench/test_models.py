"""pytest-benchmark suite for the models: the three discriminators at the paper's training shape
(batch 4, 19 x 512 x 1024), forward and forward+backward, eager vs torch.compile vs fused
(``bench.model_subjects``). BiSeNet inference is ``bench/test_inference.py``.

Groups read like ``"fcd_light fwd+bwd (4,19,512,1024)"``. A round of ``fcd`` forward+backward
at this shape takes seconds on 2 cores, so the rounds are few; with ``--benchmark-disable`` (the
smoke run) every case runs once at a small shape. Each case is checked against eager once, at the
timed shape, before it is timed.

    pytest bench/test_models.py --benchmark-only                 # real shapes (several minutes)
    pytest bench/test_models.py --benchmark-only -k fcd_light_thin
    pytest bench/test_models.py --benchmark-disable              # smoke
"""

from __future__ import annotations

import pytest
import torch

from bench.memory import peak_allocated_bytes, saved_for_backward_bytes, to_mb
from bench.model_subjects import MODEL_SUBJECTS
from bench.subjects import (
    Subject,
    assert_matches_eager,
    group_name,
    make_case,
    make_input,
    warm_up,
)

ROUNDS = 3

_built: dict[str, Subject] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ != "test_model":
        return
    smoke = metafunc.config.getoption("benchmark_disable", default=False)
    params = []
    for name, bench in MODEL_SUBJECTS.items():
        shape = bench.smoke_shape if smoke else bench.shape
        params += [pytest.param(name, shape, pass_, provider, id=f"{name}-{pass_}-{provider}")
                   for pass_ in bench.passes for provider in bench.providers]
    metafunc.parametrize("subject,shape,pass_,provider", params, indirect=["subject"])


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> Subject:
    name = request.param
    if name not in _built:
        _built[name] = MODEL_SUBJECTS[name].build()
    return _built[name]


def _check_against_eager(subject: Subject, provider: str, pass_: str, shape) -> None:
    cases = [make_case(subject, p, pass_, make_input(shape)) for p in (provider, "eager")]
    outputs = []
    for case in cases:
        case.reset()
        with torch.set_grad_enabled(pass_ == "fwd+bwd"):
            outputs.append(subject.models[case.provider](case.x))
    if pass_ == "fwd+bwd":
        for case, out in zip(cases, outputs):
            case.reset()
            out.sum().backward()
        assert_matches_eager(*outputs, cases[0].x.grad, cases[1].x.grad)
    else:
        assert_matches_eager(*outputs)
    for case in cases:
        case.reset()


def test_model(benchmark, subject: Subject, shape, pass_: str, provider: str) -> None:
    benchmark.group = group_name(subject, pass_, shape)
    case = make_case(subject, provider, pass_, make_input(shape))
    warm_up(case, runs=1)  # compiles the `compile` provider outside the timed rounds
    if provider != "eager":  # checked once at the timed shape, before timing
        _check_against_eager(subject, provider, pass_, shape)
    case.reset()
    benchmark.extra_info["peak_mb"] = to_mb(peak_allocated_bytes(case.step))
    case.reset()
    benchmark.extra_info["saved_mb"] = to_mb(saved_for_backward_bytes(case.step))
    benchmark.pedantic(case.step, setup=case.reset, rounds=ROUNDS, warmup_rounds=1)
