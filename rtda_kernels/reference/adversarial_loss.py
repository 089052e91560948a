"""Reference pixel-wise adversarial losses: ``F.interpolate`` (materialised) followed by
``F.binary_cross_entropy_with_logits``.

float16 / bfloat16 inputs are computed in float32 and the result is rounded once to the input
dtype, which is what the fused kernels do (they accumulate in float32)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _loss(
    logits: torch.Tensor,
    target: torch.Tensor | float,
    output_size: Sequence[int] | None,
    reduction: str,
) -> torch.Tensor:
    """The loss in the compute dtype (float32 for half inputs)."""
    dtype = _compute_dtype(logits.dtype)
    upsampled = logits.to(dtype)
    if output_size is not None and tuple(output_size) != tuple(logits.shape[-2:]):
        upsampled = F.interpolate(
            upsampled, size=tuple(output_size), mode="bilinear", align_corners=False
        )
    if isinstance(target, torch.Tensor):
        labels = target.to(dtype)
    else:
        labels = torch.full_like(upsampled, float(target))
    return F.binary_cross_entropy_with_logits(upsampled, labels, reduction=reduction)


def adversarial_loss(
    logits: torch.Tensor,
    target: torch.Tensor | float,
    *,
    output_size: Sequence[int] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy with logits of ``logits`` (N x C x h x w), bilinearly upsampled to
    ``output_size`` (align_corners=False) first when given, against the label ``target`` (a float,
    or a tensor shaped like the loss map: N x C x H x W)."""
    return _loss(logits, target, output_size, reduction).to(logits.dtype)


def discriminator_loss(
    d_source: torch.Tensor,
    d_target: torch.Tensor,
    *,
    source_label: float = 0.0,
    target_label: float = 1.0,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Eq. (1) of the paper: ``0.5 * (mean BCE(d_source, source_label) + mean BCE(d_target,
    target_label))``, each map upsampled to ``output_size`` first when given."""
    source = _loss(d_source, source_label, output_size, "mean")
    target = _loss(d_target, target_label, output_size, "mean")
    return (0.5 * (source + target)).to(d_source.dtype)
