"""Triton kernels for the fused depthwise-separable conv2d + LeakyReLU, forward and backward.

The forward builds each tile of the depthwise output in registers and feeds it to ``tl.dot``
without writing it; the backward recomputes it and writes only its gradient. Partial sums go to
float32 buffers that torch adds (deterministic, no atomics). The kernels and their grids are in
docs/kernel_internals.md. The same code runs on CUDA tensors and, with TRITON_INTERPRET=1, on CPU
tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rtda_kernels.backends import TRITON_DTYPES
from rtda_kernels.triton.target import multiprocessors, on_gpu


# ----------------------------------------------------------------------------- shared device code
@triton.jit
def _dw_tile(x_ptr, dww_ptr, dwb_ptr, n, offs_c, oh, ow, pmask, C_in, H, W, stride, padding,
             K: tl.constexpr, HAS_DWB: tl.constexpr):
    """Depthwise output d[n, offs_c, (oh, ow)] as a float32 [BLOCK_C, BLOCK_P] tile."""
    cmask = offs_c < C_in
    plane = (n * C_in + offs_c).to(tl.int64) * H * W
    d = tl.zeros((offs_c.shape[0], oh.shape[0]), dtype=tl.float32)
    # Runtime tap loops on purpose: unrolling all k*k taps (tl.static_range) spilled kilobytes of
    # registers and, fp32 at k=7, let the pipeliner stage ~800 KB of shared memory.
    for i in range(K):
        ih = oh * stride - padding + i
        hok = pmask & (ih >= 0) & (ih < H)
        for j in range(K):
            iw = ow * stride - padding + j
            ok = hok & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + plane[:, None] + (ih * W + iw)[None, :],
                         mask=cmask[:, None] & ok[None, :], other=0.0)
            wv = tl.load(dww_ptr + offs_c * (K * K) + (i * K + j), mask=cmask, other=0.0)
            d += xv.to(tl.float32) * wv.to(tl.float32)[:, None]
    if HAS_DWB:
        d += tl.load(dwb_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)[:, None]
    return d


@triton.jit
def _gz_tile(gy_ptr, y_ptr, offs, mask, slope, HAS_ACT: tl.constexpr):
    """dL/dz as float32: grad_y, scaled by the slope where the saved output is not positive."""
    g = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_ACT:
        yv = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.where(yv > 0, g, g * slope)
    return g


@triton.jit
def _dot(a, b, acc, ty: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with both operands rounded to ``ty``. UPCAST then multiplies in float32 (exact
    for bf16 values): the interpreter's bf16 tl.dot multiplies the raw bits."""
    a = a.to(ty)
    b = b.to(ty)
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision="ieee")


