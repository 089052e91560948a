"""Full-resolution predictions of a segmenter, shared by evaluation and the figures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def predict_full_resolution(model: torch.nn.Module, images: torch.Tensor,
                            sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Train-id maps (int64, HxW) for ``images`` (already at the model's resolution), with the
    logits of sample i upsampled bilinearly to ``sizes[i]`` before the argmax."""
    logits = model(images)
    return [F.interpolate(logits[i:i + 1].float(), size=tuple(size), mode="bilinear",
                          align_corners=False).argmax(1)[0]
            for i, size in enumerate(sizes)]
