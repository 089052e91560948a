"""dwsep_conv2d on every backend against the PyTorch reference: forward and all five gradients,
many shapes, dtypes and memory layouts; opcheck, gradcheck, torch.compile and saved memory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, event, find, given, settings
from hypothesis import strategies as st

import rtda_kernels

from . import dwsep_reference
from .helpers import assert_close, backend_params, device_of, examples

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
    """Output and all five gradients of one backend against the float64 reference, each within
    the table's bound of its scale (``dwsep_reference``: max |reference| or the products' size)."""
    device = device_of(backend)
    tensors, kwargs = make_inputs(case, dtype, device, bias, layout)
    with rtda_kernels.use_backend(backend):
        y, grads, grad_out = run(rtda_kernels.dwsep_conv2d, tensors, kwargs)
    assert y.dtype == dtype and y.device.type == device
    ref = dwsep_reference.expected(tensors, kwargs["stride"], kwargs["padding"],
                                   kwargs["negative_slope"], grad_out, y_actual=y)
    assert_close(y, ref.y, "dwsep_conv2d", dtype, "y", floor=ref.y_terms)
    for name, g, g_ref, terms, t in zip(dwsep_reference.NAMES, grads, ref.grads, ref.grad_terms,
                                        tensors):
        if t is None:
            assert g is None
            continue
        assert g.shape == t.shape and g.dtype == t.dtype, name
        assert_close(g, g_ref, "dwsep_conv2d grad", dtype, f"grad {name}", floor=terms)


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


# Random shapes, reaching the kernels' multi-tile paths: a CPU forward tile / backward band holds
# max(512, 64 Ki / C_in) output pixels (csrc/cpu/dwsep_conv2d_tiles.h, rows_per_tile), so C_in
# of 20..40 with sides up to 70 gives 2-4 tiles; the GEMMs block C_out by 4 rows and pixels by
# 16 columns (small_gemm.h); Triton blocks C_in by 32 and pixels by 256 on the CPU
# (rtda_kernels/triton/dwsep_conv2d.py). Strides up to 4, channels_last and sliced inputs,
# optional biases. Sizes are drawn small or large (a mix of ranges), so that most examples stay
# cheap while some cross the tile sizes.
def _sizes(small: int, large: int):
    return st.one_of(st.integers(1, small), st.integers(small + 1, large))


@st.composite
def dwsep_cases(draw, channels: int = 40, side: int = 70, min_c_in: int = 1):
    k = draw(st.integers(1, 7))
    c_in = draw(st.one_of(st.integers(min_c_in, 9), st.integers(10, channels)))
    case = (draw(st.integers(1, 3)), c_in, draw(_sizes(9, channels)), draw(_sizes(24, side)),
            draw(_sizes(24, side)), k, draw(st.integers(1, 4)),
            int(draw(st.floats(0, 0.999)) * k), draw(st.sampled_from([None, 0.0, 0.2, 1.5])))
    n, c_in, c_out, h, w, k, s, p, slope = case
    assume(h + 2 * p >= k and w + 2 * p >= k)  # an output of at least one pixel
    return case


def cpu_tiles(case) -> int:
    """Tiles (forward) / bands (backward) of one image on the CPU: rows_per_tile of
    csrc/cpu/dwsep_conv2d_tiles.h with its minimum of 1 row."""
    n, c_in, c_out, h, w, k, s, p, slope = case
    out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    rows = min(out_h, -(-max(512, (256 << 10) // (4 * c_in)) // out_w))
    return -(-out_h // rows)


def _events(case, layout: str) -> None:
    """What a draw reached (--hypothesis-show-statistics shows the shares)."""
    event("several CPU tiles" if cpu_tiles(case) > 1 else "one CPU tile")
    event("C_in > 32 (two Triton blocks)" if case[1] > 32 else "C_in <= 32")
    event(f"stride {'1' if case[6] == 1 else '2+'}")
    event(f"layout {layout}")


def test_the_strategy_reaches_several_tiles():
    """The draws can cross the CPU tile and the Triton channel block at once (a fifth of the
    property test's draws have several tiles: --hypothesis-show-statistics). Several tiles at
    stride 2+ need larger images than hypothesis can afford: test_many_tiles_and_bands_cpu."""
    found = find(dwsep_cases(), lambda c: cpu_tiles(c) > 1 and c[1] > 32,
                 settings=settings(max_examples=2000, database=None))
    assert cpu_tiles(found) > 1 and found[1] > 32


@settings(max_examples=examples(40), deadline=None)
@given(case=dwsep_cases(), layout=st.sampled_from(["contiguous", "channels_last", "sliced"]),
       bias=st.booleans())
def test_property_random_shapes_cpu(case, layout, bias):
    _events(case, layout)
    check_against_reference("cpu", case, torch.float32, bias=bias, layout=layout)


# The interpreter pays per program and op: few examples, but past one Triton block of C_in (32)
# and of pixels (256) where the draw allows. C_in >= 2: C_in = 1 is a known bug (below).
@settings(max_examples=examples(6), deadline=None)
@given(case=dwsep_cases(channels=40, side=40, min_c_in=2),
       layout=st.sampled_from(["contiguous", "sliced"]))
def test_property_random_shapes_triton(case, layout):
    _events(case, layout)
    if not rtda_kernels.available_backends()["triton"].available:
        pytest.skip(rtda_kernels.available_backends()["triton"].detail)
    check_against_reference("triton", case, torch.float32, layout=layout)


# Found by the hypothesis test above: with C_in = 1 the Triton backward returned grad_dw_weight and
# grad_dw_bias as two views of one buffer, which torch.library refuses (returns may not alias).
@pytest.mark.parametrize("backend", backend_params("triton"))
def test_single_input_channel_triton(backend):
    check_against_reference(backend, (1, 1, 2, 5, 6, 3, 1, 1, 0.2), torch.float32)


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
        (ops.dwsep_conv2d_triton, ops.dwsep_conv2d_backward_triton)
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
    ref = dwsep_reference.expected(tensors, kwargs["stride"], kwargs["padding"],
                                   kwargs["negative_slope"], None)
    assert_close(y, ref.y, "dwsep_conv2d", torch.float32, "y", floor=ref.y_terms)