# ----------------------------------------------------------------------------- forward
@triton.jit
def _fwd_kernel(x_ptr, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, y_ptr,
                C_in, C_out, H, W, Ho, Wo, stride, padding, slope,
                K: tl.constexpr, HAS_DWB: tl.constexpr, HAS_PWB: tl.constexpr,
                HAS_ACT: tl.constexpr, UPCAST: tl.constexpr, BLOCK_O: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    P = Ho * Wo
    n_ob = tl.cdiv(C_out, BLOCK_O)
    n_pt = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    ob = pid % n_ob  # C_out blocks vary fastest: they share the same x window in cache
    pt = (pid // n_ob) % n_pt
    n = (pid // (n_ob * n_pt)).to(tl.int64)

    offs_o = ob * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_p = pt * BLOCK_P + tl.arange(0, BLOCK_P)
    omask = offs_o < C_out
    pmask = offs_p < P
    oh = offs_p // Wo
    ow = offs_p % Wo
    dot_ty = x_ptr.dtype.element_ty

    acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    for c0 in range(0, C_in, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        d = _dw_tile(x_ptr, dww_ptr, dwb_ptr, n, offs_c, oh, ow, pmask, C_in, H, W,
                     stride, padding, K, HAS_DWB)
        w = tl.load(pww_ptr + offs_o[:, None] * C_in + offs_c[None, :],
                    mask=omask[:, None] & (offs_c < C_in)[None, :], other=0.0)
        acc = _dot(w, d, acc, dot_ty, UPCAST)

    if HAS_PWB:
        acc += tl.load(pwb_ptr + offs_o, mask=omask, other=0.0).to(tl.float32)[:, None]
    if HAS_ACT:
        acc = tl.where(acc > 0, acc, acc * slope)
    out = (n * C_out + offs_o).to(tl.int64)[:, None] * P + offs_p[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=omask[:, None] & pmask[None, :])


# ----------------------------------------------------------------------------- backward
@triton.jit
def _grad_d_kernel(gy_ptr, y_ptr, pww_ptr, gd_ptr, C_in, C_out, P, slope,
                   HAS_ACT: tl.constexpr, UPCAST: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr):
    n_cb = tl.cdiv(C_in, BLOCK_C)
    n_pt = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    cb = pid % n_cb
    pt = (pid // n_cb) % n_pt
    n = (pid // (n_cb * n_pt)).to(tl.int64)

    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pt * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = offs_c < C_in
    pmask = offs_p < P
    dot_ty = gy_ptr.dtype.element_ty

    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for o0 in range(0, C_out, BLOCK_O):
        offs_o = o0 + tl.arange(0, BLOCK_O)
        omask = offs_o < C_out
        w_t = tl.load(pww_ptr + offs_o[None, :] * C_in + offs_c[:, None],
                      mask=cmask[:, None] & omask[None, :], other=0.0)
        rows = (n * C_out + offs_o).to(tl.int64)[:, None] * P + offs_p[None, :]
        gz = _gz_tile(gy_ptr, y_ptr, rows, omask[:, None] & pmask[None, :], slope, HAS_ACT)
        acc = _dot(w_t, gz, acc, dot_ty, UPCAST)

    out = (n * C_in + offs_c).to(tl.int64)[:, None] * P + offs_p[None, :]
    tl.store(gd_ptr + out, acc, mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _grad_pw_kernel(x_ptr, dww_ptr, dwb_ptr, gy_ptr, y_ptr, part_w_ptr, part_b_ptr,
                    N, C_in, C_out, H, W, Ho, Wo, stride, padding, slope, items_per_split,
                    K: tl.constexpr, HAS_DWB: tl.constexpr, HAS_ACT: tl.constexpr,
                    UPCAST: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_P: tl.constexpr):
    P = Ho * Wo
    n_ob = tl.cdiv(C_out, BLOCK_O)
    n_cb = tl.cdiv(C_in, BLOCK_C)
    n_pt = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    ob = pid % n_ob
    cb = (pid // n_ob) % n_cb
    split = pid // (n_ob * n_cb)

    offs_o = ob * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    omask = offs_o < C_out
    cmask = offs_c < C_in
    dot_ty = x_ptr.dtype.element_ty

    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_O,), dtype=tl.float32)
    start = split * items_per_split
    end = tl.minimum(start + items_per_split, N * n_pt)
    # item = (image, pixel tile). 2 stages: 3 take 104 KB of shared memory for fp32 at k=1.
    for item in tl.range(start, end, num_stages=2):
        n = (item // n_pt).to(tl.int64)
        offs_p = (item % n_pt) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = offs_p < P
        rows = (n * C_out + offs_o).to(tl.int64)[:, None] * P + offs_p[None, :]
        gz = _gz_tile(gy_ptr, y_ptr, rows, omask[:, None] & pmask[None, :], slope, HAS_ACT)
        d = _dw_tile(x_ptr, dww_ptr, dwb_ptr, n, offs_c, offs_p // Wo, offs_p % Wo, pmask,
                     C_in, H, W, stride, padding, K, HAS_DWB)
        acc = _dot(gz, tl.trans(d), acc, dot_ty, UPCAST)
        acc_b += tl.sum(gz, axis=1)

    base = (split * C_out + offs_o).to(tl.int64)
    tl.store(part_w_ptr + base[:, None] * C_in + offs_c[None, :], acc,
             mask=omask[:, None] & cmask[None, :])
    if cb == 0:
        tl.store(part_b_ptr + base, acc_b, mask=omask)


@triton.jit
def _grad_x_kernel(gd_ptr, dww_ptr, gx_ptr, C_in, H, W, Ho, Wo, stride, padding,
                   K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    n_cb = tl.cdiv(C_in, BLOCK_C)
    n_ht = tl.cdiv(H * W, BLOCK_HW)
    pid = tl.program_id(0)
    cb = pid % n_cb
    ht = (pid // n_cb) % n_ht
    n = (pid // (n_cb * n_ht)).to(tl.int64)

    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = ht * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cmask = offs_c < C_in
    hwmask = offs_hw < H * W
    h = offs_hw // W
    w = offs_hw % W
    plane = (n * C_in + offs_c).to(tl.int64)

    # Input pixel h is read by tap i of output row oh iff oh * stride - padding + i == h.
    acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=tl.float32)
    for i in range(K):
        th = h + padding - i
        thc = tl.maximum(th, 0)  # keep % and // away from negative operands
        oh = thc // stride
        hok = hwmask & (th >= 0) & (thc % stride == 0) & (oh < Ho)
        for j in range(K):
            tw = w + padding - j
            twc = tl.maximum(tw, 0)
            ow = twc // stride
            ok = hok & (tw >= 0) & (twc % stride == 0) & (ow < Wo)
            g = tl.load(gd_ptr + plane[:, None] * (Ho * Wo) + (oh * Wo + ow)[None, :],
                        mask=cmask[:, None] & ok[None, :], other=0.0)
            wv = tl.load(dww_ptr + offs_c * (K * K) + (i * K + j), mask=cmask, other=0.0)
            acc += g * wv.to(tl.float32)[:, None]

    tl.store(gx_ptr + plane[:, None] * (H * W) + offs_hw[None, :],
             acc.to(gx_ptr.dtype.element_ty), mask=cmask[:, None] & hwmask[None, :])


@triton.jit
def _grad_dw_kernel(x_ptr, gd_ptr, part_ptr, N, C_in, H, W, Ho, Wo, stride, padding,
                    items_per_split, K: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_P: tl.constexpr):
    P = Ho * Wo
    n_cb = tl.cdiv(C_in, BLOCK_C)
    n_pt = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    cb = pid % n_cb
    split = pid // n_cb

    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C_in
    start = split * items_per_split
    end = tl.minimum(start + items_per_split, N * n_pt)
    out = (split * C_in + offs_c).to(tl.int64) * (K * K + 1)

    # Column t < K*K is tap (t // K, t % K); column K*K is the bias, i.e. a tap whose x is 1.
    for t in range(K * K + 1):
        i = t // K
        j = t % K
        is_tap = t < K * K
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        for item in range(start, end):
            n = (item // n_pt).to(tl.int64)
            offs_p = (item % n_pt) * BLOCK_P + tl.arange(0, BLOCK_P)
            pmask = offs_p < P
            plane = (n * C_in + offs_c).to(tl.int64)
            g = tl.load(gd_ptr + plane[:, None] * P + offs_p[None, :],
                        mask=cmask[:, None] & pmask[None, :], other=0.0)
            ih = (offs_p // Wo) * stride - padding + i
            iw = (offs_p % Wo) * stride - padding + j
            ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & is_tap
            xv = tl.load(x_ptr + plane[:, None] * (H * W) + (ih * W + iw)[None, :],
                         mask=cmask[:, None] & ok[None, :], other=0.0)
            acc += g * tl.where(is_tap, xv.to(tl.float32), 1.0)
        tl.store(part_ptr + out + t, tl.sum(acc, axis=1), mask=cmask)


# ----------------------------------------------------------------------------- launchers
def _check_dtypes(*tensors: torch.Tensor | None) -> None:
    for t in tensors:
        if t is not None and t.dtype not in TRITON_DTYPES:
            raise TypeError(f"dwsep_conv2d (triton): float32/float16/bfloat16 only, not {t.dtype}")


def _pow2(n: int, lo: int, hi: int) -> int:
    """Power of two covering ``n``, clamped to ``[lo, hi]``."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def _pixel_cap(device: torch.device) -> int:
    # The interpreter pays per op, not per element: bigger tiles mean fewer programs and ops.
    return 64 if on_gpu(device) else 256


def _splits(device: torch.device, blocks: int, items: int) -> tuple[int, int]:
    """(number of splits, items per split) for the reduction grids: about 4 waves of programs."""
    target = 1  # the interpreter runs programs one after another: fewer is cheaper
    if on_gpu(device):
        target = 4 * multiprocessors(device)
    splits = max(1, min(items, triton.cdiv(target, blocks)))
    per = triton.cdiv(items, splits)
    return triton.cdiv(items, per), per


# Forward and grad-pw hold a [BLOCK_O, BLOCK_P] accumulator beside the depthwise tile: 4 warps
# spilled up to 0.8 KB/thread on sm_70..87 (docs/gpu_resources.md), 8 warps halve the share.
_WIDE_WARPS = 8


def _upcast(x: torch.Tensor) -> bool:
    """bf16 dots go through float32 off CUDA: the interpreter's bf16 tl.dot is broken."""
    return x.dtype == torch.bfloat16 and not on_gpu(x.device)


def _out_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


def forward(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor | None,
            pw_weight: torch.Tensor, pw_bias: torch.Tensor | None, stride: int, padding: int,
            negative_slope: float | None) -> torch.Tensor:
    """``leaky_relu(conv1x1(depthwise(x)))`` as one kernel; returns contiguous NCHW in x's dtype."""
    _check_dtypes(x, dw_weight, dw_bias, pw_weight, pw_bias)
    x, dw_weight, pw_weight = x.contiguous(), dw_weight.contiguous(), pw_weight.contiguous()
    N, C_in, H, W = x.shape
    C_out, K = pw_weight.shape[0], dw_weight.shape[-1]
    Ho, Wo = _out_size(H, K, stride, padding), _out_size(W, K, stride, padding)
    y = torch.empty((N, C_out, Ho, Wo), device=x.device, dtype=x.dtype)

    BO, BC, BP = _pow2(C_out, 16, 64), _pow2(C_in, 16, 32), _pow2(Ho * Wo, 16, _pixel_cap(x.device))
    grid = (N * triton.cdiv(Ho * Wo, BP) * triton.cdiv(C_out, BO),)
    _fwd_kernel[grid](
        x, dw_weight, dw_weight if dw_bias is None else dw_bias.contiguous(),
        pw_weight, pw_weight if pw_bias is None else pw_bias.contiguous(), y,
        C_in, C_out, H, W, Ho, Wo, stride, padding,
        0.0 if negative_slope is None else float(negative_slope),
        K=K, HAS_DWB=dw_bias is not None, HAS_PWB=pw_bias is not None,
        HAS_ACT=negative_slope is not None, UPCAST=_upcast(x), BLOCK_O=BO, BLOCK_C=BC, BLOCK_P=BP,
        num_warps=_WIDE_WARPS)
    return y


def backward(grad_y: torch.Tensor, x: torch.Tensor, y: torch.Tensor, dw_weight: torch.Tensor,
             dw_bias: torch.Tensor | None, pw_weight: torch.Tensor, stride: int, padding: int,
             negative_slope: float | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias)``.

    ``y`` is the saved forward output (its sign gives the activation mask). Both bias grads are
    always returned, in the dtype of the matching bias, or of the weight when the bias is None.
    """
    _check_dtypes(grad_y, x, y, dw_weight, dw_bias, pw_weight)
    x, dw_weight, pw_weight = x.contiguous(), dw_weight.contiguous(), pw_weight.contiguous()
    grad_y, y = grad_y.to(x.dtype).contiguous(), y.contiguous()
    dwb = dw_weight if dw_bias is None else dw_bias.contiguous()
    N, C_in, H, W = x.shape
    C_out, K = pw_weight.shape[0], dw_weight.shape[-1]
    Ho, Wo = _out_size(H, K, stride, padding), _out_size(W, K, stride, padding)
    P, dev = Ho * Wo, x.device
    has_act = negative_slope is not None
    slope = float(negative_slope) if has_act else 0.0
    cap, upcast = _pixel_cap(dev), _upcast(x)
    f32 = dict(device=dev, dtype=torch.float32)

    # 1) gd = dL/dd = pw^T @ gz, float32.
    gd = torch.empty((N, C_in, Ho, Wo), **f32)
    BC, BO, BP = _pow2(C_in, 16, 32), _pow2(C_out, 16, 32), _pow2(P, 16, cap)
    grid = (N * triton.cdiv(P, BP) * triton.cdiv(C_in, BC),)
    _grad_d_kernel[grid](grad_y, y, pw_weight, gd, C_in, C_out, P, slope,
                         HAS_ACT=has_act, UPCAST=upcast, BLOCK_C=BC, BLOCK_O=BO, BLOCK_P=BP)

    # 2) grad_pw_weight = sum gz d^T and grad_pw_bias = sum gz, with d recomputed.
    BO, BC, BP = _pow2(C_out, 16, 64), _pow2(C_in, 16, 32), _pow2(P, 16, cap)
    blocks = triton.cdiv(C_out, BO) * triton.cdiv(C_in, BC)
    splits, per = _splits(dev, blocks, N * triton.cdiv(P, BP))
    part_w = torch.empty((splits, C_out, C_in), **f32)
    part_b = torch.empty((splits, C_out), **f32)
    _grad_pw_kernel[(blocks * splits,)](
        x, dw_weight, dwb, grad_y, y, part_w, part_b, N, C_in, C_out, H, W, Ho, Wo,
        stride, padding, slope, per, K=K, HAS_DWB=dw_bias is not None, HAS_ACT=has_act,
        UPCAST=upcast, BLOCK_O=BO, BLOCK_C=BC, BLOCK_P=BP, num_warps=_WIDE_WARPS)
    grad_pw_weight = part_w.sum(0).to(pw_weight.dtype).reshape(pw_weight.shape)
    grad_pw_bias = part_b.sum(0).to(pw_weight.dtype)

    # 3) grad_x by gathering gd over the k*k windows that read each input pixel.
    grad_x = torch.empty_like(x)
    BC, BHW = _pow2(C_in, 4, 16), _pow2(H * W, 16, 2 * cap)
    grid = (N * triton.cdiv(H * W, BHW) * triton.cdiv(C_in, BC),)
    _grad_x_kernel[grid](gd, dw_weight, grad_x, C_in, H, W, Ho, Wo, stride, padding,
                         K=K, BLOCK_C=BC, BLOCK_HW=BHW)

    # 4) grad_dw_weight = sum gd * shifted x, grad_dw_bias = sum gd (last column).
    BC, BP = _pow2(C_in, 4, 16), _pow2(P, 16, 2 * cap)
    blocks = triton.cdiv(C_in, BC)
    splits, per = _splits(dev, blocks, N * triton.cdiv(P, BP))
    part = torch.empty((splits, C_in, K * K + 1), **f32)
    _grad_dw_kernel[(blocks * splits,)](x, gd, part, N, C_in, H, W, Ho, Wo, stride, padding,
                                        per, K=K, BLOCK_C=BC, BLOCK_P=BP)
    sums = part.sum(0)
    grad_dw_weight = sums[:, :K * K].to(dw_weight.dtype).reshape(dw_weight.shape).contiguous()
    bias_dtype = dw_weight.dtype if dw_bias is None else dw_bias.dtype
    # A copy: with C_in = 1 both slices are views of `sums`, and returns may not alias.
    grad_dw_bias = sums[:, K * K].to(bias_dtype, copy=True)
    return grad_x, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias
