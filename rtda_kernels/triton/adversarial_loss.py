"""Launchers of the Triton kernels of the fused pixel-wise adversarial loss
(rtda_kernels/triton/adversarial_loss_kernels.py; the algorithm: docs/kernel_internals.md): the launch
plan (cells per program and positions per cell along each axis), the gradient/loss finalisation,
argument checks, and the three entry points the torch.library glue calls (loss, loss_backward,
discriminator). Schemas in rtda_kernels/schemas.py.
"""

from __future__ import annotations

import torch
import triton

from rtda_kernels.backends import TRITON_DTYPES
from rtda_kernels.schemas import REDUCE_MEAN, REDUCE_NONE, REDUCE_SUM
from rtda_kernels.triton.adversarial_loss_kernels import (
    finalize_kernel,
    flat_kernel,
    resized_kernel,
)
from rtda_kernels.triton.adversarial_math import f32, manual_bf16
from rtda_kernels.triton.target import on_gpu

_MAX_SIDE = 1 << 20  # the cell boundary search is exact below this output side
# (see adversarial_loss_kernels.py)


# ----------------------------------------------------------------------------- launchers
def _pow2_floor(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def _axis_tiles(in_size: int, out_size: int, target: int, cap: int) -> tuple[int, int]:
    """(cells per program, positions per cell and chunk) along one axis, both powers of two.

    K covers a typical cell (ceil(out/in) positions; the first cell has ~1.5x that and is walked
    in two chunks), B cells fill ~``target`` positions per program."""
    k = min(triton.next_power_of_2(-(-out_size // in_size)), cap)
    b = min(_pow2_floor(max(target // k, 1)), triton.next_power_of_2(in_size))
    return b, k


class _Plan:
    """Launch configuration of the main kernel for one logits tensor and output size."""

    def __init__(self, logits: torch.Tensor, out_h: int, out_w: int):
        n, c, h, w = logits.shape
        self.planes, self.h, self.w, self.H, self.W = n * c, h, w, out_h, out_w
        self.identity = (h, w) == (out_h, out_w)
        cuda = on_gpu(logits.device)
        if self.identity:
            # The interpreter pays per op, not per element: fewer, bigger programs.
            self.block = 1024 if cuda else 8192
            self.programs = triton.cdiv(self.planes * h * w, self.block)
        else:
            rows, cols = (32, 32) if cuda else (32, 64)
            self.bi, self.kr = _axis_tiles(h, out_h, rows, 32)
            self.bj, self.kc = _axis_tiles(w, out_w, cols, 64)
            self.n_ti, self.n_tj = triton.cdiv(h, self.bi), triton.cdiv(w, self.bj)
            self.programs = self.planes * self.n_ti * self.n_tj

    def run(self, logits: torch.Tensor, target: torch.Tensor | None, value: float, *,
            loss_map: torch.Tensor | None = None, part: torch.Tensor | None = None,
            grad: torch.Tensor | None = None, grad_coef: float = 1.0,
            grad_map: torch.Tensor | None = None) -> torch.Tensor | None:
        """Launch the main kernel. Returns the float32 quadrant buffer when ``grad`` still needs
        finalize_kernel (resized case), None otherwise (identity: ``grad`` is written here)."""
        dummy = logits
        flags = dict(HAS_TARGET=target is not None, GRAD_MAP=grad_map is not None,
                     STORE_MAP=loss_map is not None, REDUCE=part is not None,
                     GRAD=grad is not None, MANUAL_BF16=manual_bf16(logits))
        args = (logits, dummy if target is None else target,
                dummy if grad_map is None else grad_map,
                dummy if loss_map is None else loss_map,
                dummy if part is None else part)
        if self.identity:
            flat_kernel[(self.programs,)](
                *args, dummy if grad is None else grad, self.planes * self.h * self.w,
                float(value), float(grad_coef), **flags, BLOCK=self.block)
            return None
        quad = None
        if grad is not None:
            quad = torch.empty((self.planes, 4, self.h, self.w), device=logits.device,
                               dtype=torch.float32)
        resized_kernel[(self.programs,)](
            *args, dummy if quad is None else quad,
            self.h, self.w, self.H, self.W,
            f32(self.h / self.H), f32(self.w / self.W),
            f32(self.H / self.h), f32(self.W / self.w), float(value), self.n_ti, self.n_tj,
            **flags, BI=self.bi, KR=self.kr, BJ=self.bj, KC=self.kc)
        return quad


def _finalize(logits: torch.Tensor, *, quad: torch.Tensor | None = None,
              grad: torch.Tensor | None = None, grad_coef: float = 1.0,
              loss: torch.Tensor | None = None,
              parts: tuple[tuple[torch.Tensor, float], ...] = ()) -> None:
    """grad from the quadrant buffer (when ``quad``) and/or ``loss`` = sum_k coef_k * sum(part_k)."""
    has_grad = quad is not None
    numel = grad.numel() if has_grad else 0
    block = 1024 if on_gpu(logits.device) else 8192
    (p1, c1), (p2, c2) = (tuple(parts) + ((None, 0.0), (None, 0.0)))[:2]
    dummy = logits
    grid = (max(1, triton.cdiv(numel, block)),)
    finalize_kernel[grid](
        dummy if quad is None else quad, dummy if grad is None else grad,
        dummy if p1 is None else p1, dummy if p2 is None else p2,
        dummy if loss is None else loss,
        numel, logits.shape[2], logits.shape[3], float(grad_coef),
        0 if p1 is None else p1.numel(), float(c1), 0 if p2 is None else p2.numel(), float(c2),
        HAS_GRAD=has_grad, HAS_LOSS=loss is not None,
        MANUAL_BF16=manual_bf16(logits), BLOCK=block, PBLOCK=1024)


def _check(name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    if t.dtype not in TRITON_DTYPES:
        raise TypeError(f"adversarial_loss (triton): float32/float16/bfloat16 only, {name} is {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"adversarial_loss (triton): {name} is {t.dtype}, expected {dtype}")


def _prepare(logits: torch.Tensor, target: torch.Tensor | None, output_size: list[int]):
    _check("logits", logits)
    if logits.dim() != 4 or logits.numel() == 0:
        raise ValueError(f"logits must be a non-empty N x C x h x w tensor, got {tuple(logits.shape)}")
    out_h, out_w = (int(s) for s in output_size)
    if not (1 <= out_h < _MAX_SIDE and 1 <= out_w < _MAX_SIDE and out_h * out_w < 2**31):
        raise ValueError(f"adversarial_loss (triton): output_size {output_size} out of range "
                         f"(sides 1 .. {_MAX_SIDE - 1}, H * W < 2^31)")
    n, c = logits.shape[:2]
    if target is not None:
        _check("target", target, logits.dtype)
        if tuple(target.shape) != (n, c, out_h, out_w):
            raise ValueError(f"target must be N x C x H x W = {(n, c, out_h, out_w)}, "
                             f"got {tuple(target.shape)}")
        target = target.contiguous()
    return logits.contiguous(), target, out_h, out_w


def loss(logits: torch.Tensor, target: torch.Tensor | None, target_value: float,
         output_size: list[int], reduction: int, compute_grad: bool
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, grad_logits): the loss map (reduction none) or the 0-dim mean / sum, and, for mean /
    sum with ``compute_grad``, d loss / d logits (else an empty (0,) tensor)."""
    if reduction not in (REDUCE_NONE, REDUCE_MEAN, REDUCE_SUM):
        raise ValueError(f"reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")
    logits, target, out_h, out_w = _prepare(logits, target, output_size)
    n, c = logits.shape[:2]
    plan = _Plan(logits, out_h, out_w)
    empty = logits.new_empty((0,))
    if reduction == REDUCE_NONE:
        loss_map = logits.new_empty((n, c, out_h, out_w))
        plan.run(logits, target, target_value, loss_map=loss_map)
        return loss_map, empty
    coef = 1.0 / (n * c * out_h * out_w) if reduction == REDUCE_MEAN else 1.0
    part = torch.empty(plan.programs, device=logits.device, dtype=torch.float32)
    grad = torch.empty_like(logits) if compute_grad else None
    quad = plan.run(logits, target, target_value, part=part, grad=grad, grad_coef=coef)
    out = logits.new_empty(())
    _finalize(logits, quad=quad, grad=grad, grad_coef=coef, loss=out, parts=((part, coef),))
    return out, empty if grad is None else grad


def loss_backward(grad_loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor | None,
                  target_value: float, output_size: list[int]) -> torch.Tensor:
    """Gradient of sum(grad_loss * loss_map) w.r.t. logits (the backward of reduction none)."""
    logits, target, out_h, out_w = _prepare(logits, target, output_size)
    n, c = logits.shape[:2]
    _check("grad_loss", grad_loss)
    if tuple(grad_loss.shape) != (n, c, out_h, out_w):
        raise ValueError(f"grad_loss must be N x C x H x W = {(n, c, out_h, out_w)}, "
                         f"got {tuple(grad_loss.shape)}")
    grad_loss = grad_loss.contiguous()
    plan = _Plan(logits, out_h, out_w)
    grad = torch.empty_like(logits)
    quad = plan.run(logits, target, target_value, grad=grad, grad_map=grad_loss)
    if quad is not None:
        _finalize(logits, quad=quad, grad=grad)
    return grad


def discriminator(d_source: torch.Tensor, d_target: torch.Tensor, source_label: float,
                  target_label: float, output_size: list[int], compute_grad: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0.5 * (mean loss(d_source, source_label) + mean loss(d_target, target_label)) and, with
    ``compute_grad``, its gradients w.r.t. d_source and d_target (else empty (0,) tensors)."""
    d_source, _, out_h, out_w = _prepare(d_source, None, output_size)
    d_target, _, _, _ = _prepare(d_target, None, output_size)
    _check("d_target", d_target, d_source.dtype)
    runs = []
    for logits, label in ((d_source, source_label), (d_target, target_label)):
        plan = _Plan(logits, out_h, out_w)
        coef = 0.5 / (logits.shape[0] * logits.shape[1] * out_h * out_w)
        part = torch.empty(plan.programs, device=logits.device, dtype=torch.float32)
        grad = torch.empty_like(logits) if compute_grad else None
        quad = plan.run(logits, None, label, part=part, grad=grad, grad_coef=coef)
        runs.append((logits, part, coef, grad, quad))
    (ls, ps, cs, gs, qs), (lt, pt, ct, gt, qt) = runs
    out = d_source.new_empty(())
    _finalize(ls, quad=qs, grad=gs, grad_coef=cs, loss=out, parts=((ps, cs), (pt, ct)))
    if qt is not None:
        _finalize(lt, quad=qt, grad=gt, grad_coef=ct)
    # Two distinct empty tensors: outputs of a custom op may not alias each other.
    return (out, d_source.new_empty((0,)) if gs is None else gs,
            d_source.new_empty((0,)) if gt is None else gt)
