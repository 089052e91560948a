"""The comparison helper catches wrong kernels: on each op's real float32 outputs and gradients
(CPU backend, a test shape), deliberately perturbed copies fail ``helpers.assert_close`` while
the outputs themselves pass. The perturbations are the errors a loose tolerance let through:

- ``worst``: the element with the largest error moved further, by 5e-6 of the scale (or 1.25x
  the bound, where the op's own rounding needs a bound above 5e-6: winograd_conv3x3's 2.5e-5);
- ``relative``: every element 5e-5 relatively wrong (what 1e-4 x max(1, max |ref|) + 1e-4
  relative passed for dwsep_conv2d);
- ``one``: one element of about the median (non-zero) magnitude off by 1e-3 of its value.

And, on synthetic data, the helper enforces each bound of the table exactly (just over fails,
just under passes), for every op and dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

import rtda_kernels
from tests.kernels import dwsep_reference
from tests.kernels import test_adversarial_loss as loss_tests
from tests.kernels import test_dwsep_conv2d as dwsep_tests
from tests.kernels import test_pseudo_label_loss as pseudo_tests
from tests.kernels import test_winograd_conv3x3 as winograd_tests
from tests.kernels.helpers import TOLERANCES, assert_close, relative_error, tolerance


class Compared(NamedTuple):
    """A kernel's output and what ``assert_close`` compares it with."""

    actual: torch.Tensor
    expected: torch.Tensor
    op: str
    floor: float


def _dwsep() -> dict[str, Compared]:
    case = dwsep_tests.CASES[1]  # FCD-Light's first layer: 19 -> 64, k4 s2, 32 x 64
    tensors, kwargs = dwsep_tests.make_inputs(case)
    with rtda_kernels.use_backend("cpu"):
        y, grads, grad_out = dwsep_tests.run(rtda_kernels.dwsep_conv2d, tensors, kwargs)
    ref = dwsep_reference.expected(tensors, kwargs["stride"], kwargs["padding"],
                                   kwargs["negative_slope"], grad_out, y_actual=y)
    compared = {"dwsep_conv2d y": Compared(y, ref.y, "dwsep_conv2d", ref.y_terms)}
    for name, g, g_ref, terms in zip(dwsep_reference.NAMES, grads, ref.grads, ref.grad_terms):
        compared[f"dwsep_conv2d grad {name}"] = Compared(g, g_ref, "dwsep_conv2d grad", terms)
    return compared


def _loss() -> dict[str, Compared]:
    shape, size = loss_tests.SHAPES[1]  # 2 x 1 x 7 x 9 -> 50 x 61
    logits = loss_tests.make_logits(shape, torch.float32, "cpu")
    with rtda_kernels.use_backend("cpu"):
        loss, grad = loss_tests.loss_and_grad(
            lambda x: rtda_kernels.adversarial_loss(x, 1.0, output_size=size, reduction="none"),
            logits)
    expected_loss, expected_grad = loss_tests.reference_loss_and_grad(logits, 1.0, size, "none")
    return {"adversarial_loss": Compared(loss, expected_loss, "adversarial_loss", 0.0),
            "adversarial_loss grad": Compared(grad, expected_grad, "adversarial_loss grad", 1.0)}


def _pseudo() -> dict[str, Compared]:
    shape = pseudo_tests.SHAPES[0]  # 2 x 5 x 4 x 8 -> 32 x 64
    student, teacher, labels = pseudo_tests.make(shape, torch.float32, "cpu")
    loss, _, grad = pseudo_tests.run("cpu", student, teacher, labels, shape[4:])
    expected_loss, _, expected_grad, _ = pseudo_tests.expected(student, teacher, labels, shape[4:])
    floor = 1.0 / (shape[0] * shape[4] * shape[5])
    return {"pseudo_label_loss": Compared(loss, expected_loss, "pseudo_label_loss",
                                          student.abs().max().item()),
            "pseudo_label_loss grad": Compared(grad, expected_grad, "pseudo_label_loss grad",
                                               floor)}


