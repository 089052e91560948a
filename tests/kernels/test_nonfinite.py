"""NaN and +-inf through the kernels, as PyTorch treats them (issue 15: two kernels gave silent
wrong answers here).

- adversarial_loss / discriminator_loss without a resize: exactly F.binary_cross_entropy_with_logits
  (inf for u = +inf and a label < 1, NaN for u = -inf or u = +inf with label 1, the gradient
  sigmoid(u) - label finite) for every reduction, label kind and backend. With a resize the
  pixels whose bilinear taps read a non-finite logit are non-finite as after F.interpolate, and
  everything else matches (which of those pixels are inf and which NaN follows the kernels'
  weighted taps, not F.interpolate's own arithmetic, which differs between its kernels).
- winograd_conv3x3: NaN / +-inf in x, weight, bias or residual come out where relu(conv2d(...)
  + residual) puts them, on the reference and the CPU kernel, in any layout, also when the bad
  value is in a later workspace chunk than the first.
The emulated CUDA loss kernel gets the same no-resize cases in
test_adversarial_loss_cuda_emulated.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtda_kernels
from rtda_kernels.nn import WinogradConv2d

from .helpers import assert_close, backend_params, device_of
from .test_winograd_conv3x3 import direct, make, terms

# The Triton interpreter runs on numpy, which warns about the inf - inf it is asked to compute.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

NAN, INF = float("nan"), float("inf")
LOSS_BACKENDS = backend_params("reference", "cpu", "triton", "cuda")
LOSS_DTYPES = {"reference": [torch.float32, torch.float64], "cpu": [torch.float32, torch.float64],
               "triton": [torch.float32], "cuda": [torch.float32, torch.float64]}
LABELS = [0.0, 1.0, 0.3, "tensor"]
REDUCTIONS = ["none", "mean", "sum"]


def bad_logits(shape, dtype, device, values=(INF, -INF, NAN)) -> torch.Tensor:
    """Random logits with ``values`` at spread-out pixels (one per image where there are several)."""
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    flat = logits.view(-1)
    for i, value in enumerate(values):
        flat[(i * 7919 + 5) % flat.numel()] = value
    return logits.to(dtype=dtype, device=device)


def labels_for(label, shape, dtype, device):
    if label == "tensor":
        return torch.rand(shape, generator=torch.Generator().manual_seed(4),
                          dtype=torch.float64).to(dtype=dtype, device=device)
    return label


def loss_and_grad(fn, logits, backend=None):
    """fn(logits) and d(sum(fn * w))/dlogits for a fixed positive weight map w."""
    leaf = logits.detach().clone().requires_grad_()
    if backend is None:
        loss = fn(leaf)
    else:
        with rtda_kernels.use_backend(backend):
            loss = fn(leaf)
    weight = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device)
    (grad,) = torch.autograd.grad(loss, leaf, weight.view(loss.shape))
    return loss.detach(), grad


def torch_bce(logits, label, reduction):
    """PyTorch's BCE with logits in float64 on the same values: what the losses must give."""
    target = (label.double() if isinstance(label, torch.Tensor)
              else torch.full(logits.shape, label, dtype=torch.float64, device=logits.device))
    return F.binary_cross_entropy_with_logits(logits.double(), target, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label", LABELS, ids=str)
@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_loss_without_resize_is_bce_with_logits(backend, label, reduction):
    device = device_of(backend)
    for dtype in LOSS_DTYPES[backend]:
        logits = bad_logits((2, 1, 5, 7), dtype, device)
        target = labels_for(label, logits.shape, dtype, device)
        loss, grad = loss_and_grad(
            lambda x: rtda_kernels.adversarial_loss(x, target, reduction=reduction), logits,
            backend)
        expected, expected_grad = loss_and_grad(lambda x: torch_bce(x, target, reduction),
                                                logits.double())
        name = f"{backend} {dtype} label {label} {reduction}"
        assert_close(loss, expected, "adversarial_loss", dtype, f"loss ({name})")
        assert_close(grad, expected_grad, "adversarial_loss grad", dtype, f"grad ({name})",
                     floor=1.0)
        assert grad.isfinite().sum() == grad.numel() - 1, "only the NaN logit has a NaN gradient"


@pytest.mark.parametrize("labels", [(0.0, 1.0), (1.0, 0.0)], ids=["0-1", "1-0"])
@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_discriminator_loss_without_resize(backend, labels):
    """One +inf source logit: inf with label 0 (finite gradient), NaN with label 1, as the mean
    of the two BCEs gives."""
    device = device_of(backend)
    d_source = bad_logits((2, 1, 4, 6), torch.float32, device, values=(INF,))
    d_target = bad_logits((1, 1, 4, 6), torch.float32, device, values=(-3.0,))
    leaves = [d.clone().requires_grad_() for d in (d_source, d_target)]
    with rtda_kernels.use_backend(backend):
        loss = rtda_kernels.discriminator_loss(*leaves, source_label=labels[0],
                                               target_label=labels[1])
    grads = torch.autograd.grad(loss, leaves)
    refs = [d.double().requires_grad_() for d in (d_source, d_target)]
    expected = 0.5 * (torch_bce(refs[0], labels[0], "mean") + torch_bce(refs[1], labels[1], "mean"))
    expected_grads = torch.autograd.grad(expected, refs)
    assert_close(loss.detach(), expected.detach(), "adversarial_loss", torch.float32, "loss")
    assert (loss.item() == INF) == (labels[0] == 0.0)
    for grad, expected_grad, name in zip(grads, expected_grads, ("d_source", "d_target")):
        assert grad.isfinite().all(), name
        assert_close(grad, expected_grad, "adversarial_loss grad", torch.float32, name, floor=1.0)


@pytest.mark.parametrize("size", [(9, 13), (3, 4), (5, 14), (11, 7)],
                         ids=["up", "down", "rows-same", "cols-same"])
@pytest.mark.parametrize("backend", backend_params("cpu", "triton", "cuda"))
def test_loss_with_resize_is_non_finite_where_interpolate_is(backend, size):
    device = device_of(backend)
    logits = bad_logits((2, 1, 5, 7), torch.float32, device)
    for label in (0.0, 0.3, "tensor"):
        target = labels_for(label, (2, 1, *size), torch.float32, device)
        with rtda_kernels.use_backend("reference"):
            expected_map = rtda_kernels.adversarial_loss(logits, target, output_size=size,
                                                         reduction="none")
        loss_map, _ = loss_and_grad(lambda x: rtda_kernels.adversarial_loss(
            x, target, output_size=size, reduction="none"), logits, backend)
        name = f"{backend} label {label}"
        finite = expected_map.isfinite()
        assert torch.equal(loss_map.isfinite(), finite), f"{name}: the non-finite pixels differ"
        assert_close(loss_map[finite], expected_map[finite], "adversarial_loss", torch.float32,
                     f"finite part of the loss map ({name})")
        for reduction in ("mean", "sum"):
            loss, grad = loss_and_grad(lambda x: rtda_kernels.adversarial_loss(
                x, target, output_size=size, reduction=reduction), logits, backend)
            expected, expected_grad = loss_and_grad(lambda x: rtda_kernels.reference.adversarial_loss(
                x, target, output_size=size, reduction=reduction), logits)
            assert not loss.isfinite() and not expected.isfinite(), name
            if backend != "cpu":  # the kernels agree on where the gradient is NaN
                _, cpu_grad = loss_and_grad(lambda x: rtda_kernels.adversarial_loss(
                    x, target.cpu() if torch.is_tensor(target) else target, output_size=size,
                    reduction=reduction), logits.cpu(), "cpu")
                assert torch.equal(grad.isfinite().cpu(), cpu_grad.isfinite()), name
            both = grad.isfinite() & expected_grad.isfinite()
            assert_close(grad[both], expected_grad[both], "adversarial_loss grad", torch.float32,
                         f"{reduction} grad where both are finite ({name})", floor=1.0)


# ----------------------------------------------------------------------------- winograd_conv3x3
WINOGRAD_BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(
    not rtda_kernels.has_kernel("winograd_conv3x3", "cpu"), reason="the compiled CPU kernel is not built"))]


