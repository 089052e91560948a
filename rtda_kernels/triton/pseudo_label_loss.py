"""Triton kernels of the fused self-training loss (op ``pseudo_label_loss``; schema in
rtda_kernels/schemas.py, reference in rtda_kernels/reference/pseudo_label_loss.py) and their
launcher.

The main kernel's program owns one image, one low-resolution row band (the output rows whose
upper source row is ``i``) and ``BJ`` low-resolution column cells: it loads the 2 x 2 logits of
every class the band reads once, then walks the band's output rows, computing per pixel the
teacher's argmax and softmax maximum, the student's cross-entropy and its gradient
softmax - onehot. The gradient is folded back onto the cells as four quadrant sums per cell
(which of a pixel's two row and two column taps it goes to), kept apart for pseudo-labelled
and other pixels because the pseudo-labelled pixels' weight (the image's confident fraction) is
known only at the end. Two small kernels then add up each image's parts (weights, loss) and
gather the quadrants into the gradient, in a fixed order: no atomics, deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rtda_kernels.backends import TRITON_DTYPES
from rtda_kernels.triton.adversarial_loss import _pow2_floor
from rtda_kernels.triton.adversarial_math import cell_start, f32, manual_bf16, tap_src, to_out
from rtda_kernels.triton.target import on_gpu

_MAX_SIDE = 1 << 20  # cell_start is exact below this output side
_PSEUDO = tl.constexpr(-1)  # labels: the pseudo-label here
_IGNORE = tl.constexpr(255)  # labels: no loss here


@triton.jit
def _first(v):
    """The first element of a 1-D block, as a scalar."""
    return tl.sum(tl.where(tl.arange(0, v.shape[0]) == 0, v, 0), axis=0)


@triton.jit
def _fold_edges(q00, q01, q10, q11, last_r, last_c):
    """On the last row (column) i1 == i0: the "next" quadrant lands on the cell itself."""
    q00 = tl.where(last_r, q00 + q10, q00)
    q01 = tl.where(last_r, q01 + q11, q01)
    q10 = tl.where(last_r, 0.0, q10)
    q11 = tl.where(last_r, 0.0, q11)
    q00 = tl.where(last_c, q00 + q01, q00)
    q10 = tl.where(last_c, q10 + q11, q10)
    q01 = tl.where(last_c, 0.0, q01)
    q11 = tl.where(last_c, 0.0, q11)
    return q00, q01, q10, q11


@triton.jit
def band_kernel(s_ptr, t_ptr, lab_ptr, q_ptr, part_ptr, quad, C, h, w, H, W,
                scale_h, scale_w, inv_h, inv_w, threshold, n_tj,
                HAS_LABELS: tl.constexpr, GRAD: tl.constexpr, CP: tl.constexpr,
                BJ: tl.constexpr, KC: tl.constexpr):
    pid = tl.program_id(0)
    tj = pid % n_tj
    i = (pid // n_tj) % h
    n = (pid // (n_tj * h)).to(tl.int64)

    bounds = cell_start(i + tl.arange(0, 2), h, H, scale_h, inv_h)
    y_begin = _first(bounds)
    y_end = tl.sum(tl.where(tl.arange(0, 2) == 1, bounds, 0), axis=0)
    cj = tj * BJ + tl.arange(0, BJ)
    cs = cell_start(cj, w, W, scale_w, inv_w)
    ce = cell_start(cj + 1, w, W, scale_w, inv_w)
    span_c = tl.max(ce - cs, axis=0)

    # [CP, BJ, KC]: class, cell column, column in cell.
    cls = tl.arange(0, CP)[:, None, None]
    cj3 = cj[None, :, None]
    cs3 = cs[None, :, None]
    ce3 = ce[None, :, None]
    kc = tl.arange(0, KC)[None, None, :]
    kc2 = tl.arange(0, KC)[None, :]
    cjf = cj3.to(tl.float32)
    real = cls < C
    cell_ok = (cj3 < w) & real
    i1 = tl.minimum(i + 1, h - 1)
    cj1 = tl.minimum(cj3 + 1, w - 1)
    plane = (n * C + cls) * h * w
    t00 = tl.load(t_ptr + plane + i * w + cj3, mask=cell_ok, other=0.0).to(tl.float32)
    t01 = tl.load(t_ptr + plane + i * w + cj1, mask=cell_ok, other=0.0).to(tl.float32)
    t10 = tl.load(t_ptr + plane + i1 * w + cj3, mask=cell_ok, other=0.0).to(tl.float32)
    t11 = tl.load(t_ptr + plane + i1 * w + cj1, mask=cell_ok, other=0.0).to(tl.float32)
    s00 = tl.load(s_ptr + plane + i * w + cj3, mask=cell_ok, other=0.0).to(tl.float32)
    s01 = tl.load(s_ptr + plane + i * w + cj1, mask=cell_ok, other=0.0).to(tl.float32)
    s10 = tl.load(s_ptr + plane + i1 * w + cj3, mask=cell_ok, other=0.0).to(tl.float32)
    s11 = tl.load(s_ptr + plane + i1 * w + cj1, mask=cell_ok, other=0.0).to(tl.float32)

    sum_pseudo = tl.zeros((BJ, KC), dtype=tl.float32)
    sum_fixed = tl.zeros((BJ, KC), dtype=tl.float32)
    count = tl.zeros((BJ, KC), dtype=tl.int32)
    # Quadrant sums [CP, BJ] per kind (p: pseudo-labelled, f: other) and (row tap, column tap).
    p00 = tl.zeros((CP, BJ), dtype=tl.float32)
    p01 = tl.zeros((CP, BJ), dtype=tl.float32)
    p10 = tl.zeros((CP, BJ), dtype=tl.float32)
    p11 = tl.zeros((CP, BJ), dtype=tl.float32)
    f00 = tl.zeros((CP, BJ), dtype=tl.float32)
    f01 = tl.zeros((CP, BJ), dtype=tl.float32)
    f10 = tl.zeros((CP, BJ), dtype=tl.float32)
    f11 = tl.zeros((CP, BJ), dtype=tl.float32)
    for l0 in range(0, span_c, KC):
        x = cs3 + l0 + kc  # [1, BJ, KC]
        x_ok = (x < ce3) & (cj3 < w)
        x2 = cs[:, None] + l0 + kc2  # [BJ, KC]
        x_ok2 = (x2 < ce[:, None]) & (cj[:, None] < w)
        wc1 = tl.minimum(tl.maximum(tap_src(x, scale_w) - cjf, 0.0), 1.0)
        wc0 = 1.0 - wc1
        # An axis without resize reads its logit as it is (no 0 * inf through the second tap).
        t_top = tl.where(w == W, t00, wc0 * t00 + wc1 * t01)
        t_bot = tl.where(w == W, t10, wc0 * t10 + wc1 * t11)
        s_top = tl.where(w == W, s00, wc0 * s00 + wc1 * s01)
        s_bot = tl.where(w == W, s10, wc0 * s10 + wc1 * s11)
        for y in range(y_begin, y_end):
            row = tl.zeros((1, 1), dtype=tl.int32) + y  # a tensor, also when interpreted
            wr1 = tl.minimum(tl.maximum(tap_src(row, scale_h) - i, 0.0), 1.0)
            wr0 = 1.0 - wr1
            ut = tl.where(h == H, t_top, wr0 * t_top + wr1 * t_bot)  # [CP, BJ, KC]
            us = tl.where(h == H, s_top, wr0 * s_top + wr1 * s_bot)
            # Teacher: argmax (the first NaN if any, as torch.argmax) and softmax maximum.
            nan = (ut != ut) & real
            any_nan = tl.max(nan.to(tl.int32), axis=0) > 0
            t_max = tl.max(tl.where(real & ~nan, ut, float("-inf")), axis=0)
            first_max = tl.min(tl.where(real & (ut == t_max[None]), cls, CP), axis=0)
            first_nan = tl.min(tl.where(nan, cls, CP), axis=0)
            pseudo_label = tl.where(any_nan, first_nan, first_max)
            t_sum = tl.sum(tl.where(real, tl.exp(ut - t_max[None]), 0.0), axis=0)
            t_sum = tl.where(any_nan, float("nan"), t_sum)
            sure = ((1.0 / t_sum) > threshold) & x_ok2
            count += sure.to(tl.int32)
            # The pixel's label.
            if HAS_LABELS:
                given = tl.load(lab_ptr + (n * H + y) * W + x2, mask=x_ok2,
                                other=_IGNORE).to(tl.int32)
                given = tl.where((given == _PSEUDO) | ((given >= 0) & (given < C)), given,
                                 _IGNORE)
            else:
                given = tl.where(x_ok2, _PSEUDO, _IGNORE)
            pseudo = (given == _PSEUDO) & x_ok2
            target = tl.where(pseudo, pseudo_label, given)  # [BJ, KC]
            counted = (given != _IGNORE) & x_ok2
            # Student: log-sum-exp, cross-entropy, softmax.
            s_max = tl.max(tl.where(real, us, float("-inf")), axis=0)
            e = tl.where(real, tl.exp(us - s_max[None]), 0.0)
            s_sum = tl.sum(e, axis=0)
            hot = cls == target[None]
            picked = tl.sum(tl.where(hot, us, 0.0), axis=0)
            loss = (s_max - picked) + tl.log(s_sum)  # exact 0 + log when the max is picked
            sum_pseudo += tl.where(pseudo, loss, 0.0)
            sum_fixed += tl.where(counted & ~pseudo, loss, 0.0)
            if GRAD:
                # An ignored pixel's coefficient is 0 (0 * NaN stays NaN, as in cross_entropy).
                coef = tl.where(counted, 1.0, 0.0)
                g = coef[None] * (e / s_sum[None] - tl.where(hot, 1.0, 0.0))
                g = tl.where(real & x_ok, g, 0.0)
                gp = tl.where(pseudo[None], g, 0.0)
                gf = tl.where(pseudo[None], 0.0, g)
                gp0 = tl.sum(gp * wc0, axis=2)  # [CP, BJ]
                gp1 = tl.where(w == W, 0.0, tl.sum(gp * wc1, axis=2))
                gf0 = tl.sum(gf * wc0, axis=2)
                gf1 = tl.where(w == W, 0.0, tl.sum(gf * wc1, axis=2))
                # An axis without resize has no second tap: no 0 * NaN through it.
                p00 += wr0 * gp0
                p01 += wr0 * gp1
                p10 += tl.where(h == H, 0.0, wr1 * gp0)
                p11 += tl.where(h == H, 0.0, wr1 * gp1)
                f00 += wr0 * gf0
                f01 += wr0 * gf1
                f10 += tl.where(h == H, 0.0, wr1 * gf0)
                f11 += tl.where(h == H, 0.0, wr1 * gf1)

    base = part_ptr + pid * 3
    tl.store(base, tl.sum(tl.sum(sum_pseudo, axis=1), axis=0))
    tl.store(base + 1, tl.sum(tl.sum(sum_fixed, axis=1), axis=0))
    tl.store(base + 2, tl.sum(tl.sum(count, axis=1), axis=0).to(tl.float32))
    if GRAD:
        cj2 = cj[None, :]
        last_r, last_c = i == h - 1, cj2 == w - 1
        p00, p01, p10, p11 = _fold_edges(p00, p01, p10, p11, last_r, last_c)
        f00, f01, f10, f11 = _fold_edges(f00, f01, f10, f11, last_r, last_c)
        cls2 = tl.arange(0, CP)[:, None]
        ok = (cls2 < C) & (cj2 < w)
        hw = h * w
        qb = q_ptr + (n * C + cls2) * hw + i * w + cj2
        tl.store(qb, p00, mask=ok)
        tl.store(qb + quad, p01, mask=ok)
        tl.store(qb + 2 * quad, p10, mask=ok)
        tl.store(qb + 3 * quad, p11, mask=ok)
        tl.store(qb + 4 * quad, f00, mask=ok)
        tl.store(qb + 5 * quad, f01, mask=ok)
        tl.store(qb + 6 * quad, f10, mask=ok)
        tl.store(qb + 7 * quad, f11, mask=ok)


@triton.jit
def weights_kernel(part_ptr, weight_ptr, loss_ptr, weight32_ptr, N, per_image, pixels, scale,
                   MANUAL_BF16: tl.constexpr, PBLOCK: tl.constexpr):
    """Per image: the confident fraction (weight) and the weighted loss; the 0-dim loss."""
    total = 0.0
    for n in range(0, N):
        acc_p = tl.zeros((PBLOCK,), dtype=tl.float32)
        acc_f = tl.zeros((PBLOCK,), dtype=tl.float32)
        acc_c = tl.zeros((PBLOCK,), dtype=tl.float32)
        for s in range(0, per_image, PBLOCK):
            o = s + tl.arange(0, PBLOCK)
            m = o < per_image
            b = part_ptr + (n * per_image + o) * 3
            acc_p += tl.load(b, mask=m, other=0.0)
            acc_f += tl.load(b + 1, mask=m, other=0.0)
            acc_c += tl.load(b + 2, mask=m, other=0.0)
        fraction = tl.sum(acc_c, axis=0) / pixels
        tl.store(weight32_ptr + n, fraction)
        tl.store(weight_ptr + n, to_out(fraction, weight_ptr.dtype.element_ty, MANUAL_BF16))
        total += fraction * tl.sum(acc_p, axis=0) + tl.sum(acc_f, axis=0)
    tl.store(loss_ptr, to_out(total * scale, loss_ptr.dtype.element_ty, MANUAL_BF16))


@triton.jit
def grad_kernel(q_ptr, weight32_ptr, grad_ptr, numel, C, h, w, scale,
                MANUAL_BF16: tl.constexpr, BLOCK: tl.constexpr):
    """grad[i, j] = weight * P + F, each Q00[i, j] + Q01[i, j-1] + Q10[i-1, j] + Q11[i-1, j-1]."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    hw = h * w
    rem = (offs % hw).to(tl.int32)
    i = rem // w
    j = rem % w
    up = i >= 1
    left = j >= 1
    image = offs // (C * hw)
    qp = q_ptr + offs
    sp = tl.load(qp, mask=mask, other=0.0)
    sp += tl.load(qp + numel - 1, mask=mask & left, other=0.0)
    sp += tl.load(qp + 2 * numel - w, mask=mask & up, other=0.0)
    sp += tl.load(qp + 3 * numel - w - 1, mask=mask & up & left, other=0.0)
    qf = qp + 4 * numel
    sf = tl.load(qf, mask=mask, other=0.0)
    sf += tl.load(qf + numel - 1, mask=mask & left, other=0.0)
    sf += tl.load(qf + 2 * numel - w, mask=mask & up, other=0.0)
    sf += tl.load(qf + 3 * numel - w - 1, mask=mask & up & left, other=0.0)
    weight = tl.load(weight32_ptr + image, mask=mask, other=0.0)
    g = (weight * sp + sf) * scale
    tl.store(grad_ptr + offs, to_out(g, grad_ptr.dtype.element_ty, MANUAL_BF16), mask=mask)


def loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
         threshold: float, output_size: list[int], compute_grad: bool
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, weight per image, d loss / d student or an empty (0,) tensor)."""
    for name, t in (("student", student), ("teacher", teacher)):
        if t.dtype not in TRITON_DTYPES:
            raise TypeError(f"pseudo_label_loss (triton): float32/float16/bfloat16 only, {name} "
                            f"is {t.dtype}")
    if student.dim() != 4 or student.numel() == 0 or teacher.shape != student.shape or (
            teacher.dtype != student.dtype):
        raise ValueError("pseudo_label_loss (triton): student and teacher must be non-empty "
                         f"N x C x h x w tensors of one shape and dtype, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    out_h, out_w = (int(s) for s in output_size)
    if not (1 <= out_h < _MAX_SIDE and 1 <= out_w < _MAX_SIDE and out_h * out_w < 2**31):
        raise ValueError(f"pseudo_label_loss (triton): output_size {output_size} out of range "
                         f"(sides 1 .. {_MAX_SIDE - 1}, H * W < 2^31)")
    n, c, h, w = student.shape
    if labels is not None and (labels.dtype != torch.int64 or
                               tuple(labels.shape) != (n, out_h, out_w)):
        raise ValueError(f"pseudo_label_loss (triton): labels must be int64 N x H x W = "
                         f"{(n, out_h, out_w)}, got {labels.dtype} {tuple(labels.shape)}")
    student, teacher = student.contiguous(), teacher.contiguous()
    labels = labels.contiguous() if labels is not None else None
    cp = max(triton.next_power_of_2(c), 2)
    kc = min(triton.next_power_of_2(-(-out_w // w)), 64)
    # Elements of one program's [CP, BJ, KC] blocks; interpreted: fewer, bigger programs.
    budget = 2048 if on_gpu(student.device) else 16384
    bj = min(_pow2_floor(max(budget // (cp * kc), 1)), triton.next_power_of_2(w))
    n_tj = triton.cdiv(w, bj)
    programs = n * h * n_tj
    device = student.device
    parts = torch.empty((programs, 3), device=device, dtype=torch.float32)
    quads = (torch.empty((8, n * c * h * w), device=device, dtype=torch.float32)
             if compute_grad else parts)
    band_kernel[(programs,)](
        student, teacher, labels if labels is not None else student, quads, parts, n * c * h * w,
        c, h, w, out_h, out_w, f32(h / out_h), f32(w / out_w), f32(out_h / h), f32(out_w / w),
        f32(threshold), n_tj, HAS_LABELS=labels is not None, GRAD=compute_grad, CP=cp, BJ=bj,
        KC=kc, num_warps=8)  # 8 warps: the eight gradient quadrants fit in registers
    out = student.new_empty(())
    weight = student.new_empty((n,))
    weight32 = torch.empty((n,), device=device, dtype=torch.float32)
    scale = 1.0 / (n * out_h * out_w)
    bf16 = manual_bf16(student)
    weights_kernel[(1,)](parts, weight, out, weight32, n, h * n_tj, float(out_h * out_w),
                         scale, MANUAL_BF16=bf16, PBLOCK=1024)
    if not compute_grad:
        return out, weight, student.new_empty((0,))
    grad = torch.empty_like(student)
    block = 1024 if on_gpu(device) else 8192
    grad_kernel[(triton.cdiv(grad.numel(), block),)](
        quads, weight32, grad, grad.numel(), c, h, w, scale, MANUAL_BF16=bf16, BLOCK=block)
    return out, weight, grad
