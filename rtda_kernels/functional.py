"""The public functions of rtda_kernels: validate the arguments once, then run the op on the
backend chosen by ``rtda_kernels.backends`` (device, ``use_backend`` or ``RTDA_KERNELS_BACKEND``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

import rtda_kernels.ops.adversarial_loss  # noqa: F401  (each declares its op's kernels)
import rtda_kernels.ops.dwsep_conv2d  # noqa: F401
import rtda_kernels.ops.pseudo_label_loss  # noqa: F401
import rtda_kernels.ops.winograd_conv3x3  # noqa: F401
from rtda_kernels import _checks, reference
from rtda_kernels.backends import dispatch
from rtda_kernels.schemas import REDUCE_NONE, REDUCTIONS


def _check_dwsep_args(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope):
    _checks.tensor("x", x, dims=4)
    n, c_in, height, width = x.shape
    # One comparison per size (not min(...)): under torch.export, min() would tie the symbolic
    # sizes to each other with guards like "batch <= channels".
    if any(size < 1 for size in (n, c_in, height, width)):
        raise ValueError(f"x must be N x C_in x H x W with every size >= 1, got {tuple(x.shape)}")
    _checks.tensor("dw_weight", dw_weight, dims=4)
    k = dw_weight.shape[-1]
    _checks.shape("dw_weight", dw_weight, (c_in, 1, k, k), "C_in x 1 x k x k")
    _checks.tensor("pw_weight", pw_weight, dims=4)
    c_out = pw_weight.shape[0]
    _checks.shape("pw_weight", pw_weight, (c_out, c_in, 1, 1), "C_out x C_in x 1 x 1")
    if dw_bias is not None:
        _checks.shape("dw_bias", _checks.tensor("dw_bias", dw_bias), (c_in,), "(C_in,)")
    if pw_bias is not None:
        _checks.shape("pw_bias", _checks.tensor("pw_bias", pw_bias), (c_out,), "(C_out,)")
    _checks.same_dtype_and_device(
        "x", x, dw_weight=dw_weight, dw_bias=dw_bias, pw_weight=pw_weight, pw_bias=pw_bias
    )
    _checks.integer("stride", stride, minimum=1)
    _checks.integer("padding", padding, minimum=0)
    if padding >= k:
        raise ValueError(f"padding must be smaller than the kernel size {k}, got {padding}")
    if height + 2 * padding < k or width + 2 * padding < k:
        raise ValueError(
            f"the output would be empty: input {height}x{width} with padding {padding} is smaller "
            f"than the kernel {k}x{k}"
        )
    _checks.slope("negative_slope", negative_slope)


def dwsep_conv2d(
    x: torch.Tensor,
    dw_weight: torch.Tensor,
    dw_bias: torch.Tensor | None,
    pw_weight: torch.Tensor,
    pw_bias: torch.Tensor | None,
    *,
    stride: int = 1,
    padding: int = 0,
    negative_slope: float | None = None,
) -> torch.Tensor:
    """Fused ``leaky_relu(pointwise(depthwise(x)), negative_slope)``.

    Weights are shaped like ``nn.Conv2d``'s: ``dw_weight`` ``C_in x 1 x k x k`` (groups = C_in,
    zero padding), ``pw_weight`` ``C_out x C_in x 1 x 1``; biases may be None;
    ``negative_slope=None`` means no activation. Differentiable in ``x`` and all four parameters;
    the depthwise intermediate is never stored (it is recomputed in backward).
    """
    _check_dwsep_args(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope)
    slope = None if negative_slope is None else float(negative_slope)
    return dispatch("dwsep_conv2d", x.device, x.dtype, "x",
                    x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, slope)




def _check_logits(name: str, logits: object) -> torch.Tensor:
    _checks.tensor(name, logits, dims=4)
    if logits.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(logits.shape)}")
    return logits


def _check_output_size(output_size: object, logits: torch.Tensor) -> list[int]:
    """``None`` (the logits' own size) or a pair of ints >= 1."""
    if output_size is None:
        return [int(logits.shape[2]), int(logits.shape[3])]
    if not isinstance(output_size, (tuple, list, torch.Size)) or len(output_size) != 2:
        raise ValueError(f"output_size must be None or a pair (H, W), got {output_size!r}")
    for axis, value in zip("HW", output_size):
        _checks.integer(f"output_size {axis}", value, minimum=1)
    return [int(output_size[0]), int(output_size[1])]


def _check_label(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float (a domain label, usually 0.0 or 1.0), got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def adversarial_loss(
    logits: torch.Tensor,
    target: torch.Tensor | float,
    *,
    output_size: Sequence[int] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy with logits, pixel by pixel, of a discriminator's map against a domain
    label, optionally after bilinear upsampling, fused.

    ``logits`` is N x C x h x w (C is usually 1). ``target`` is a float label (source 0.0, target
    1.0) or a tensor shaped like the loss map. With ``output_size=(H, W)`` the result equals the
    loss over ``F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)``, but the
    upsampled map is never materialised, in forward or in backward. ``reduction``: "mean", "sum"
    or "none" (the N x C x H x W map). float16/bfloat16 inputs are computed in float32.
    Differentiable in ``logits``; ``target`` is a label and gets no gradient.
    """
    _check_logits("logits", logits)
    size = _check_output_size(output_size, logits)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {tuple(REDUCTIONS)}, got {reduction!r}")
    if isinstance(target, torch.Tensor):
        _checks.tensor("target", target)
        expected = (logits.shape[0], logits.shape[1], *size)
        _checks.shape("target", target, expected, "the loss map N x C x H x W")
        _checks.same_dtype_and_device("logits", logits, target=target)
        if target.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "target requires grad, but it is a label and gets no gradient: pass target.detach()"
            )
        target_tensor, value = target, 0.0
    else:
        target_tensor, value = None, _check_label("target", target)
    code = REDUCTIONS[reduction]
    compute_grad = (torch.is_grad_enabled() and logits.requires_grad
                    and code != REDUCE_NONE)
    loss, _ = dispatch("adversarial_loss", logits.device, logits.dtype, "logits",
                       logits, target_tensor, value, size, code, compute_grad)
    return loss


def discriminator_loss(
    d_source: torch.Tensor,
    d_target: torch.Tensor,
    *,
    source_label: float = 0.0,
    target_label: float = 1.0,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """The discriminator's loss, Eq. (1) of the paper, in one fused call:
    ``0.5 * (adversarial_loss(d_source, source_label) + adversarial_loss(d_target, target_label))``
    with mean reductions, both maps upsampled to ``output_size`` when given. The forward pass also
    computes both gradients (when they are needed), so backward only scales them."""
    _check_logits("d_source", d_source)
    _check_logits("d_target", d_target)
    _checks.same_dtype_and_device("d_source", d_source, d_target=d_target)
    if output_size is None and d_source.shape[2:] != d_target.shape[2:]:
        raise ValueError(
            "d_source and d_target have different spatial sizes "
            f"{tuple(d_source.shape[2:])} and {tuple(d_target.shape[2:])}: pass output_size"
        )
    size = _check_output_size(output_size, d_source)
    source_value = _check_label("source_label", source_label)
    target_value = _check_label("target_label", target_label)
    compute_grad = torch.is_grad_enabled() and (d_source.requires_grad or d_target.requires_grad)
    loss, _, _ = dispatch("discriminator_loss", d_source.device, d_source.dtype, "d_source",
                          d_source, d_target, source_value, target_value, size, compute_grad)
    return loss


def _check_labels(labels: object, student: torch.Tensor, size: list[int]) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be an int64 tensor (class ids, -1 or 255), got {labels.dtype}")
    _checks.shape("labels", labels, (student.shape[0], *size), "N x H x W (the output size)")
    if labels.device != student.device:
        raise ValueError(f"labels is on {labels.device} but student is on {student.device}: "
                         "all tensors must be on one device")
    classes = student.shape[1]
    if torch.compiler.is_compiling():
        return  # a data-dependent check would break the graph; the kernels ignore bad ids
    valid = (labels == reference.PSEUDO_LABEL) | (labels == reference.IGNORE_LABEL) | (
        (labels >= 0) & (labels < classes))
    if not bool(valid.all()):
        bad = labels[~valid][0].item()
        raise ValueError(f"labels must hold class ids in [0, {classes}), -1 (pseudo-label) or "
                         f"255 (ignored), got {bad}")


def pseudo_label_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    threshold: float = 0.968,
    output_size: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-training's loss in one fused pass: ``(loss, weight)`` of
    ``rtda_kernels.reference.pseudo_label_loss`` (the teacher's argmax as pseudo-labels, ``weight``
    the per-image fraction of pixels whose teacher softmax maximum exceeds ``threshold``, the
    student's cross-entropy weighted by it; ``labels`` -1 = pseudo-label, a class id = weight 1,
    255 = ignored), with both logit maps (N x C x h x w) upsampled to ``output_size`` on the fly:
    neither the full-resolution maps, the softmax nor the pseudo-labels are materialised.
    Differentiable in ``student``; ``teacher`` must not require grad. float16/bfloat16 inputs are
    computed in float32."""
    _check_logits("student", student)
    _check_logits("teacher", teacher)
    _checks.shape("teacher", teacher, tuple(student.shape), "that of student")
    _checks.same_dtype_and_device("student", student, teacher=teacher)
    if teacher.requires_grad and torch.is_grad_enabled():
        raise ValueError("teacher requires grad, but its pseudo-labels get no gradient: pass "
                         "teacher.detach() (or compute it under torch.no_grad())")
    size = _check_output_size(output_size, student)
    if labels is not None:
        _check_labels(labels, student, size)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            0.0 <= threshold < 1.0):
        raise ValueError(f"threshold must be a float in [0, 1), got {threshold!r}")
    compute_grad = torch.is_grad_enabled() and student.requires_grad
    loss, weight, _ = dispatch("pseudo_label_loss", student.device, student.dtype, "student",
                               student, teacher, labels, float(threshold), size, compute_grad)
    return loss, weight


def winograd_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    relu: bool = False,
    weight_winograd: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inference-only 3x3 stride-1 convolution (zero padding 1) by Winograd F(4x4, 3x3):
    ``conv2d(x, weight, bias, padding=1)``, plus ``residual`` if given, then ReLU if ``relu``.

    ``weight_winograd`` is ``winograd_weight(weight)`` (36 x C_in x C_out): pass it, computed
    once, to save transforming the weight on every call. On the ``cpu`` backend (float32 only)
    the C++ kernel runs and returns a channels_last tensor; elsewhere the reference. F(4x4, 3x3)
    does 4x fewer multiply-adds than the direct convolution and rounds differently (tested within
    2.5e-5 of the output's magnitude in float32). A call whose x or weight holds NaN or inf is
    computed directly (``F.conv2d``), so non-finite values come out exactly where conv2d puts them.
    No autograd: inputs must not require grad (use ``torch.nn.functional.conv2d`` to train).
    """
    _checks.tensor("x", x, dims=4)
    n, c_in, height, width = x.shape
    if any(size < 1 for size in (n, c_in, height, width)):
        raise ValueError(f"x must be N x C_in x H x W with every size >= 1, got {tuple(x.shape)}")
    _checks.tensor("weight", weight)
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (c_in, 3, 3) or weight.shape[0] < 1:
        hint = (" (the Winograd form goes to weight_winograd=; weight is the conv's own weight)"
                if weight.dim() == 3 else "")
        raise ValueError(f"weight must be C_out x C_in x 3 x 3 with C_in = {c_in}, got "
                         f"{tuple(weight.shape)}{hint}")
    c_out = weight.shape[0]
    if weight_winograd is None:
        weight_winograd = reference.winograd_weight(weight)
    _checks.tensor("weight_winograd", weight_winograd, dims=3)
    if tuple(weight_winograd.shape) != (36, c_in, c_out):
        raise ValueError(
            f"weight_winograd must be 36 x C_in x C_out = {(36, c_in, c_out)} for this weight "
            f"(winograd_weight(weight)), got {tuple(weight_winograd.shape)}"
        )
    if bias is not None:
        _checks.shape("bias", _checks.tensor("bias", bias), (c_out,), "(C_out,)")
    if residual is not None:
        _checks.shape("residual", _checks.tensor("residual", residual, dims=4),
                      (n, c_out, height, width), "N x C_out x H x W")
    _checks.same_dtype_and_device("x", x, weight=weight, weight_winograd=weight_winograd,
                                  bias=bias, residual=residual)
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    tensors = (x, weight, weight_winograd, bias, residual)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "winograd_conv3x3 is inference-only (no backward): call it under torch.no_grad() or "
            "torch.inference_mode(), with inputs that do not require grad"
        )
    return dispatch("winograd_conv3x3", x.device, x.dtype, "x",
                    x, weight, weight_winograd, bias, residual, relu)