def check_like_conv2d(y, x, weight, bias, residual, relu, dtype, name):
    """Non-finite values where (and as) F.conv2d in the inputs' dtype has them, the rest within
    winograd_conv3x3's bound of the float64 direct convolution (helpers.assert_close compares
    both). The dtype matters: oneDNN's float32 convolution skips the taps that fall on the zero
    padding, so a NaN weight leaves the border finite there, while float64's does not."""
    same_dtype = F.conv2d(x, weight, bias, padding=1)
    if residual is not None:
        same_dtype = same_dtype + residual
    same_dtype = torch.relu(same_dtype) if relu else same_dtype
    expected = direct(x, weight, bias, residual, relu)
    expected = torch.where(same_dtype.isfinite() & expected.isfinite(), expected,
                           same_dtype.double())
    finite = [t if t is None else t.nan_to_num(0.0, 0.0, 0.0) for t in (x, weight, bias, residual)]
    assert_close(y, expected, "winograd_conv3x3", dtype, name, floor=terms(*finite))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("where", ["x", "weight", "bias", "residual"])
@pytest.mark.parametrize("backend", WINOGRAD_BACKENDS)
@torch.no_grad()
def test_winograd_non_finite_like_conv2d(backend, where, relu, layout):
    for value in (NAN, INF, -INF):
        x, weight, bias, residual = make((2, 5, 6, 9, 11), layout=layout)
        tensors = {"x": x, "weight": weight, "bias": bias, "residual": residual}
        bad = tensors[where]
        bad[torch.unravel_index(torch.tensor(bad.numel() // 3), bad.shape)] = value
        if where == "x":
            x[..., -1, -1] = -value  # a second bad pixel, in the last (partial) tile
        with rtda_kernels.use_backend(backend):
            y = rtda_kernels.winograd_conv3x3(x, weight, bias, residual, relu=relu)
        check_like_conv2d(y, x, weight, bias, residual, relu, torch.float32,
                          f"y with {value} in {where} ({backend})")


@pytest.mark.skipif(not rtda_kernels.has_kernel("winograd_conv3x3", "cpu"), reason="the compiled CPU kernel is not built")
@torch.no_grad()
def test_winograd_non_finite_in_a_later_chunk():
    """The kernel notices the bad value after it wrote the first chunks' outputs."""
    x, weight, bias, residual = make((2, 16, 16, 150, 70))
    x[1, 3, 140, 60] = INF
    y = rtda_kernels.winograd_conv3x3(x, weight, bias, residual, relu=True)
    check_like_conv2d(y, x, weight, bias, residual, True, torch.float32, "y")
    assert y.isinf().any() and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@torch.no_grad()
def test_winograd_reference_non_finite_other_dtypes(dtype):
    x, weight, bias, residual = make((1, 3, 4, 7, 9), dtype=dtype)
    x[0, 1, 3, 3], weight[2, 0, 1, 1] = NAN, INF
    with rtda_kernels.use_backend("reference"):
        y = rtda_kernels.winograd_conv3x3(x, weight, bias, residual, relu=True)
    check_like_conv2d(y, x, weight, bias, residual, True, dtype, "y")


@torch.no_grad()
def test_winograd_module_with_a_nan_weight_gives_what_the_conv_gives():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    conv.weight.data[1, 2, 0, 0] = NAN
    module = WinogradConv2d.from_conv(conv, relu=True)
    x = torch.randn(1, 4, 8, 8)
    expected = torch.relu(conv(x))
    y = module(x)
    assert torch.equal(y.isnan(), expected.isnan()) and y[:, 1].isnan().all()
    torch.testing.assert_close(y[~y.isnan()], expected[~expected.isnan()])