def _winograd() -> dict[str, Compared]:
    x, weight, bias, residual = winograd_tests.make(winograd_tests.CASES[5])  # 40 -> 24, 23x29
    with torch.no_grad():
        y = rtda_kernels.winograd_conv3x3(x, weight, bias, residual, relu=True)
    return {"winograd_conv3x3": Compared(
        y, winograd_tests.direct(x, weight, bias, residual, True), "winograd_conv3x3",
        winograd_tests.terms(x, weight, bias, residual))}


_cache: dict[str, Compared] = {}


def _compared(name: str) -> Compared:
    if not _cache:
        _cache.update(_dwsep())
        _cache.update(_loss())
        _cache.update(_pseudo())
        if rtda_kernels.has_kernel("winograd_conv3x3", "cpu"):
            _cache.update(_winograd())
    if name not in _cache:
        pytest.skip(f"{name}: the compiled CPU kernel is not built")
    return _cache[name]


QUANTITIES = ["dwsep_conv2d y", *(f"dwsep_conv2d grad {n}" for n in dwsep_reference.NAMES),
              "adversarial_loss", "adversarial_loss grad", "pseudo_label_loss",
              "pseudo_label_loss grad", "winograd_conv3x3"]


def _worst(c: Compared, scale: float) -> torch.Tensor:
    error = (c.actual.double() - c.expected).flatten()
    index = int(error.abs().argmax())
    direction = 1.0 if error[index] >= 0 else -1.0
    amount = max(5e-6, 1.25 * tolerance(c.op, torch.float32)) * scale
    wrong = c.actual.detach().clone().flatten()
    wrong[index] += direction * amount
    return wrong.reshape(c.actual.shape)


def _relative(c: Compared, scale: float) -> torch.Tensor:
    return c.actual.detach() * (1 + 5e-5)


def _one(c: Compared, scale: float) -> torch.Tensor:
    magnitude = c.expected.abs().flatten()
    median = magnitude[magnitude > 0].median()  # of the non-zero values (ReLU zeros half of y)
    index = int((magnitude - median).abs().argmin())
    wrong = c.actual.detach().clone().flatten()
    wrong[index] += 1e-3 * wrong[index].abs().clamp_min(torch.finfo(torch.float32).tiny)
    return wrong.reshape(c.actual.shape)


PERTURBATIONS: dict[str, Callable[[Compared, float], torch.Tensor]] = {
    "worst": _worst, "relative": _relative, "one": _one}


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_the_kernel_output_itself_passes(quantity: str) -> None:
    """The control of the test below: what fails there is the perturbation."""
    c = _compared(quantity)
    assert_close(c.actual, c.expected, c.op, torch.float32, quantity, floor=c.floor)


@pytest.mark.parametrize("perturbation", list(PERTURBATIONS))
@pytest.mark.parametrize("quantity", QUANTITIES)
def test_a_perturbed_output_fails(quantity: str, perturbation: str) -> None:
    c = _compared(quantity)
    _, scale = relative_error(c.actual, c.expected, c.floor)
    wrong = PERTURBATIONS[perturbation](c, scale)
    assert not torch.equal(wrong, c.actual)
    with pytest.raises(AssertionError, match=quantity.split(" ")[-1]):
        assert_close(wrong, c.expected, c.op, torch.float32, quantity, floor=c.floor)


@pytest.mark.parametrize("op,dtype", [(op, dtype) for op, bounds in TOLERANCES.items()
                                      for dtype in bounds], ids=str)
def test_the_bound_is_enforced_as_tabled(op: str, dtype: torch.dtype) -> None:
    """An error of 1.02x the bound (of max |expected|) on one element fails, 0.98x passes, and a
    non-finite value where the reference is finite fails."""
    expected = torch.randn(257, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bound, index = tolerance(op, dtype), int(expected.abs().argmin())
    step = bound * expected.abs().max().item()
    for factor, fails in ((1.02, True), (0.98, False)):
        actual = expected.clone()
        actual[index] += factor * step
        if fails:
            with pytest.raises(AssertionError, match="max error"):
                assert_close(actual, expected, op, dtype, "synthetic")
        else:
            assert_close(actual, expected, op, dtype, "synthetic")
    actual = expected.clone()
    actual[index] = float("nan")
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(actual, expected, op, dtype, "synthetic")
