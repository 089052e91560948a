"""Triton kernels for the fused pixel-wise adversarial loss, forward and backward.

    u = interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)   # never stored
    loss = max(u, 0) - u * y + log1p(exp(-|u|)),   dloss/du = sigmoid(u) - y

with y a constant label or an N x C x H x W target, reduced by none / mean / sum; contract in
csrc/registration.cpp, per-element math in csrc/include/rtda/adversarial_math.h.

Why cells: along one axis, output index r reads the input indices i0(r) and i1(r) = min(i0 + 1,
in - 1) (``linear_tap``), and i0 is non-decreasing in r. So the output rows split into contiguous
*cells*, cell i = {r : i0(r) = i}, and likewise the columns. A program owns a tile of BI x BJ
cells and evaluates exactly the output pixels of those cells, laid out as a 4-D block
``[BI, KR, BJ, KC]`` (cell row, row in the cell, cell column, column in the cell; a cell longer
than KR x KC is walked in chunks). Every output pixel is therefore computed once, by one program,
and every pixel of a cell reads the same 2 x 2 logits, loaded once per program:
u = wr0 * (wc0 * v00 + wc1 * v01) + wr1 * (wc0 * v10 + wc1 * v11), with ATen's nesting.

Cell boundaries: the first output index of cell i is estimated by inverting the tap formula,
(i + 0.5) * out / in - 0.5, and then made exact by counting, with the tap formula itself, how many
of the 8 indices around the estimate still tap a cell < i (the estimate is within +-2 of the truth
for output sides below 2^20, which the launchers enforce). The same code computes each boundary in
the two programs that share it, so the cells partition the output exactly. The weight of a pixel
is then ``clamp(src - i, 0, 1)`` with i its cell: equal to the tap formula's w1.

Gradient (d loss / d logits = bilinear^T of g = (sigmoid(u) - y) * coefficient): a pixel of cell
(i, j) sends g * wr_a * wc_b to logits (i + a, j + b) (a, b in {0, 1}, i + 1 clamped at the last
row). Each program sums, per cell, the four quadrants S_ab = sum g * wr_a * wc_b (a sum over
columns in the cell, then over rows: two tl.sum's over the 4-D block), folds the quadrants that
clamp back onto the cell itself (last row / column), and writes them to a float32 buffer of
4 x (low-res size); a second small kernel (_finalize_kernel) gathers, for each logit, the at most
four quadrants that reach it, in a fixed order, scales by the coefficient and casts. No atomics,
no recomputation, nothing of size H x W besides the loss map (reduction none) and the user's
target / grad_loss maps, which are read once.

Identity size (h, w) == (H, W): u = logits exactly; _flat_kernel does the elementwise loss and
writes the gradient directly.

Reductions are deterministic: every program writes one float32 partial sum to its own slot, and
program 0 of _finalize_kernel adds the slots in a fixed order (then scales: 1/M for mean, 0.5/M_s
and 0.5/M_t for the discriminator) and casts once to the logits dtype. All math is float32.

Kernels (1-D grids):
    _resized_kernel   loss map / partial sums / gradient quadrants     planes * cell tiles
    _flat_kernel      the same for identity size, gradient direct     cdiv(N*C*H*W, BLOCK)
    _finalize_kernel  gradient from quadrants; program 0: the loss    cdiv(N*C*h*w, BLOCK) or 1
The same code runs on CUDA tensors and, with TRITON_INTERPRET=1, on CPU tensors. The interpreter
has no libdevice (log1p is written with Kahan's log(1 + e) * e / ((1 + e) - 1), exact to a few
ulp everywhere, also on the GPU) and does not round float32 -> bfloat16 to nearest even, so off
CUDA bfloat16 outputs are rounded by hand (MANUAL_BF16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rtda_kernels.triton.adversarial_math import (
    bce,
    cell_start,
    f32,
    manual_bf16,
    tap_src,
    to_out,
)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REDUCE_NONE, REDUCE_MEAN, REDUCE_SUM = 0, 1, 2
_MAX_SIDE = 1 << 20  # the cell boundary search is exact below this output side (see docstring)


# ----------------------------------------------------------------------------- resized maps
@triton.jit
def _resized_kernel(x_ptr, t_ptr, gm_ptr, map_ptr, part_ptr, q_ptr,
                    h, w, H, W, scale_h, scale_w, inv_h, inv_w, target_value, n_ti, n_tj,
                    HAS_TARGET: tl.constexpr, GRAD_MAP: tl.constexpr, STORE_MAP: tl.constexpr,
                    REDUCE: tl.constexpr, GRAD: tl.constexpr, MANUAL_BF16: tl.constexpr,
                    BI: tl.constexpr, KR: tl.constexpr, BJ: tl.constexpr, KC: tl.constexpr):
    pid = tl.program_id(0)
    tj = pid % n_tj  # cell tiles along a row vary fastest: neighbours share logits in cache
    ti = (pid // n_tj) % n_ti
    p = (pid // (n_tj * n_ti)).to(tl.int64)

    ci = ti * BI + tl.arange(0, BI)
    cj = tj * BJ + tl.arange(0, BJ)
    rs = cell_start(ci, h, H, scale_h, inv_h)
    re = cell_start(ci + 1, h, H, scale_h, inv_h)
    cs = cell_start(cj, w, W, scale_w, inv_w)
    ce = cell_start(cj + 1, w, W, scale_w, inv_w)
    span_r = tl.max(re - rs, axis=0)
    span_c = tl.max(ce - cs, axis=0)

    # 4-D block [BI, KR, BJ, KC]: cell row, row in cell, cell column, column in cell.
    ci4 = ci[:, None, None, None]
    cj4 = cj[None, None, :, None]
    rs4 = rs[:, None, None, None]
    re4 = re[:, None, None, None]
    cs4 = cs[None, None, :, None]
    ce4 = ce[None, None, :, None]
    kr = tl.arange(0, KR)[None, :, None, None]
    kc = tl.arange(0, KC)[None, None, None, :]
    cif = ci4.to(tl.float32)
    cjf = cj4.to(tl.float32)

    # The 2 x 2 logits every pixel of a cell reads.
    cell_ok = (ci4 < h) & (cj4 < w)
    ci1 = tl.minimum(ci4 + 1, h - 1)
    cj1 = tl.minimum(cj4 + 1, w - 1)
    xb = x_ptr + p * h * w
    v00 = tl.load(xb + ci4 * w + cj4, mask=cell_ok, other=0.0).to(tl.float32)
    v01 = tl.load(xb + ci4 * w + cj1, mask=cell_ok, other=0.0).to(tl.float32)
    v10 = tl.load(xb + ci1 * w + cj4, mask=cell_ok, other=0.0).to(tl.float32)
    v11 = tl.load(xb + ci1 * w + cj1, mask=cell_ok, other=0.0).to(tl.float32)

    out_base = p * H * W
    acc = tl.zeros((BI, 1, BJ, 1), dtype=tl.float32)
    a00 = tl.zeros((BI, 1, BJ, 1), dtype=tl.float32)
    a01 = tl.zeros((BI, 1, BJ, 1), dtype=tl.float32)
    a10 = tl.zeros((BI, 1, BJ, 1), dtype=tl.float32)
    a11 = tl.zeros((BI, 1, BJ, 1), dtype=tl.float32)
    for k0 in range(0, span_r, KR):
        r = rs4 + k0 + kr  # [BI, KR, 1, 1]
        r_ok = r < re4
        wr1 = tl.minimum(tl.maximum(tap_src(r, scale_h) - cif, 0.0), 1.0)
        wr0 = 1.0 - wr1
        for l0 in range(0, span_c, KC):
            c = cs4 + l0 + kc  # [1, 1, BJ, KC]
            c_ok = c < ce4
            wc1 = tl.minimum(tl.maximum(tap_src(c, scale_w) - cjf, 0.0), 1.0)
            wc0 = 1.0 - wc1
            top = wc0 * v00 + wc1 * v01  # [BI, 1, BJ, KC]
            bot = wc0 * v10 + wc1 * v11
            u = wr0 * top + wr1 * bot  # [BI, KR, BJ, KC]
            mask = r_ok & c_ok
            offs = out_base + r * W + c
            if HAS_TARGET:
                y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            else:
                y = target_value
            loss, g = bce(u, y)
            if STORE_MAP:
                tl.store(map_ptr + offs, to_out(loss, map_ptr.dtype.element_ty, MANUAL_BF16),
                         mask=mask)
            if REDUCE:
                lm = tl.where(mask, loss, 0.0)
                acc += tl.sum(tl.sum(lm, axis=3, keep_dims=True), axis=1, keep_dims=True)
            if GRAD:
                if GRAD_MAP:
                    g = g * tl.load(gm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                g = tl.where(mask, g, 0.0)
                t0 = tl.sum(g * wc0, axis=3, keep_dims=True)  # [BI, KR, BJ, 1]
                t1 = tl.sum(g * wc1, axis=3, keep_dims=True)
                a00 += tl.sum(wr0 * t0, axis=1, keep_dims=True)  # [BI, 1, BJ, 1]
                a01 += tl.sum(wr0 * t1, axis=1, keep_dims=True)
                a10 += tl.sum(wr1 * t0, axis=1, keep_dims=True)
                a11 += tl.sum(wr1 * t1, axis=1, keep_dims=True)

    if REDUCE:
        tl.store(part_ptr + pid, tl.sum(acc))
    if GRAD:
        # On the last row (column) i1 == i0: the "next" quadrant lands on the cell itself.
        last_r = ci4 == h - 1
        a00 = tl.where(last_r, a00 + a10, a00)
        a01 = tl.where(last_r, a01 + a11, a01)
        a10 = tl.where(last_r, 0.0, a10)
        a11 = tl.where(last_r, 0.0, a11)
        last_c = cj4 == w - 1
        a00 = tl.where(last_c, a00 + a01, a00)
        a10 = tl.where(last_c, a10 + a11, a10)
        a01 = tl.where(last_c, 0.0, a01)
        a11 = tl.where(last_c, 0.0, a11)
        hw = h * w
        qb = q_ptr + p * 4 * hw + ci4 * w + cj4
        tl.store(qb, a00, mask=cell_ok)
        tl.store(qb + hw, a01, mask=cell_ok)
        tl.store(qb + 2 * hw, a10, mask=cell_ok)
        tl.store(qb + 3 * hw, a11, mask=cell_ok)


# ----------------------------------------------------------------------------- identity size
@triton.jit
def _flat_kernel(x_ptr, t_ptr, gm_ptr, map_ptr, part_ptr, grad_ptr, numel, target_value,
                 grad_coef, HAS_TARGET: tl.constexpr, GRAD_MAP: tl.constexpr,
                 STORE_MAP: tl.constexpr, REDUCE: tl.constexpr, GRAD: tl.constexpr,
                 MANUAL_BF16: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    u = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_TARGET:
        y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        y = target_value
    loss, g = bce(u, y)
    if STORE_MAP:
        tl.store(map_ptr + offs, to_out(loss, map_ptr.dtype.element_ty, MANUAL_BF16), mask=mask)
    if REDUCE:
        tl.store(part_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))
    if GRAD:
        if GRAD_MAP:
            g = g * tl.load(gm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = g * grad_coef
        tl.store(grad_ptr + offs, to_out(g, grad_ptr.dtype.element_ty, MANUAL_BF16), mask=mask)


# ----------------------------------------------------------------------------- finalize
@triton.jit
def _finalize_kernel(q_ptr, grad_ptr, part1_ptr, part2_ptr, loss_ptr, numel, h, w, grad_coef,
                     n1, coef1, n2, coef2, HAS_GRAD: tl.constexpr, HAS_LOSS: tl.constexpr,
                     MANUAL_BF16: tl.constexpr, BLOCK: tl.constexpr, PBLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if HAS_GRAD:
        # grad[i, j] = S00[i, j] + S01[i, j-1] + S10[i-1, j] + S11[i-1, j-1], in this order.
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        hw = h * w
        p = offs // hw
        rem = (offs % hw).to(tl.int32)
        i = rem // w
        j = rem % w
        qb = q_ptr + p * 4 * hw + rem
        up = i >= 1
        left = j >= 1
        s = tl.load(qb, mask=mask, other=0.0)
        s += tl.load(qb + hw - 1, mask=mask & left, other=0.0)
        s += tl.load(qb + 2 * hw - w, mask=mask & up, other=0.0)
        s += tl.load(qb + 3 * hw - w - 1, mask=mask & up & left, other=0.0)
        tl.store(grad_ptr + offs, to_out(s * grad_coef, grad_ptr.dtype.element_ty, MANUAL_BF16),
                 mask=mask)
    if HAS_LOSS:
        if pid == 0:
            acc1 = tl.zeros((PBLOCK,), dtype=tl.float32)
            for s1 in range(0, n1, PBLOCK):
                o1 = s1 + tl.arange(0, PBLOCK)
                acc1 += tl.load(part1_ptr + o1, mask=o1 < n1, other=0.0)
            acc2 = tl.zeros((PBLOCK,), dtype=tl.float32)
            for s2 in range(0, n2, PBLOCK):
                o2 = s2 + tl.arange(0, PBLOCK)
                acc2 += tl.load(part2_ptr + o2, mask=o2 < n2, other=0.0)
            total = tl.sum(acc1, axis=0) * coef1 + tl.sum(acc2, axis=0) * coef2
            tl.store(loss_ptr, to_out(total, loss_ptr.dtype.element_ty, MANUAL_BF16))


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
        cuda = logits.device.type == "cuda"
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
        _finalize_kernel (resized case), None otherwise (identity: ``grad`` is written here)."""
        dummy = logits
        flags = dict(HAS_TARGET=target is not None, GRAD_MAP=grad_map is not None,
                     STORE_MAP=loss_map is not None, REDUCE=part is not None,
                     GRAD=grad is not None, MANUAL_BF16=manual_bf16(logits))
        args = (logits, dummy if target is None else target,
                dummy if grad_map is None else grad_map,
                dummy if loss_map is None else loss_map,
                dummy if part is None else part)
        if self.identity:
            _flat_kernel[(self.programs,)](
                *args, dummy if grad is None else grad, self.planes * self.h * self.w,
                float(value), float(grad_coef), **flags, BLOCK=self.block)
            return None
        quad = None
        if grad is not None:
            quad = torch.empty((self.planes, 4, self.h, self.w), device=logits.device,
                               dtype=torch.float32)
        _resized_kernel[(self.programs,)](
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
    block = 1024 if logits.device.type == "cuda" else 8192
    (p1, c1), (p2, c2) = (tuple(parts) + ((None, 0.0), (None, 0.0)))[:2]
    dummy = logits
    grid = (max(1, triton.cdiv(numel, block)),)
    _finalize_kernel[grid](
        dummy if quad is None else quad, dummy if grad is None else grad,
        dummy if p1 is None else p1, dummy if p2 is None else p2,
        dummy if loss is None else loss,
        numel, logits.shape[2], logits.shape[3], float(grad_coef),
        0 if p1 is None else p1.numel(), float(c1), 0 if p2 is None else p2.numel(), float(c2),
        HAS_GRAD=has_grad, HAS_LOSS=loss is not None,
        MANUAL_BF16=manual_bf16(logits), BLOCK=block, PBLOCK=1024)


def _check(name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    if t.dtype not in _DTYPES:
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
