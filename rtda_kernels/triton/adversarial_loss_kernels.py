"""The Triton kernels of the fused pixel-wise adversarial loss, forward and backward, launched by
``rtda_kernels/triton/adversarial_loss.py``: ``resized_kernel`` (a program owns whole cells of
output pixels that read the same 2 x 2 logits), ``flat_kernel`` (no resize) and
``finalize_kernel`` (the gradient gathered from per-cell quadrants, the loss summed in a fixed
order). No atomics; all math in float32. The scheme is explained in docs/kernel_internals.md.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rtda_kernels.triton.adversarial_math import bce, cell_start, tap_src, to_out


# ----------------------------------------------------------------------------- resized maps
@triton.jit
def resized_kernel(x_ptr, t_ptr, gm_ptr, map_ptr, part_ptr, q_ptr,
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
            # An axis without resize reads its logit as it is (as the CPU kernel does): its
            # weights are 1 and 0, and 0 * inf would turn an infinite neighbour into NaN.
            top = tl.where(w == W, v00, wc0 * v00 + wc1 * v01)  # [BI, 1, BJ, KC]
            bot = tl.where(w == W, v10, wc0 * v10 + wc1 * v11)
            u = tl.where(h == H, top, wr0 * top + wr1 * bot)  # [BI, KR, BJ, KC]
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
                # An axis without resize has no second tap: no 0 * NaN through it.
                t0 = tl.sum(g * wc0, axis=3, keep_dims=True)  # [BI, KR, BJ, 1]
                t1 = tl.where(w == W, 0.0, tl.sum(g * wc1, axis=3, keep_dims=True))
                a00 += tl.sum(wr0 * t0, axis=1, keep_dims=True)  # [BI, 1, BJ, 1]
                a01 += tl.sum(wr0 * t1, axis=1, keep_dims=True)
                a10 += tl.where(h == H, 0.0, tl.sum(wr1 * t0, axis=1, keep_dims=True))
                a11 += tl.where(h == H, 0.0, tl.sum(wr1 * t1, axis=1, keep_dims=True))

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
def flat_kernel(x_ptr, t_ptr, gm_ptr, map_ptr, part_ptr, grad_ptr, numel, target_value,
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
def finalize_kernel(q_ptr, grad_ptr, part1_ptr, part2_ptr, loss_ptr, numel, h, w, grad_coef,
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
