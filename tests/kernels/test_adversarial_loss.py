"""The fused adversarial losses against the reference (which materialises F.interpolate), on
every backend: values and gradients, every reduction, constant and tensor targets, odd resize
factors, dtypes, memory layouts, opcheck, torch.compile and the determinism of the CPU kernel."""

from __future__ import annotations

import pytest
import torch
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

import rtda_kernels
from rtda_kernels import reference
from tests.kernels import loss_reference
from tests.kernels.helpers import assert_close, backend_params, device_of, examples

BACKENDS = backend_params("cpu", "triton", "cuda")
DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    "triton": (torch.float32, torch.float16, torch.bfloat16),
}
# (logits shape, output size): odd factors, identity, down-sampling, single pixels.
SHAPES = [
    ((1, 1, 3, 4), (7, 5)),
    ((2, 1, 7, 9), (50, 61)),
    ((2, 1, 16, 32), (64, 128)),
    ((1, 2, 8, 8), (8, 8)),
    ((1, 1, 1, 1), (5, 3)),
    ((2, 1, 9, 7), (4, 3)),
    ((1, 1, 5, 6), (1, 1)),
    ((3, 2, 1, 6), (4, 13)),
]
# The paper's shapes (FCD maps to 512 x 1024, the Light&Thin map as it is): compiled kernels only.
LARGE_SHAPES = [((4, 1, 16, 32), (512, 1024)), ((4, 1, 64, 128), (64, 128))]


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, dtype, name: str,
                          floor: float = 0.0) -> None:
    """``helpers.assert_close`` with the loss's bounds: "loss ..." is the value, "grad ..." a
    gradient (the table's "adversarial_loss grad")."""
    op = "adversarial_loss grad" if name.startswith("grad") else "adversarial_loss"
    assert_close(actual, expected, op, dtype, name, floor=floor)


