"""dwsep_conv2d on every backend against the PyTorch reference: forward and all five gradients,
many shapes, dtypes and memory layouts; opcheck, gradcheck, torch.compile and saved memory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rtda_kernels
from rtda_kernels import reference

from .helpers import assert_close_scaled, backend_params, device_of

# (N, C_in, C_out, H, W, k, stride, padding, negative_slope)
CASES = [
    (2, 3, 5, 17, 19, 3, 1, 1, 0.2),  # odd sizes, stride 1
    (1, 19, 64, 32, 64, 4, 2, 1, 0.2),  # FCD-Light first layer, batch 1
    (2, 4, 1, 9, 7, 4, 2, 1, None),  # last layer: C_out = 1, no activation
    (1, 5, 7, 11, 13, 5, 3, 2, 0.1),  # stride 3
    (3, 2, 3, 6, 5, 1, 1, 0, None),  # 1x1 depthwise
    (1, 3, 2, 15, 16, 7, 4, 6, 0.0),  # k7 s4, ReLU (slope 0)
    (2, 6, 6, 13, 11, 2, 2, 0, 0.2),  # even kernel, no padding, C_in == C_out
    (1, 7, 4, 23, 29, 3, 2, 1, 0.2),  # prime sizes, stride 2
    (2, 3, 4, 4, 4, 4, 1, 3, 0.2),  # padding = k - 1 (output larger than input)
    (1, 2, 3, 1, 1, 3, 1, 1, 0.2),  # 1x1 image
]
CASE_IDS = ["x".join(map(str, c[:5])) + f"-k{c[5]}s{c[6]}p{c[7]}-{c[8]}" for c in CASES]
# The interpreter is slow: Triton runs a representative subset.
TRITON_CASES = [CASES[i] for i in (0, 1, 2, 3, 5)]


def make_inputs(case, dtype=torch.float32, device="cpu", bias=True, layout="contiguous"):
    n, c_in, c_out, h, w, k, s, p, slope = case
    x = torch.randn(n, c_in, h, w + (2 if layout == "sliced" else 0), dtype=torch.float64)
    if layout == "sliced":
        x = x[..., 1:-1]
    params = [
        torch.randn(c_in, 1, k, k, dtype=torch.float64) / k,
        torch.randn(c_in, dtype=torch.float64) if bias else None,
        torch.randn(c_out, c_in, 1, 1, dtype=torch.float64) / c_in**0.5,
        torch.randn(c_out, dtype=torch.float64) if bias else None,
    ]
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    tensors = [x] + [None if t is None else t.to(device=device, dtype=dtype) for t in params]
    for t in tensors:
        if t is not None:
            t.requires_grad_(True)
    return tensors, dict(stride=s, padding=p, negative_slope=slope)


def run(fn, tensors, kwargs, grad_out=None):
    """Output and the gradients of (y * grad_out).sum() for every tensor input (None if absent)."""
    y = fn(*tensors, **kwargs)
    if grad_out is None:
        grad_out = torch.randn(y.shape, dtype=torch.float64).to(y)
    wanted = [t for t in tensors if t is not None]
    grads = iter(torch.autograd.grad((y * grad_out).sum(), wanted))
    return y, [None if t is None else next(grads) for t in tensors], grad_out


def check_against_reference(backend, case, dtype, bias=True, layout="contiguous"):
    device = device_of(backend)
    tensors, kwargs = make_inputs(case, dtype, device, bias, layout)
    with rtda_kernels.use_backend(backend):
        y, grads, grad_out = run(rtda_kernels.dwsep_conv2d, tensors, kwargs)
    assert y.dtype == dtype and y.device.type == device
    # The op defines dL/dz from the sign of its own output y. Near z = 0 a low-precision y can
    # round to the other sign than the float64 z, so the reference takes its mask from y too.
    ref_inputs = [None if t is None else t.detach().double().requires_grad_(True) for t in tensors]
    slope = kwargs["negative_slope"]
    linear = dict(kwargs, negative_slope=None)
    grad_z = grad_out.double()
    if slope is not None:
        grad_z = torch.where(y.detach().double() > 0, grad_z, grad_z * slope)
    z_ref, grads_ref, _ = run(reference.dwsep_conv2d, ref_inputs, linear, grad_z)
    y_ref = z_ref if slope is None else torch.nn.functional.leaky_relu(z_ref, slope)
    assert_close_scaled(y, y_ref, dtype, "y")
    names = ["x", "dw_weight", "dw_bias", "pw_weight", "pw_bias"]
    for name, g, g_ref, t in zip(names, grads, grads_ref, tensors):
        if t is None:
            assert g is None
            continue
        assert g.shape == t.shape and g.dtype == t.dtype, name
        assert_close_scaled(g, g_ref, dtype, f"grad {name}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", backend_params("cpu", "cuda"))
def test_matches_reference_float32(backend, case):
    check_against_reference(backend, case, torch.float32)


@pytest.mark.parametrize("case", TRITON_CASES, ids=[CASE_IDS[CASES.index(c)] for c in TRITON_CASES])
@pytest.mark.parametrize("backend", backend_params("triton"))
def test_triton_matches_reference_float32(backend, case):
    check_against_reference(backend, case, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES[:4], ids=CASE_IDS[:4])
@pytest.mark.parametrize("backend", backend_params("cpu", "cuda", "triton"))
def test_matches_reference_other_dtypes(backend, case, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernels compute float16/bfloat16/float32")
    check_against_reference(backend, case, dtype)


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
@pytest.mark.parametrize("backend", backend_params("cpu", "cuda", "triton"))
def test_any_memory_layout(backend, layout):
    check_against_reference(backend, CASES[0], torch.float32, layout=layout)
    check_against_reference(backend, CASES[2], torch.float32, layout=layout)


@pytest.mark.parametrize("backend", backend_params("cpu", "cuda", "triton"))
def test_without_biases(backend):
    check_against_reference(backend, CASES[1], torch.float32, bias=False)


# Many channels: the CPU kernels split these images into several tiles (forward) and bands of
# output rows with halo rows (backward), 512 output pixels each at 128 channels.
MANY_BANDS = [
    (1, 128, 4, 24, 100, 3, 1, 1, 0.2),
    (2, 128, 5, 75, 60, 4, 2, 1, 0.2),
    (1, 128, 3, 40, 70, 7, 1, 6, None),
    (1, 128, 2, 80, 150, 5, 3, 2, 0.1),
    (1, 128, 2, 81, 60, 2, 2, 0, 0.0),
]


@pytest.mark.parametrize("case", MANY_BANDS, ids=lambda c: "x".join(map(str, c[:5])) + f"-k{c[5]}s{c[6]}p{c[7]}")
def test_many_tiles_and_bands_cpu(case):
    check_against_reference("cpu", case, torch.float32)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3), c_in=st.integers(1, 9), c_out=st.integers(1, 9),
    h=st.integers(1, 24), w=st.integers(1, 24), k=st.integers(1, 7), s=st.integers(1, 4),
    p_frac=st.floats(0, 0.999), slope=st.sampled_from([None, 0.0, 0.2, 1.5]),
)
def test_property_random_shapes_cpu(n, c_in, c_out, h, w, k, s, p_frac, slope):
    p = int(p_frac * k)
    if h + 2 * p < k or w + 2 * p < k:
        return
    check_against_reference("cpu", (n, c_in, c_out, h, w, k, s, p, slope), torch.float32)


def test_gradcheck_float64_cpu():
    for case in (CASES[0], CASES[2], CASES[3]):
        small = (1, 2, 3, 7, 6) + case[5:]
        tensors, kwargs = make_inputs(small, torch.float64)
        with rtda_kernels.use_backend("cpu"):
            assert torch.autograd.gradcheck(
                lambda *t: rtda_kernels.dwsep_conv2d(*t, **kwargs), tensors, eps=1e-6, atol=1e-7
            )


def _op_samples(device, dtype):
    for case in (CASES[0], CASES[2]):
        for bias in (True, False):
            tensors, kw = make_inputs(case, dtype, device, bias)
            yield tensors + [kw["stride"], kw["padding"], kw["negative_slope"]]


@pytest.mark.parametrize("backend", backend_params("cpu", "cuda", "triton"))
def test_opcheck(backend):
    device = device_of(backend)
    ops = torch.ops.rtda_kernels
    forward, backward = (
        (ops.dwsep_conv2d_triton, ops.dwsep_conv2d_triton_backward)
        if backend == "triton"
        else (ops.dwsep_conv2d, ops.dwsep_conv2d_backward)
    )
    for args in _op_samples(device, torch.float32):
        torch.library.opcheck(forward, args)
        y = forward(*args).detach()
        x, dw, dwb, pw, _pwb, s, p, slope = args
        back_args = [torch.randn_like(y), x.detach(), y, dw.detach(), None if dwb is None else dwb.detach(),
                     pw.detach(), s, p, slope]
        torch.library.opcheck(backward, back_args)


def test_forward_saves_only_x_y_and_weights():
    tensors, kwargs = make_inputs(CASES[1])
    x, dw, dwb, pw, pwb = tensors
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with rtda_kernels.use_backend("cpu"):
            y = rtda_kernels.dwsep_conv2d(*tensors, **kwargs)
    saved_bytes = sum(t.numel() * t.element_size() for t in saved)
    expected = sum(t.numel() * t.element_size() for t in (x, y, dw, dwb, pw))
    assert saved_bytes == expected, "forward must save exactly x, y, dw_weight, dw_bias, pw_weight"
    depthwise_bytes = x.shape[0] * x.shape[1] * y.shape[2] * y.shape[3] * 4
    assert not any(t.numel() * 4 == depthwise_bytes and t.shape[1] == x.shape[1] and t.dim() == 4
                   and t.shape[2:] == y.shape[2:] for t in saved)


@pytest.mark.parametrize("backend", backend_params("cpu", "triton"))
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        rtda_kernels.nn.DepthwiseSeparableConv2d(3, 8, 4, stride=2, padding=1, negative_slope=0.2),
        rtda_kernels.nn.DepthwiseSeparableConv2d(8, 1, 4, stride=2, padding=1),
    )
    x = torch.randn(2, 3, 16, 20, requires_grad=True)
    with rtda_kernels.use_backend(backend):
        expected = model(x)
        (gx_expected,) = torch.autograd.grad(expected.sum(), x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if backend == "triton" else "inductor")
        actual = compiled(x)
        (gx,) = torch.autograd.grad(actual.sum(), x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_expected, atol=1e-5, rtol=1e-5)


def test_large_output_cpu():
    """Outputs of 8 MB and more take the streaming-store path; an odd width misaligns the rows."""
    case = (1, 3, 9, 512, 509, 3, 1, 1, 0.2)  # y: 9 x 512 x 509 floats = 9.4 MB
    tensors, kwargs = make_inputs(case)
    with torch.no_grad(), rtda_kernels.use_backend("cpu"):
        y = rtda_kernels.dwsep_conv2d(*tensors, **kwargs)
    assert y.nbytes >= 8 << 20
    expected = reference.dwsep_conv2d(*[t.detach().double() for t in tensors], **kwargs)
    assert_close_scaled(y, expected, torch.float32, "y")
