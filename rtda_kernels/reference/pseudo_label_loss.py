"""Reference self-training loss: both logit maps upsampled (materialised) by ``F.interpolate``,
the teacher's pseudo-labels and confident fraction from its softmax, then the student's
``F.cross_entropy``.

float16 / bfloat16 inputs are computed in float32 and the results rounded once to the input
dtype, which is what the fused kernels do (they accumulate in float32)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# A label that means "the teacher's pseudo-label here" (ClassMix's target pixels).
PSEUDO_LABEL = -1
IGNORE_LABEL = 255


def _resized(logits: torch.Tensor, dtype: torch.dtype, size: tuple[int, ...]) -> torch.Tensor:
    logits = logits.to(dtype)
    if size != tuple(logits.shape[-2:]):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


def pseudo_label_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    threshold: float = 0.968,
    output_size: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, weight): the confidence-weighted cross-entropy of ``student`` (N x C x h x w logits)
    against ``teacher``'s pseudo-labels (N x C x h x w, no gradient), both upsampled to
    ``output_size`` first when given (bilinear, align_corners=False), as DACS trains.

    The pseudo-label of a pixel is the argmax of the teacher's logits; ``weight`` (N) is, per
    image, the fraction of its pixels whose teacher softmax maximum exceeds ``threshold``.
    ``labels`` (N x H x W, int64) says per pixel what the student learns: ``PSEUDO_LABEL`` (-1)
    the pseudo-label, weighted by its image's ``weight``; a class id, with weight 1 (ClassMix's
    pasted source pixels); ``IGNORE_LABEL`` (255) nothing. None: the pseudo-label everywhere.
    ``loss`` is the weighted sum over pixels divided by N * H * W (ignored pixels count 0).
    """
    dtype = torch.float32 if student.dtype in (torch.float16, torch.bfloat16) else student.dtype
    size = tuple(output_size) if output_size is not None else tuple(student.shape[-2:])
    student_map = _resized(student, dtype, size)
    teacher_map = _resized(teacher.detach(), dtype, size)
    confidence = torch.softmax(teacher_map, dim=1).amax(dim=1)
    pseudo = teacher_map.argmax(dim=1)
    weight = (confidence > threshold).to(dtype).mean(dim=(1, 2))
    if labels is None:
        labels = torch.full_like(pseudo, PSEUDO_LABEL)
    use_pseudo = labels == PSEUDO_LABEL
    target = torch.where(use_pseudo, pseudo, labels)
    pixel_weight = torch.where(use_pseudo, weight.view(-1, 1, 1), torch.ones((), dtype=dtype,
                                                                             device=weight.device))
    per_pixel = F.cross_entropy(student_map, target, ignore_index=IGNORE_LABEL, reduction="none")
    loss = (per_pixel * pixel_weight).sum() / target.numel()
    return loss.to(student.dtype), weight.to(student.dtype)
