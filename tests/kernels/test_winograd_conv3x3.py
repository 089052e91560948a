"""winograd_conv3x3 (inference-only Winograd F(4x4, 3x3) convolution): the reference against
F.conv2d in float64, the C++ kernel against the reference and F.conv2d on odd shapes and layouts,
opcheck, torch.compile, the WinogradConv2d module and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

import rtda_kernels
from rtda_kernels import reference
from rtda_kernels.nn import WinogradConv2d

from .helpers import assert_close, examples

needs_kernel = pytest.mark.skipif(not rtda_kernels.has_kernel("winograd_conv3x3", "cpu"),
                                  reason="the compiled CPU kernel is not built")

# (N, C_in, C_out, H, W)
CASES = [
    (1, 3, 5, 7, 9),  # odd sizes, partial tiles on both sides
    (2, 17, 8, 13, 4),  # C_in not a multiple of the vector width, batch 2
    (1, 8, 1, 1, 1),  # 1x1 image, C_out = 1
    (3, 1, 19, 5, 12),  # C_in = 1, C_out = 19 (the fusion conv's class count)
    (1, 64, 64, 32, 64),  # a ResNet stage
    (1, 40, 24, 23, 29),  # prime sizes, several chunks' worth of channels
]
CASE_IDS = ["x".join(map(str, case)) for case in CASES]
OP = "winograd_conv3x3"  # its row of helpers.TOLERANCES


def make(case, dtype=torch.float32, layout="contiguous", seed=0):
    n, c_in, c_out, height, width = case
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, height, width + (2 if layout == "sliced" else 0),
                    dtype=torch.float64, generator=generator)
    if layout == "sliced":
        x = x[..., 1:-1]
    weight = torch.randn(c_out, c_in, 3, 3, dtype=torch.float64, generator=generator)
    weight = weight / (3 * c_in**0.5)
    bias = torch.randn(c_out, dtype=torch.float64, generator=generator)
    residual = torch.randn(n, c_out, height, width, dtype=torch.float64, generator=generator)
    x, weight, bias, residual = (t.to(dtype) for t in (x, weight, bias, residual))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        residual = residual.contiguous(memory_format=torch.channels_last)
    return x, weight, bias, residual


def terms(x, weight, bias, residual) -> float:
    """The largest root-sum-square of the products an output sums (x * w over the 3x3 window
    and channels, bias, residual): its float32 rounding error is relative to that, not to the
    sum, which can cancel in a tensor of a few elements (C_out = 1 on a 1 x 1 image)."""
    squares = F.conv2d(x.double() ** 2, weight.double() ** 2,
                       None if bias is None else bias.double() ** 2, padding=1)
    if residual is not None:
        squares = squares + residual.double() ** 2
    return squares.sqrt().max().item()


def check_direct(y, x, weight, bias, residual, relu, dtype, name="y"):
    """y within the table's bound of the float64 direct convolution (the scale: max |expected|,
    or the products' size where larger)."""
    assert_close(y, direct(x, weight, bias, residual, relu), OP, dtype, name,
                 floor=terms(x, weight, bias, residual))


def direct(x, weight, bias, residual, relu):
    y = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    if residual is not None:
        y = y + residual.double()
    return torch.relu(y) if relu else y


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_equals_direct_convolution_in_float64(case):
    """The transform matrices are right: in float64 the algorithm is exact up to rounding."""
    x, weight, bias, residual = (t.double() for t in make(case))
    y = reference.winograd_conv3x3(x, weight, reference.winograd_weight(weight), bias, residual,
                                   True)
    check_direct(y, x, weight, bias, residual, True, torch.float64, "y")


