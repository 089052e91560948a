"""The adversarial and self-training losses in float64 arithmetic with the bilinear taps the op defines, for the
kernel tests (CPU, Triton, emulated CUDA) and the benchmarks' checks.

Why not ``rtda_kernels.reference`` on ``logits.double()``: F.interpolate then computes its source
coordinates ``scale * (d + 0.5) - 0.5`` in float64, while for float32 (and float16 / bfloat16,
computed in float32) input it computes them, like the kernels, in float32 (``rtda/adversarial_math.h``:
"same formula and rounding as ATen"). The two sets of taps differ by up to an ulp of the
coordinate, i.e. ~6e-8 x the input size: measured 4.5e-5 of max |loss| for a 4 x 700 map resized
to 3 x 300, which would hide any arithmetic error of the kernels below that. So the taps are
taken from F.interpolate itself in the coordinate dtype (applied to one-hot rows, which returns
each weight exactly), and only the arithmetic is float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F


def coordinate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the op computes its bilinear coordinates in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@lru_cache(maxsize=256)
def resize_matrix(in_size: int, out_size: int, dtype: torch.dtype) -> torch.Tensor:
    """out_size x in_size float64 matrix R with ``R @ row`` = F.interpolate of ``row`` (bilinear,
    align_corners=False) with the taps F.interpolate computes in ``dtype``."""
    eye = torch.eye(in_size, dtype=dtype)[:, None, None, :].expand(in_size, 1, 2, in_size)
    rows = F.interpolate(eye.contiguous(), size=(2, out_size), mode="bilinear",
                         align_corners=False)
    return rows[:, 0, 0, :].T.double().contiguous()


def resize(logits: torch.Tensor, output_size: Sequence[int] | None,
           dtype: torch.dtype) -> torch.Tensor:
    """float64 ``logits`` (N x C x h x w) bilinearly resized to ``output_size`` with the taps of
    ``coordinate_dtype(dtype)``; differentiable (a product with two fixed matrices)."""
    h, w = logits.shape[-2:]
    if output_size is None or tuple(output_size) == (h, w):
        return logits
    coords = coordinate_dtype(dtype)
    rows = resize_matrix(h, int(output_size[0]), coords)
    cols = resize_matrix(w, int(output_size[1]), coords)
    return torch.einsum("Hh,nchw,Ww->ncHW", rows, logits, cols)


def adversarial_loss(logits: torch.Tensor, target: torch.Tensor | float,
                     output_size: Sequence[int] | None, reduction: str,
                     dtype: torch.dtype) -> torch.Tensor:
    """BCE with logits of float64 ``logits`` resized as the op does for inputs of ``dtype``,
    against a float64 target tensor or a constant label, in float64."""
    u = resize(logits, output_size, dtype)
    labels = target.double() if isinstance(target, torch.Tensor) else torch.full_like(u, target)
    return F.binary_cross_entropy_with_logits(u, labels, reduction=reduction)


def discriminator_loss(d_source: torch.Tensor, d_target: torch.Tensor, source_label: float,
                       target_label: float, output_size: Sequence[int] | None,
                       dtype: torch.dtype) -> torch.Tensor:
    """Eq. (1), ``0.5 * (mean BCE(d_source, source_label) + mean BCE(d_target, target_label))``,
    float64 arithmetic with the taps of ``dtype``."""
    return 0.5 * (adversarial_loss(d_source, source_label, output_size, "mean", dtype)
                  + adversarial_loss(d_target, target_label, output_size, "mean", dtype))


def pseudo_label_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                      threshold: float, output_size: Sequence[int] | None, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss, weight, ambiguous pixels) of ``rtda_kernels.reference.pseudo_label_loss`` for
    float64 ``student`` / ``teacher`` resized as the op does for inputs of ``dtype``.

    The pseudo-labels and the confident pixels are decisions: where the teacher's top two logits
    are within 1e-5 or its softmax maximum within 1e-6 of the threshold, rounding in the kernel's
    dtype may decide either way; such pixels are counted (tests draw inputs without them)."""
    s = resize(student, output_size, dtype)
    t = resize(teacher.detach(), output_size, dtype)
    top2 = t.topk(min(2, t.shape[1]), dim=1).values
    confidence = torch.softmax(t, dim=1).amax(dim=1)
    threshold = float(torch.tensor(threshold, dtype=coordinate_dtype(dtype)))
    ambiguous = (confidence - threshold).abs() < 1e-6
    if t.shape[1] > 1:
        ambiguous |= (top2[:, 0] - top2[:, 1]).abs() < 1e-5
    weight = (confidence > threshold).double().mean(dim=(1, 2))
    pseudo = t.argmax(dim=1)
    if labels is None:
        labels = torch.full_like(pseudo, -1)
    use_pseudo = labels == -1
    target = torch.where(use_pseudo, pseudo, labels)
    pixel_weight = torch.where(use_pseudo, weight.view(-1, 1, 1), torch.ones((), dtype=s.dtype))
    per_pixel = F.cross_entropy(s, target, ignore_index=255, reduction="none")
    loss = (per_pixel * pixel_weight).sum() / target.numel()
    return loss, weight, int(ambiguous.sum())