def make_logits(shape, dtype, device, *, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(device, dtype)


def make_target(kind, shape, size, dtype, device):
    """A constant label, or a tensor of soft labels shaped like the loss map."""
    if kind != "tensor":
        return kind
    generator = torch.Generator().manual_seed(1)
    return torch.rand((shape[0], shape[1], *size), generator=generator, dtype=torch.float64).to(
        device, dtype
    )


def loss_and_grad(fn, logits: torch.Tensor, grad_seed: int = 2):
    """fn(logits) and d(sum(fn * w))/dlogits for a random weight map w (ones for a scalar)."""
    leaf = logits.detach().requires_grad_()
    loss = fn(leaf)
    weight = torch.randn(loss.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss, leaf, weight.to(loss.device, loss.dtype))
    return loss, grad


def reference_loss_and_grad(logits, target, size, reduction):
    """The reference in float64 on the same (rounded) values, with the bilinear taps the op
    computes for the logits' dtype (``loss_reference``)."""
    if isinstance(target, torch.Tensor):
        target64 = target.double()
    else:  # the kernel sees the label in the logits' dtype: 1 - 0.99316 loses digits otherwise
        target64 = float(torch.tensor(target, dtype=logits.dtype))
    return loss_and_grad(
        lambda x: loss_reference.adversarial_loss(x, target64, size, reduction, logits.dtype),
        logits.double(),
    )


def _with_layout(logits: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as channels_last, or as a view into a wider (sliced) tensor."""
    if layout == "channels_last":
        return logits.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        wider = torch.zeros((*logits.shape[:3], logits.shape[3] + 2), dtype=logits.dtype,
                            device=logits.device)
        wider[..., 1:-1] = logits
        return wider[..., 1:-1]
    return logits


def check_against_reference(backend, shape, size, dtype, reduction, target_kind, scale=3.0,
                            layout="contiguous"):
    device = device_of(backend)
    logits = _with_layout(make_logits(shape, dtype, device, scale=scale), layout)
    target = make_target(target_kind, shape, size, dtype, device)
    with rtda_kernels.use_backend(backend):
        loss, grad = loss_and_grad(
            lambda x: rtda_kernels.adversarial_loss(x, target, output_size=size, reduction=reduction),
            logits,
        )
    expected_loss, expected_grad = reference_loss_and_grad(logits, target, size, reduction)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert_close_relative(loss, expected_loss, dtype, f"loss {shape}->{size} {reduction}")
    # Each pixel sends coef * (sigmoid(u) - y), rounded from terms up to coef in size: when
    # sigmoid(u) is close to y the difference cancels, and its error is relative to coef.
    coef = 1.0 / (shape[0] * shape[1] * size[0] * size[1]) if reduction == "mean" else 1.0
    assert_close_relative(grad, expected_grad, dtype, f"grad {shape}->{size} {reduction}",
                          floor=coef)


@pytest.mark.parametrize("shape,size", [SHAPES[1], SHAPES[5], ((1, 1, 4, 700), (3, 300))],
                         ids=lambda v: "x".join(map(str, v)))
def test_the_tests_float64_reference_is_rtda_kernels_reference(shape, size):
    """``loss_reference`` is ``rtda_kernels.reference`` computed in float64: the same in float64
    input, and for float32 input the same taps (only the arithmetic is wider), so it is within
    float32 rounding of the float32 reference while the float64 taps are not (at 700 wide)."""
    logits = make_logits(shape, torch.float64, "cpu")
    target = make_target("tensor", shape, size, torch.float64, "cpu")
    for reduction in ("none", "mean"):
        ours = loss_reference.adversarial_loss(logits, target, size, reduction, torch.float64)
        theirs = reference.adversarial_loss(logits, target, output_size=size, reduction=reduction)
        torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=0)
    single, target32 = logits.float(), target.float()
    ours = loss_reference.adversarial_loss(single.double(), target32.double(), size, "none",
                                           torch.float32)
    theirs = reference.adversarial_loss(single, target32, output_size=size, reduction="none")
    assert_close(theirs, ours, "adversarial_loss", torch.float32, "float32 reference")
    if shape[3] == 700:  # why: float64 taps are an ulp of a coordinate near 700 away
        wide = reference.adversarial_loss(single.double(), target32.double(), output_size=size,
                                          reduction="none")
        with pytest.raises(AssertionError, match="max error"):
            assert_close(theirs, wide, "adversarial_loss", torch.float32, "float64 taps")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,size", SHAPES, ids=lambda v: "x".join(map(str, v)))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target_kind", [0.0, 1.0, 0.3, "tensor"], ids=str)
def test_matches_reference_float32(backend, shape, size, reduction, target_kind):
    check_against_reference(backend, shape, size, torch.float32, reduction, target_kind)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,size", [SHAPES[1], SHAPES[3], SHAPES[5]], ids=lambda v: "x".join(map(str, v)))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_matches_reference_other_dtypes(backend, dtype, shape, size, reduction):
    if dtype not in DTYPES[backend]:
        pytest.skip(f"{backend} does not support {dtype}")
    check_against_reference(backend, shape, size, dtype, reduction, 1.0)
    check_against_reference(backend, shape, size, dtype, "sum", "tensor")


@pytest.mark.parametrize("backend", backend_params("cpu", "cuda"))
@pytest.mark.parametrize("shape,size", LARGE_SHAPES, ids=lambda v: "x".join(map(str, v)))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_matches_reference_paper_shapes(backend, shape, size, reduction):
    check_against_reference(backend, shape, size, torch.float32, reduction, 1.0)
    check_against_reference(backend, shape, size, torch.float32, reduction, "tensor")


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits_stay_finite(backend):
    """|u| up to ~100: the stable form never overflows, and confident pixels lose ~0."""
    check_against_reference(backend, (2, 1, 7, 9), (20, 23), torch.float32, "mean", 1.0, scale=40.0)
    check_against_reference(backend, (2, 1, 7, 9), (20, 23), torch.float32, "none", 0.0, scale=40.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    """channels_last logits, a sliced (strided) logits view and a transposed target."""
    device = device_of(backend)
    base = make_logits((2, 3, 9, 14), torch.float32, device)
    cases = [
        base.to(memory_format=torch.channels_last),
        base[:, :, :, ::2],
        base.transpose(2, 3),
    ]
    for logits in cases:
        size = (2 * logits.shape[2] + 1, 3 * logits.shape[3])
        target = torch.rand(logits.shape[0], logits.shape[1], size[1], size[0], device=device)
        target = target.transpose(2, 3)
        assert not logits.is_contiguous() and not target.is_contiguous()
        for tgt in (1.0, target):
            with rtda_kernels.use_backend(backend):
                loss, grad = loss_and_grad(
                    lambda x: rtda_kernels.adversarial_loss(x, tgt, output_size=size), logits
                )
            expected = reference_loss_and_grad(logits, tgt, size, "mean")
            assert_close_relative(loss, expected[0], torch.float32, "loss")
            assert_close_relative(grad, expected[1], torch.float32, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "source_shape,target_shape,size",
    [
        ((2, 1, 7, 9), (2, 1, 7, 9), (50, 61)),
        ((4, 1, 16, 32), (3, 1, 16, 32), (64, 128)),  # different batch sizes
        ((2, 1, 8, 8), (1, 1, 4, 5), (8, 8)),  # one map resized, the other not
        ((1, 1, 6, 6), (1, 1, 6, 6), None),
    ],
    ids=["odd", "batches", "mixed", "no-resize"],
)
@pytest.mark.parametrize("labels", [(0.0, 1.0), (1.0, 0.0), (0.2, 0.9)], ids=str)
def test_discriminator_loss(backend, source_shape, target_shape, size, labels):
    device = device_of(backend)
    d_source = make_logits(source_shape, torch.float32, device, seed=3).requires_grad_()
    d_target = make_logits(target_shape, torch.float32, device, seed=4).requires_grad_()
    kwargs = dict(source_label=labels[0], target_label=labels[1], output_size=size)
    with rtda_kernels.use_backend(backend):
        loss = rtda_kernels.discriminator_loss(d_source, d_target, **kwargs)
    grads = torch.autograd.grad(loss * 3.0, (d_source, d_target))
    ref_source = d_source.detach().double().requires_grad_()
    ref_target = d_target.detach().double().requires_grad_()
    expected = loss_reference.discriminator_loss(ref_source, ref_target, *labels, size,
                                                 torch.float32)
    expected_grads = torch.autograd.grad(expected * 3.0, (ref_source, ref_target))
    assert loss.shape == () and loss.dtype == torch.float32
    assert_close_relative(loss, expected, torch.float32, "loss")
    for grad, expected_grad, name in zip(grads, expected_grads, ("d_source", "d_target")):
        assert_close_relative(grad, expected_grad, torch.float32, f"grad {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_discriminator_loss_is_the_mean_of_two_adversarial_losses(backend):
    device = device_of(backend)
    d_source = make_logits((2, 1, 5, 7), torch.float32, device, seed=5)
    d_target = make_logits((2, 1, 5, 7), torch.float32, device, seed=6)
    with rtda_kernels.use_backend(backend):
        fused = rtda_kernels.discriminator_loss(d_source, d_target, output_size=(33, 47))
        parts = [
            rtda_kernels.adversarial_loss(d, label, output_size=(33, 47))
            for d, label in ((d_source, 0.0), (d_target, 1.0))
        ]
    torch.testing.assert_close(fused, 0.5 * (parts[0] + parts[1]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_and_detached_inputs(backend):
    """Without autograd the loss is the same (the gradient is not computed)."""
    device = device_of(backend)
    logits = make_logits((2, 1, 7, 9), torch.float32, device)
    with rtda_kernels.use_backend(backend):
        with torch.no_grad():
            without = rtda_kernels.adversarial_loss(logits.requires_grad_(), 1.0, output_size=(30, 31))
        detached = rtda_kernels.adversarial_loss(logits.detach(), 1.0, output_size=(30, 31))
        with_grad = rtda_kernels.adversarial_loss(logits, 1.0, output_size=(30, 31))
    assert not without.requires_grad and not detached.requires_grad and with_grad.requires_grad
    assert torch.equal(without, with_grad.detach()) and torch.equal(detached, without)


def test_cpu_is_deterministic_across_runs_and_thread_counts():
    """Bitwise-identical losses and gradients for 1 and 2 threads and from run to run."""
    logits = make_logits((4, 1, 16, 32), torch.float32, "cpu")
    d_target = make_logits((4, 1, 16, 32), torch.float32, "cpu", seed=7)
    small = make_logits((4, 1, 64, 128), torch.float32, "cpu", seed=8)

    def run():
        results = []
        for reduction in ("mean", "sum"):
            results += loss_and_grad(
                lambda x: rtda_kernels.adversarial_loss(x, 1.0, output_size=(512, 1024), reduction=reduction),
                logits,
            )
        results += loss_and_grad(lambda x: rtda_kernels.adversarial_loss(x, 0.0), small)
        results += loss_and_grad(
            lambda x: rtda_kernels.adversarial_loss(x, 0.0, output_size=(512, 1024), reduction="none"),
            logits,
        )
        source = logits.detach().requires_grad_()
        target = d_target.detach().requires_grad_()
        loss = rtda_kernels.discriminator_loss(source, target, output_size=(512, 1024))
        results += [loss, *torch.autograd.grad(loss, (source, target))]
        return results

    threads = torch.get_num_threads()
    try:
        with rtda_kernels.use_backend("cpu"):
            torch.set_num_threads(1)
            single = run()
            torch.set_num_threads(2)
            double = [run(), run()]
    finally:
        torch.set_num_threads(threads)
    for results in double:
        for a, b in zip(single, results):
            assert torch.equal(a, b)


def test_saves_only_the_low_resolution_gradient():
    """The autograd graph keeps one tensor of the logits' size: no full-resolution map."""
    logits = make_logits((4, 1, 16, 32), torch.float32, "cpu").requires_grad_()
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with rtda_kernels.use_backend("cpu"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = rtda_kernels.adversarial_loss(logits, 1.0, output_size=(512, 1024))
    assert saved == [logits.numel()]
    loss.backward()


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_cpu(reduction):
    logits = make_logits((2, 1, 3, 4), torch.float64, "cpu").requires_grad_()
    target = torch.rand(2, 1, 7, 9, dtype=torch.float64)
    with rtda_kernels.use_backend("cpu"):
        assert torch.autograd.gradcheck(
            lambda x: rtda_kernels.adversarial_loss(x, target, output_size=(7, 9), reduction=reduction),
            (logits,),
        )
        d_target = make_logits((1, 1, 2, 5), torch.float64, "cpu", seed=9).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda s, t: rtda_kernels.discriminator_loss(s, t, output_size=(6, 7)), (logits, d_target)
        )


def _ops(backend: str):
    suffix = "_triton" if backend == "triton" else ""
    ops = torch.ops.rtda_kernels
    return (
        getattr(ops, f"adversarial_loss{suffix}").default,
        getattr(ops, f"adversarial_loss_backward{suffix}").default,
        getattr(ops, f"discriminator_loss{suffix}").default,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    device = device_of(backend)
    loss_op, backward_op, discriminator_op = _ops(backend)
    logits = make_logits((2, 1, 3, 5), torch.float32, device).requires_grad_()
    target = torch.rand(2, 1, 7, 9, device=device)
    for args in (
        (logits, None, 1.0, [7, 9], 1, True),
        (logits, target, 0.0, [7, 9], 2, True),
        (logits, None, 0.0, [7, 9], 1, False),
        (logits, target, 0.0, [7, 9], 0, False),
        (logits, None, 1.0, [3, 5], 1, True),
    ):
        torch.library.opcheck(loss_op, args)
    grad_map = torch.randn(2, 1, 7, 9, device=device)
    torch.library.opcheck(backward_op, (grad_map, logits.detach(), target, 0.0, [7, 9]))
    torch.library.opcheck(backward_op, (grad_map, logits.detach(), None, 1.0, [7, 9]))
    d_target = make_logits((1, 1, 4, 4), torch.float32, device, seed=3).requires_grad_()
    for compute_grad in (True, False):
        torch.library.opcheck(discriminator_op, (logits, d_target, 0.0, 1.0, [8, 8], compute_grad))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile(backend, reduction):
    """fullgraph torch.compile of a function using both losses, forward and backward."""
    device = device_of(backend)
    # Inductor needs a C++ compiler for CPU code; the interpreted Triton path runs on CPU tensors
    # but cannot be code-generated for, so it is compiled with aot_eager.
    compiler = "aot_eager" if backend == "triton" and device == "cpu" else "inductor"

    def step(d_source, d_target):
        adversarial = rtda_kernels.adversarial_loss(d_target, 0.0, output_size=(20, 30), reduction=reduction)
        discriminator = rtda_kernels.discriminator_loss(d_source, d_target, output_size=(20, 30))
        return adversarial.sum() * 0.01 + discriminator

    d_source = make_logits((2, 1, 5, 7), torch.float32, device, seed=1).requires_grad_()
    d_target = make_logits((2, 1, 5, 7), torch.float32, device, seed=2).requires_grad_()
    torch._dynamo.reset()
    with rtda_kernels.use_backend(backend):
        compiled = torch.compile(step, backend=compiler, fullgraph=True)
        value = compiled(d_source, d_target)
        grads = torch.autograd.grad(value, (d_source, d_target))
        eager_value = step(d_source, d_target)
        eager_grads = torch.autograd.grad(eager_value, (d_source, d_target))
    torch.testing.assert_close(value, eager_value, rtol=1e-6, atol=0)
    for grad, eager_grad in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager_grad, rtol=1e-6, atol=1e-12)


# Random shapes past the CPU kernel's work units (csrc/cpu/adversarial_loss_bands.h): parallel
# chunks of at least 16384 output pixels (loss maps up to 160 x 160 = 25600), flat runs of 4096
# values without resize (the map's own size is drawn a third of the time, logits up to
# 3 x 2 x 70 x 70), 8-lane vectors with remainders; up- and down-sampling; a constant label or a
# target tensor; channels_last and sliced logits. Sizes are drawn small or large so that most
# examples stay cheap.
def _sizes(small: int, large: int):
    return st.one_of(st.integers(1, small), st.integers(small + 1, large))


@settings(max_examples=examples(40), deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 2),
    h=_sizes(12, 70),
    w=_sizes(12, 70),
    out_h=_sizes(40, 160),
    out_w=_sizes(40, 160),
    same_size=st.integers(0, 2).map(lambda v: v == 0),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    label=st.one_of(st.floats(0.0, 1.0), st.just("tensor")),
    layout=st.sampled_from(["contiguous", "channels_last", "sliced"]),
)
# Once found by hypothesis: a label close to 1 with the reference's label not rounded to float32.
@example(n=1, c=1, h=1, w=1, out_h=1, out_w=1, same_size=False, reduction="mean",
         label=0.9931629486914484, layout="contiguous")
# And sigmoid(u) within 1e-3 of the label: the gradient cancels (error relative to 1/M, not to it).
@example(n=1, c=1, h=1, w=7, out_h=1, out_w=1, same_size=False, reduction="mean", label=0.84375,
         layout="contiguous")
def test_random_shapes_cpu(n, c, h, w, out_h, out_w, same_size, reduction, label, layout):
    size = (h, w) if same_size else (out_h, out_w)
    event("several parallel chunks" if n * c * size[0] * size[1] > 16384 else "one chunk")
    event("no resize, several flat runs" if size == (h, w) and n * c * h * w > 4096
          else "resized or one flat run")
    event(f"layout {layout}")
    check_against_reference("cpu", (n, c, h, w), size, torch.float32, reduction, label,
                            layout=layout)