@needs_kernel
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("epilogue", ["plain", "bias", "bias+residual+relu"])
@torch.no_grad()
def test_kernel_matches_reference_and_conv2d(case, layout, epilogue):
    x, weight, bias, residual = make(case, layout=layout)
    bias = None if epilogue == "plain" else bias
    residual = residual if epilogue == "bias+residual+relu" else None
    relu = epilogue == "bias+residual+relu"
    u = rtda_kernels.winograd_weight(weight)
    y = rtda_kernels.winograd_conv3x3(x, weight, bias, residual, relu=relu, weight_winograd=u)
    assert y.is_contiguous(memory_format=torch.channels_last)
    check_direct(y, x, weight, bias, residual, relu, torch.float32)
    # The bound is the algorithm's, not the kernel's slack: the float32 reference (the same
    # transforms in PyTorch ops) rounds as far from the direct convolution.
    check_direct(reference.winograd_conv3x3(x, weight, u, bias, residual, relu), x, weight, bias,
                 residual, relu, torch.float32, "reference y")
    # The same arithmetic in any layout: bitwise equal to the contiguous input's result.
    if layout != "contiguous":
        y_contiguous = rtda_kernels.winograd_conv3x3(
            x.contiguous(), weight, bias, None if residual is None else residual.contiguous(),
            relu=relu, weight_winograd=u)
        assert torch.equal(y, y_contiguous)


# Random shapes past the kernel's blockings: 8-channel vectors with a partial last one (C up to
# 40), partial 4x4 tiles on both sides (up to 70: 18 x 18 tiles), parallel tasks of
# max(1, 2048 / C) tiles; bias and residual each optional; any layout. (A second workspace chunk
# needs 256+ tiles at 455+ channels: test_kernel_many_chunks_and_images.)
def _sizes(small: int, large: int):
    return st.one_of(st.integers(1, small), st.integers(small + 1, large))


@needs_kernel
@settings(max_examples=examples(40), deadline=None)
@given(n=st.integers(1, 3), c_in=_sizes(9, 40), c_out=_sizes(9, 40), height=_sizes(19, 70),
       width=_sizes(19, 70), has_bias=st.booleans(), has_residual=st.booleans(),
       relu=st.booleans(), layout=st.sampled_from(["contiguous", "channels_last", "sliced"]),
       seed=st.integers(0, 2**16))
@torch.no_grad()
def test_kernel_random_shapes(n, c_in, c_out, height, width, has_bias, has_residual, relu,
                              layout, seed):
    event("C_in and C_out > 8 (several vectors)" if min(c_in, c_out) > 8 else "C <= 8")
    event("several parallel tasks" if n * -(-height // 4) * -(-width // 4) > 2048 // c_in
          else "one task")
    x, weight, bias, residual = make((n, c_in, c_out, height, width), layout=layout, seed=seed)
    bias, residual = (bias if has_bias else None), (residual if has_residual else None)
    y = rtda_kernels.winograd_conv3x3(x, weight, bias, residual, relu=relu)
    check_direct(y, x, weight, bias, residual, relu, torch.float32)


@needs_kernel
@torch.no_grad()
def test_kernel_many_chunks_and_images():
    """More tiles than one workspace chunk holds (the chunk loop and its tile offsets), batch 2."""
    x, weight, bias, residual = make((2, 16, 16, 150, 70))
    u = rtda_kernels.winograd_weight(weight)
    y = rtda_kernels.winograd_conv3x3(x, weight, bias, residual, relu=True, weight_winograd=u)
    check_direct(y, x, weight, bias, residual, True, torch.float32, "y")


@needs_kernel
def test_inference_mode_then_no_grad():
    """The kernel's per-thread workspace outlives a call: one made under inference_mode must
    still serve a call outside it (and the other way round). The shape needs a larger workspace
    than every other test here, so that the first call below allocates it."""
    x, weight, bias, residual = make((1, 64, 64, 128, 128))
    u = rtda_kernels.winograd_weight(weight)
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with mode():
            y = rtda_kernels.winograd_conv3x3(x, weight, bias, residual, relu=True,
                                              weight_winograd=u)
        check_direct(y, x, weight, bias, residual, True, torch.float32,
                     f"y under {mode.__name__}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@torch.no_grad()
def test_other_dtypes_run_the_reference(dtype):
    x, weight, bias, residual = make(CASES[0], dtype=dtype)
    with rtda_kernels.use_backend("reference"):
        y = rtda_kernels.winograd_conv3x3(x, weight, bias, residual, relu=True)
    assert y.dtype == dtype
    check_direct(y, x, weight, bias, residual, True, dtype, "y")


@needs_kernel
def test_opcheck():
    for case in (CASES[0], CASES[1], CASES[3]):
        x, weight, bias, residual = make(case)
        u = reference.winograd_weight(weight)
        for args in ((x, weight, u, None, None, False), (x, weight, u, bias, residual, True),
                     (x.contiguous(memory_format=torch.channels_last), weight, u, bias, None,
                      True)):
            torch.library.opcheck(torch.ops.rtda_kernels.winograd_conv3x3, args)


@needs_kernel
@torch.no_grad()
def test_compile_fullgraph_matches_eager():
    module = WinogradConv2d.from_conv(nn.Conv2d(6, 10, 3, padding=1), relu=True).eval()
    x, residual = torch.randn(2, 6, 11, 13), torch.randn(2, 10, 11, 13)
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(x, residual), module(x, residual))


@torch.no_grad()
def test_module_stands_in_for_the_conv_and_keeps_its_state_dict():
    conv = nn.Conv2d(5, 7, 3, padding=1)
    module = WinogradConv2d.from_conv(conv, relu=True)
    assert set(module.state_dict()) == {"weight", "bias"}
    x = torch.randn(1, 5, 9, 10)
    check_direct(module(x), x, conv.weight, conv.bias, None, True, torch.float32, "y")
    # load_state_dict refreshes the Winograd form of the weight
    other = nn.Conv2d(5, 7, 3, padding=1)
    module.load_state_dict(other.state_dict())
    check_direct(module(x), x, other.weight, other.bias, None, True, torch.float32,
                 "y after load_state_dict")
    residual = torch.randn(1, 7, 9, 10)
    check_direct(module(x, residual), x, other.weight, other.bias, residual, True,
                 torch.float32, "y with residual")


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=0),
    nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 5, padding=2),
    nn.Conv2d(4, 4, 3, padding=2, dilation=2),
    nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
], ids=["stride2", "pad0", "groups", "k5", "dilated", "reflect"])
def test_module_refuses_other_convs(conv):
    assert not WinogradConv2d.supports(conv)
    with pytest.raises(ValueError, match="3x3, stride 1, padding 1"):
        WinogradConv2d.from_conv(conv)


