"""dwsep_conv2d's public surface: bad input on every backend, the drop-in module and
fuse_dwsep (backend selection: test_backends.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rtda_kernels
from rtda_kernels.nn import DepthwiseSeparableConv2d, fuse_dwsep

from .helpers import backend_params, device_of


def good_args(device="cpu", dtype=torch.float32):
    x = torch.randn(2, 3, 9, 10, device=device, dtype=dtype)
    return dict(
        x=x,
        dw_weight=torch.randn(3, 1, 3, 3, device=device, dtype=dtype),
        dw_bias=torch.randn(3, device=device, dtype=dtype),
        pw_weight=torch.randn(4, 3, 1, 1, device=device, dtype=dtype),
        pw_bias=torch.randn(4, device=device, dtype=dtype),
        stride=1, padding=1, negative_slope=0.2,
    )


def call(args):
    args = dict(args)
    tensors = [args.pop(k) for k in ("x", "dw_weight", "dw_bias", "pw_weight", "pw_bias")]
    return rtda_kernels.dwsep_conv2d(*tensors, **args)


# (changes to the good arguments, exception, words the message must contain)
BAD_INPUTS = {
    "x rank 3": (lambda a: {"x": a["x"][0]}, ValueError, ["x", "4-D"]),
    "x not a tensor": (lambda a: {"x": a["x"].tolist()}, TypeError, ["x", "torch.Tensor"]),
    "x integer": (lambda a: {"x": a["x"].long()}, TypeError, ["x", "floating"]),
    "empty batch": (lambda a: {"x": a["x"][:0]}, ValueError, ["x", ">= 1"]),
    "channel mismatch": (lambda a: {"x": torch.randn(2, 5, 9, 10)}, ValueError, ["dw_weight", "C_in x 1 x k x k"]),
    "dw_weight not square": (lambda a: {"dw_weight": torch.randn(3, 1, 3, 2)}, ValueError, ["dw_weight"]),
    "pw_weight 2-D": (lambda a: {"pw_weight": torch.randn(4, 3)}, ValueError, ["pw_weight", "4-D"]),
    "pw_weight wrong C_in": (lambda a: {"pw_weight": torch.randn(4, 2, 1, 1)}, ValueError, ["pw_weight", "C_out x C_in x 1 x 1"]),
    "dw_bias size": (lambda a: {"dw_bias": torch.randn(4)}, ValueError, ["dw_bias", "(C_in,)"]),
    "pw_bias size": (lambda a: {"pw_bias": torch.randn(3)}, ValueError, ["pw_bias", "(C_out,)"]),
    "mixed dtypes": (lambda a: {"pw_weight": a["pw_weight"].double()}, TypeError, ["pw_weight", "mixed dtypes"]),
    "stride 0": (lambda a: {"stride": 0}, ValueError, ["stride", ">= 1"]),
    "stride float": (lambda a: {"stride": 1.0}, TypeError, ["stride", "int"]),
    "negative padding": (lambda a: {"padding": -1}, ValueError, ["padding", ">= 0"]),
    "padding >= kernel": (lambda a: {"padding": 3}, ValueError, ["padding", "kernel size"]),
    "empty output": (lambda a: {"x": torch.randn(2, 3, 1, 10), "padding": 0}, ValueError, ["output would be empty"]),
    "negative slope": (lambda a: {"negative_slope": -0.1}, ValueError, ["negative_slope", ">= 0"]),
    "slope not a number": (lambda a: {"negative_slope": "0.2"}, TypeError, ["negative_slope"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
@pytest.mark.parametrize("backend", backend_params("reference", "cpu", "triton", "cuda"))
def test_bad_input_is_a_clear_error(backend, case):
    change, error, words = BAD_INPUTS[case]
    args = good_args(device_of(backend))
    args.update({k: v.to(args["x"].device) if isinstance(v, torch.Tensor) else v
                 for k, v in change(args).items()})
    with rtda_kernels.use_backend(backend), pytest.raises(error) as info:
        call(args)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_tensors_on_different_devices_are_rejected():
    args = good_args()
    args["pw_bias"] = args["pw_bias"].to("meta")
    with pytest.raises(ValueError, match="pw_bias is on meta"):
        call(args)


def test_triton_backend_rejects_float64():
    if not rtda_kernels.available_backends()["triton"].available:
        pytest.skip("triton is not available")
    with rtda_kernels.use_backend("triton"), pytest.raises(TypeError, match="'triton' backend"):
        call(good_args(dtype=torch.float64))


@pytest.mark.parametrize("bias", [True, False])
def test_module_state_dict_is_the_same_fused_or_not(bias):
    fused = DepthwiseSeparableConv2d(5, 7, 4, stride=2, padding=1, bias=bias, negative_slope=0.2)
    plain = DepthwiseSeparableConv2d(5, 7, 4, stride=2, padding=1, bias=bias, negative_slope=0.2, fused=False)
    keys = {"depthwise.weight", "pointwise.weight"} | ({"depthwise.bias", "pointwise.bias"} if bias else set())
    assert set(fused.state_dict()) == set(plain.state_dict()) == keys
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 5, 13, 11)
    torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-5)
    assert "fused=True" in repr(fused)


def test_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match="kernel_size"):
        DepthwiseSeparableConv2d(3, 4, (3, 5))
    with pytest.raises(ValueError, match="negative_slope"):
        DepthwiseSeparableConv2d(3, 4, 3, negative_slope=-1.0)


def _plain_model():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Conv2d(6, 6, 4, stride=2, padding=1, groups=6),  # depthwise
        nn.Conv2d(6, 8, 1),  # pointwise
        nn.LeakyReLU(0.2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.Conv2d(8, 2, 1),
        nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Conv2d(2, 3, 1), nn.ReLU()),
        DepthwiseSeparableConv2d(3, 1, 3, padding=1, fused=False),
        nn.Conv2d(1, 1, 3, groups=1, dilation=2),  # not depthwise-separable: left alone
    )


def test_fuse_dwsep_swaps_every_pattern_and_keeps_outputs():
    model = _plain_model()
    x = torch.randn(2, 3, 20, 18)
    expected = model(x)
    params_before = {id(p) for p in model.parameters()}
    fuse_dwsep(model)
    fused = [m for m in model.modules() if isinstance(m, DepthwiseSeparableConv2d)]
    assert len(fused) == 4 and all(m.fused for m in fused)
    assert [m.negative_slope for m in fused] == [0.2, None, 0.0, None]
    assert isinstance(model[2], nn.Identity) and isinstance(model[3], nn.Identity)
    assert isinstance(model[8], nn.Conv2d)  # later indices did not move
    assert {id(p) for p in model.parameters()} == params_before  # same parameter objects
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    expected.sum().backward()  # the fused model trains too
    model(x).sum().backward()


def test_flop_counter_counts_the_fused_op():
    """torch.utils.flop_counter sees the op: forward = the two convs' FLOPs as flop_counter counts
    them for nn.Conv2d; backward = twice that plus the recomputed depthwise output."""
    from torch.utils.flop_counter import FlopCounterMode

    fused = DepthwiseSeparableConv2d(5, 7, 3, stride=2, padding=1, negative_slope=0.1)
    plain = DepthwiseSeparableConv2d(5, 7, 3, stride=2, padding=1, negative_slope=0.1, fused=False)
    x = torch.randn(2, 5, 13, 11, requires_grad=True)
    counts = []
    for model in (fused, plain):
        with FlopCounterMode(display=False) as forward:
            y = model(x)
        with FlopCounterMode(display=False) as backward:
            y.sum().backward()
        counts.append((forward.get_total_flops(), backward.get_total_flops()))
    (fused_fwd, fused_bwd), (plain_fwd, _) = counts
    out_pixels = 2 * 7 * 6  # N x H_out x W_out
    assert fused_fwd == plain_fwd == 2 * out_pixels * 5 * (3 * 3 + 7)
    assert fused_bwd == 2 * fused_fwd + 2 * out_pixels * 5 * 3 * 3
