"""Backend selection and the one dispatch path of every op (rtda_kernels/backends.py): what is
available and why not, automatic and forced backends, per-op kernels (has_kernel), the dtype
check, and that eager calls go through each op's registered autograd."""

from __future__ import annotations

import pytest
import torch

import rtda_kernels
from rtda_kernels import backends

OPS = ("dwsep_conv2d", "adversarial_loss", "discriminator_loss", "pseudo_label_loss",
       "winograd_conv3x3")


def test_available_backends_says_why_one_is_missing():
    infos = rtda_kernels.available_backends()
    assert set(infos) == set(rtda_kernels.BACKENDS)
    assert infos["reference"].available and infos["cpu"].available
    for info in infos.values():
        assert info.detail and str(info).startswith(info.name)
    if not torch.cuda.is_available():
        assert not infos["cuda"].available and "CUDA" in infos["cuda"].detail


def test_automatic_backend_follows_the_device(monkeypatch):
    monkeypatch.delenv("RTDA_KERNELS_BACKEND", raising=False)
    assert rtda_kernels.select_backend("dwsep_conv2d", torch.device("cpu")) == "cpu"
    assert rtda_kernels.select_backend("dwsep_conv2d", torch.device("meta")) == "reference"


def test_use_backend_and_environment_variable(monkeypatch):
    monkeypatch.setenv("RTDA_KERNELS_BACKEND", "reference")
    assert rtda_kernels.select_backend("dwsep_conv2d", torch.device("cpu")) == "reference"
    with rtda_kernels.use_backend("cpu"):  # the context manager wins over the variable
        assert rtda_kernels.select_backend("dwsep_conv2d", torch.device("cpu")) == "cpu"
        with rtda_kernels.use_backend("auto"):
            monkeypatch.delenv("RTDA_KERNELS_BACKEND")
            assert rtda_kernels.select_backend("dwsep_conv2d", torch.device("cpu")) == "cpu"
    monkeypatch.setenv("RTDA_KERNELS_BACKEND", "fastest")
    with pytest.raises(ValueError, match="RTDA_KERNELS_BACKEND.*'fastest'"):
        rtda_kernels.select_backend("dwsep_conv2d", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend"):
        with rtda_kernels.use_backend("gpu"):
            pass


def test_forcing_a_backend_that_cannot_run_the_input_fails(monkeypatch):
    monkeypatch.delenv("RTDA_KERNELS_BACKEND", raising=False)
    with rtda_kernels.use_backend("cpu"), pytest.raises(RuntimeError, match="cannot run tensors on meta"):
        rtda_kernels.select_backend("dwsep_conv2d", torch.device("meta"))
    if not torch.cuda.is_available():
        with rtda_kernels.use_backend("cuda"), pytest.raises(RuntimeError, match="missing"):
            rtda_kernels.dwsep_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3), None,
                                      torch.randn(3, 2, 1, 1), None)


def test_every_op_declares_its_kernels_and_has_kernel_reports_them():
    for op in OPS:
        assert rtda_kernels.has_kernel(op, "reference")
        assert rtda_kernels.has_kernel(op, "cpu"), op  # the compiled library is built here
        assert not rtda_kernels.has_kernel(op, "cuda") or torch.cuda.is_available()
    assert not rtda_kernels.has_kernel("winograd_conv3x3", "triton")  # it has none
    with pytest.raises(ValueError, match="unknown op 'conv9x9'; the ops are"):
        rtda_kernels.has_kernel("conv9x9", "cpu")
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        rtda_kernels.has_kernel("dwsep_conv2d", "gpu")


def test_a_forced_backend_without_a_kernel_for_the_op_raises_naming_both(monkeypatch):
    """winograd_conv3x3 has no Triton kernel: forcing triton used to run the reference."""
    monkeypatch.delenv("RTDA_KERNELS_BACKEND", raising=False)
    if not rtda_kernels.available_backends()["triton"].available:
        pytest.skip("triton is not available: the missing backend is what raises")
    x, weight = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with rtda_kernels.use_backend("triton"), torch.no_grad(), pytest.raises(
            RuntimeError, match="backend 'triton', which has no winograd_conv3x3 kernel "
                                r"\(winograd_conv3x3 runs on: reference, cpu\)"):
        rtda_kernels.winograd_conv3x3(x, weight)


def test_a_dtype_the_backend_does_not_compute_is_a_type_error():
    x, weight = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3).double()
    with torch.no_grad(), pytest.raises(
            TypeError, match="x has dtype torch.float64, which the 'cpu' backend does not support "
                             r"for winograd_conv3x3 \(supported: float32\); the 'reference'"):
        rtda_kernels.winograd_conv3x3(x, weight)


@pytest.mark.parametrize("op", ["adversarial_loss", "discriminator_loss", "pseudo_label_loss"])
def test_eager_calls_use_the_registered_autograd(op):
    """One autograd path: the op's grad_fn is the one torch.library registered (the same that
    torch.compile traces), not a separate eager autograd.Function."""
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    if op == "adversarial_loss":
        loss = rtda_kernels.adversarial_loss(logits, 1.0, output_size=(8, 8))
    elif op == "pseudo_label_loss":
        loss, _ = rtda_kernels.pseudo_label_loss(logits, logits.detach(), output_size=(8, 8))
    else:
        loss = rtda_kernels.discriminator_loss(logits, logits, output_size=(8, 8))
    assert backends.select_backend(op, logits.device) == "cpu"
    # torch.library names the backward node of a registered autograd after the op.
    assert type(loss.grad_fn).__name__ == f"GeneratedBackwardFor_rtda_kernels_{op}_defaultBackward"