def test_bad_input():
    x, weight, bias, residual = make(CASES[1])
    u = reference.winograd_weight(weight)
    op = rtda_kernels.winograd_conv3x3
    with pytest.raises(ValueError, match="x must be a 4-D tensor"):
        op(x[0], weight)
    with pytest.raises(ValueError, match=r"weight must be C_out x C_in x 3 x 3 with C_in = 17, got "
                                         r"\(8, 5, 3, 3\)$"):
        op(x, weight[:, :5])
    with pytest.raises(ValueError, match="the Winograd form goes to weight_winograd="):
        op(x, u)  # the old call, (x, weight_winograd)
    with pytest.raises(ValueError, match=r"weight_winograd must be 36 x C_in x C_out = \(36, 17, 8\)"):
        op(x, weight, weight_winograd=u[:, :, :4])
    with pytest.raises(ValueError, match=r"bias must have shape \(C_out,\)"):
        op(x, weight, bias[:3], weight_winograd=u)
    with pytest.raises(ValueError, match="residual must have shape N x C_out x H x W"):
        op(x, weight, bias, residual[:, :, 1:])
    with pytest.raises(TypeError, match="bias has dtype torch.float64"):
        op(x, weight, bias.double())
    with pytest.raises(TypeError, match="weight_winograd has dtype torch.float64"):
        op(x, weight, weight_winograd=u.double())
    with pytest.raises(TypeError, match="relu must be a bool"):
        op(x, weight, relu=1)
    with pytest.raises(RuntimeError, match="inference-only"):
        op(x.requires_grad_(), weight)
    with pytest.raises(ValueError, match="weight must be C_out x C_in x 3 x 3"):
        WinogradConv2d(torch.zeros(4, 4, 1, 1))


@needs_kernel
@torch.no_grad()
def test_cpu_backend_computes_float32_only():
    x, weight, _, _ = make(CASES[0], dtype=torch.float64)
    with rtda_kernels.use_backend("cpu"), pytest.raises(
            TypeError, match=r"backend does not support for winograd_conv3x3 \(supported: float32\)"):
        rtda_kernels.winograd_conv3x3(x, weight)
