"""The public API of the adversarial losses: clear errors for bad input on every backend, and
backend selection."""

from __future__ import annotations

import pytest
import torch

import rtda_kernels
from tests.kernels.helpers import backend_params, device_of

ALL_BACKENDS = backend_params("reference", "cpu", "triton", "cuda")


def logits_on(backend: str, shape=(2, 1, 4, 5), dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype, device=device_of(backend))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "make_args,error,match",
    [
        (lambda x: (x.long(), 1.0), TypeError, "logits must be a floating-point tensor"),
        (lambda x: (x.tolist(), 1.0), TypeError, "logits must be a torch.Tensor"),
        (lambda x: (x[0], 1.0), ValueError, "logits must be a 4-D tensor"),
        (lambda x: (x[:0], 1.0), ValueError, "logits must not be empty"),
        (lambda x: (x, torch.ones(2, 1, 4, 6, device=x.device)), ValueError, r"target must have shape the loss map N x C x H x W = \(2, 1, 4, 5\)"),
        (lambda x: (x, torch.ones(2, 1, 4, 5, dtype=torch.float64, device=x.device)), TypeError, "target has dtype torch.float64 but logits has torch.float32"),
        (lambda x: (x, torch.ones(2, 1, 4, 5, device=x.device).long()), TypeError, "target must be a floating-point tensor"),
        (lambda x: (x, "1"), TypeError, "target must be a float"),
        (lambda x: (x, True), TypeError, "target must be a float"),
        (lambda x: (x, float("nan")), ValueError, "target must be finite"),
    ],
    ids=["int-logits", "list-logits", "3d-logits", "empty", "target-shape", "target-dtype",
         "int-target", "str-target", "bool-target", "nan-target"],
)
def test_bad_logits_and_targets(backend, make_args, error, match):
    args = make_args(logits_on(backend))
    with rtda_kernels.use_backend(backend), pytest.raises(error, match=match):
        rtda_kernels.adversarial_loss(*args)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "output_size,error,match",
    [
        ((0, 5), ValueError, "output_size H must be >= 1, got 0"),
        ((5, -1), ValueError, "output_size W must be >= 1, got -1"),
        (5, ValueError, r"output_size must be None or a pair \(H, W\), got 5"),
        ((5, 6, 7), ValueError, "output_size must be None or a pair"),
        ((5.5, 6), TypeError, "output_size H must be an int, got float"),
        ("ab", ValueError, "output_size must be None or a pair"),
    ],
    ids=["zero", "negative", "int", "triple", "float", "string"],
)
def test_bad_output_size(backend, output_size, error, match):
    with rtda_kernels.use_backend(backend), pytest.raises(error, match=match):
        rtda_kernels.adversarial_loss(logits_on(backend), 1.0, output_size=output_size)
    with rtda_kernels.use_backend(backend), pytest.raises(error, match=match):
        x = logits_on(backend)
        rtda_kernels.discriminator_loss(x, x, output_size=output_size)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bad_reduction(backend):
    with rtda_kernels.use_backend(backend), pytest.raises(ValueError, match=r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"):
        rtda_kernels.adversarial_loss(logits_on(backend), 1.0, reduction="avg")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_target_requiring_grad_is_refused(backend):
    x = logits_on(backend)
    target = torch.ones_like(x).requires_grad_()
    with rtda_kernels.use_backend(backend), pytest.raises(ValueError, match="target requires grad"):
        rtda_kernels.adversarial_loss(x, target)
    with torch.no_grad(), rtda_kernels.use_backend(backend):
        rtda_kernels.adversarial_loss(x, target)  # nothing to differentiate: accepted


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bad_discriminator_inputs(backend):
    x = logits_on(backend)
    with rtda_kernels.use_backend(backend):
        with pytest.raises(TypeError, match="d_target has dtype torch.float64 but d_source has torch.float32"):
            rtda_kernels.discriminator_loss(x, x.double())
        with pytest.raises(ValueError, match="different spatial sizes"):
            rtda_kernels.discriminator_loss(x, logits_on(backend, (2, 1, 4, 6)))
        with pytest.raises(ValueError, match="d_source must not be empty"):
            rtda_kernels.discriminator_loss(x[:0], x)
        with pytest.raises(TypeError, match="d_target must be a floating-point tensor"):
            rtda_kernels.discriminator_loss(x, x.int())
        with pytest.raises(TypeError, match="source_label must be a float"):
            rtda_kernels.discriminator_loss(x, x, source_label=None)
        with pytest.raises(ValueError, match="target_label must be finite"):
            rtda_kernels.discriminator_loss(x, x, target_label=float("inf"))


def test_triton_refuses_float64():
    if not rtda_kernels.available_backends()["triton"].available:
        pytest.skip("triton is not available")
    x = logits_on("triton", dtype=torch.float64)
    with rtda_kernels.use_backend("triton"), pytest.raises(TypeError, match="logits has dtype torch.float64"):
        rtda_kernels.adversarial_loss(x, 1.0)


def test_default_backend_on_cpu_is_the_compiled_kernel():
    assert rtda_kernels.select_backend("adversarial_loss", torch.device("cpu")) == "cpu"
    x = torch.randn(1, 1, 3, 3)
    with torch.profiler.profile() as profile:
        rtda_kernels.adversarial_loss(x, 1.0, output_size=(6, 6))
    names = {event.name for event in profile.events()}
    assert "rtda_kernels::adversarial_loss" in names
    assert not any("upsample" in name for name in names)


def test_direct_op_call_without_compute_grad_still_differentiates():
    """An op called without compute_grad recomputes its gradient in backward."""
    x = torch.randn(2, 1, 3, 4, requires_grad=True)
    loss, grad = torch.ops.rtda_kernels.adversarial_loss(x, None, 1.0, [6, 7], 1, False)
    assert grad.numel() == 0
    (actual,) = torch.autograd.grad(loss, x)
    (expected,) = torch.autograd.grad(rtda_kernels.reference.adversarial_loss(x, 1.0, output_size=(6, 7)), x)
    torch.testing.assert_close(actual, expected)
