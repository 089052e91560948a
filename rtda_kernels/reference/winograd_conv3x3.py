"""Reference Winograd F(4x4, 3x3) convolution: the algorithm of the CPU kernel in plain PyTorch.

A 3x3 stride-1 convolution computes each 4x4 block of outputs from a 6x6 block of inputs. In the
Winograd domain (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) that
block costs 36 multiplications per input/output channel pair instead of 144:

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise, summed over input channels)

with the interpolation points 0, 1, -1, 2, -2 and infinity. The weight transform ``G g G^T`` is
done once (:func:`winograd_weight`); per call the input tiles are transformed, multiplied with
the transformed weights as 36 matrix products over channels, and transformed back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TILE = 4  # outputs per tile side
WINDOW = TILE + 2  # inputs per tile side (3x3 kernel)

# The transforms of F(4x4, 3x3); the kernel (csrc/cpu/winograd_conv3x3_cpu.cpp) hard-codes the same
# coefficients.
B_T = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
]
G = [
    [1 / 4, 0.0, 0.0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0.0, 0.0, 1.0],
]
A_T = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
]


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """The 36 x C_in x C_out Winograd-domain form ``G g G^T`` of a C_out x C_in x 3 x 3 weight,
    in the weight's dtype (computed in float64 so that it is exact up to the final rounding)."""
    g = torch.tensor(G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,oxij,bj->abxo", g, weight.double(), g)
    u = u.reshape(WINDOW * WINDOW, weight.shape[1], weight.shape[0])
    return u.to(weight.dtype).contiguous()


def winograd_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_winograd: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)`` (+ ``residual``, then ReLU if ``relu``) by the
    F(4x4, 3x3) algorithm from ``weight_winograd = winograd_weight(weight)``, every intermediate
    kept. When a transformed output is not finite (x or the weight holds NaN or inf, which the
    transforms would spread over whole tiles) the call is computed by ``F.conv2d`` instead, as the
    CPU kernel does, so that NaN and inf come out where the direct convolution puts them."""
    n, _, height, width = x.shape
    c_out = weight_winograd.shape[2]
    tiles_y, tiles_x = -(-height // TILE), -(-width // TILE)
    # Pad by 1 (the conv's zero padding) and to whole tiles; tiles overlap by 2.
    padded = F.pad(x, (1, TILE * tiles_x + 1 - width, 1, TILE * tiles_y + 1 - height))
    d = padded.unfold(2, WINDOW, TILE).unfold(3, WINDOW, TILE)  # N C ty tx 6 6
    b_t = torch.tensor(B_T, dtype=x.dtype, device=x.device)
    a_t = torch.tensor(A_T, dtype=x.dtype, device=x.device)
    v = torch.einsum("ai,nctxij,bj->abntxc", b_t, d, b_t)
    u = weight_winograd.view(WINDOW, WINDOW, -1, c_out)
    m = torch.einsum("abntxc,abco->abntxo", v, u)
    y = torch.einsum("ia,abntxo,jb->notixj", a_t, m, a_t)
    if torch.isfinite(y).all():  # all 16 outputs of every tile, as the kernel checks
        y = y.reshape(n, c_out, TILE * tiles_y, TILE * tiles_x)[:, :, :height, :width]
    else:
        y = F.conv2d(x, weight, padding=1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y
