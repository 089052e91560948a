"""The fused self-training loss against the float64 reference (which materialises both resized
maps), on every backend: loss, per-image weights and the student's gradient, with and without
labels (pseudo-labels, class ids, ignored pixels), odd resize factors, every dtype, memory
layouts, opcheck, gradcheck, torch.compile, hypothesis, non-finite values, and the determinism of
the CPU kernel."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
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
# (N, C, h, w, H, W): the model's 1/8 map upsampled, odd factors, identity, downsampling, 1 x 1,
# one class.
SHAPES = [
    (2, 5, 4, 8, 32, 64),
    (1, 3, 3, 4, 7, 5),
    (2, 4, 5, 6, 5, 6),
    (1, 2, 1, 1, 5, 3),
    (2, 3, 9, 7, 4, 3),
    (3, 1, 2, 3, 9, 10),
    (1, 19, 4, 6, 29, 41),
]
THRESHOLD = 0.6  # low enough that random teachers have confident pixels, and unconfident ones


def make(shape, dtype, device, *, seed=0, labels="mixed"):
    """(student, teacher, labels): logits of scale 3 and a label map of the given kind."""
    n, c, h, w, big_h, big_w = shape
    g = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)).to(device, dtype)
    teacher = (3 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)).to(device, dtype)
    if labels == "none":
        return student, teacher, None
    given = torch.randint(0, c, (n, big_h, big_w), generator=g)
    draw = torch.rand(n, big_h, big_w, generator=g)
    given[draw < 0.5] = reference.PSEUDO_LABEL
    given[(draw >= 0.5) & (draw < 0.6)] = reference.IGNORE_LABEL
    if labels == "ignored":
        given[:] = reference.IGNORE_LABEL
    return student, teacher, given.to(device)


def run(backend, student, teacher, labels, size, threshold=THRESHOLD):
    """(loss, weight, d loss / d student) through rtda_kernels on ``backend``."""
    leaf = student.detach().requires_grad_()
    with rtda_kernels.use_backend(backend):
        loss, weight = rtda_kernels.pseudo_label_loss(leaf, teacher, labels, threshold=threshold,
                                                      output_size=size)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss, weight, grad


def expected(student, teacher, labels, size, threshold=THRESHOLD):
    """(loss, weight, grad, ambiguous pixels) in float64 with the op's taps."""
    leaf = student.detach().double().requires_grad_()
    loss, weight, ambiguous = loss_reference.pseudo_label_loss(
        leaf, teacher.double(), labels, threshold, size, student.dtype)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss, weight, grad, ambiguous


def check(backend, shape, dtype, labels="mixed", *, seed=0, layout="contiguous",
          threshold=THRESHOLD):
    device = device_of(backend)
    student, teacher, given = make(shape, dtype, device, seed=seed, labels=labels)
    if layout == "channels_last":
        student = student.contiguous(memory_format=torch.channels_last)
        teacher = teacher.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        wide = torch.zeros((*student.shape[:3], student.shape[3] + 2), dtype=dtype, device=device)
        wide[..., 1:-1] = student
        student = wide[..., 1:-1]
        teacher = teacher.transpose(2, 3).contiguous().transpose(2, 3)
        if given is not None:
            given = given.transpose(1, 2).contiguous().transpose(1, 2)
    size = tuple(shape[4:])
    loss, weight, grad = run(backend, student, teacher, given, size, threshold)
    ref_loss, ref_weight, ref_grad, ambiguous = expected(student, teacher, given, size, threshold)
    assert ambiguous == 0, "the draw has pixels whose pseudo-label or confidence is ambiguous"
    assert loss.dtype == weight.dtype == grad.dtype == dtype
    name = f"{backend} {shape} {labels} {dtype}"
    # A pixel's loss is a difference of logits (plus a log): rounding the resized logits costs
    # an error of their size, however small the difference; the weight is a fraction.
    logit_scale = student.detach().abs().max().item()
    assert_close(loss, ref_loss, "pseudo_label_loss", dtype, f"loss {name}", floor=logit_scale)
    assert_close(weight, ref_weight, "pseudo_label_loss", dtype, f"weight {name}", floor=1.0)
    # Each pixel sends up to 1/(N H W) per class, which can cancel: the error is relative to that.
    assert_close(grad, ref_grad, "pseudo_label_loss grad", dtype, f"grad {name}",
                 floor=1.0 / (shape[0] * size[0] * size[1]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("labels", ["mixed", "none"])
def test_matches_reference_float32(backend, shape, labels):
    check(backend, shape, torch.float32, labels)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[4]],
                         ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_other_dtypes(backend, dtype, shape):
    if dtype not in DTYPES[backend]:
        pytest.skip(f"{backend} does not support {dtype}")
    check(backend, shape, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_non_contiguous_inputs(backend, layout):
    check(backend, (2, 3, 5, 6, 12, 17), torch.float32, layout=layout)


@pytest.mark.parametrize("backend", backend_params("cpu", "cuda"))
def test_matches_reference_at_a_training_shape(backend):
    """19 classes, the 1/8 map of a 128 x 256 crop upsampled to it (the first seed whose draw has
    no ambiguous pixel: at this size a near-tie is likely somewhere)."""
    shape = (2, 19, 16, 32, 128, 256)
    seed = next(seed for seed in range(10)
                if expected(*make(shape, torch.float32, "cpu", seed=seed), shape[4:])[3] == 0)
    check(backend, shape, torch.float32, seed=seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_pixel_ignored_gives_zero(backend):
    device = device_of(backend)
    student, teacher, given = make((2, 3, 3, 4, 6, 8), torch.float32, device, labels="ignored")
    loss, _, grad = run(backend, student, teacher, given, (6, 8))
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_weight_is_the_confident_fraction(backend):
    """A teacher sure of one class on the left half of every image and undecided on the right:
    the weight is exactly 1/2, and the pseudo-labelled pixels' loss is scaled by it."""
    device = device_of(backend)
    teacher = torch.zeros(2, 3, 4, 8, device=device)
    teacher[:, 1, :, :4] = 20.0
    student = torch.randn(2, 3, 4, 8, generator=torch.Generator().manual_seed(0)).to(device)
    with rtda_kernels.use_backend(backend):
        loss, weight = rtda_kernels.pseudo_label_loss(student, teacher, threshold=0.968)
    assert weight.tolist() == [0.5, 0.5]
    ce = torch.nn.functional.cross_entropy(student, teacher.argmax(1), reduction="mean")
    torch.testing.assert_close(loss, 0.5 * ce)
    # Threshold 0: every pixel is confident (the softmax maximum is at least 1/C > 0).
    with rtda_kernels.use_backend(backend):
        _, everywhere = rtda_kernels.pseudo_label_loss(student, teacher, threshold=0.0)
    assert everywhere.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_given_labels_have_weight_one_and_follow_the_label(backend):
    """No confident pixel (weight 0): only the class-id pixels count, as plain cross-entropy."""
    device = device_of(backend)
    student, teacher, _ = make((2, 4, 3, 4, 6, 8), torch.float32, device)
    teacher = torch.zeros_like(teacher)  # uniform softmax 1/4 < threshold
    given = torch.full((2, 6, 8), reference.PSEUDO_LABEL, dtype=torch.long)
    given[:, :, :3] = 2
    given = given.to(device)
    loss, weight, _ = run(backend, student, teacher, given, (6, 8))
    assert weight.tolist() == [0.0, 0.0]
    up = torch.nn.functional.interpolate(student, size=(6, 8), mode="bilinear",
                                         align_corners=False)
    per_pixel = torch.nn.functional.cross_entropy(up, torch.full((2, 6, 8), 2, device=device),
                                                  reduction="none")
    torch.testing.assert_close(loss, per_pixel[:, :, :3].sum() / given.numel())


@pytest.mark.parametrize("backend", backend_params("reference", "cpu", "triton", "cuda"))
def test_the_fused_op_equals_the_reference_module_function(backend):
    """rtda_kernels.reference.pseudo_label_loss (what training uses unfused) and the op agree."""
    device = device_of(backend)
    student, teacher, given = make((2, 5, 4, 8, 32, 64), torch.float32, device)
    loss, weight, grad = run(backend, student, teacher, given, (32, 64))
    leaf = student.detach().requires_grad_()
    ref_loss, ref_weight = reference.pseudo_label_loss(leaf, teacher, given, threshold=THRESHOLD,
                                                       output_size=(32, 64))
    (ref_grad,) = torch.autograd.grad(ref_loss, leaf)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-6, atol=0)
    torch.testing.assert_close(weight, ref_weight, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("where", ["student", "teacher"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("size", [(4, 6), (9, 13)], ids=["same-size", "resized"])
def test_non_finite_values_as_the_reference(backend, where, value, size):
    """A NaN or inf logit: the loss, the weights and the gradient's finite / non-finite pattern
    as the reference gives them (a teacher's NaN is its argmax and never confident; a student's
    NaN or inf spreads to the loss and to the gradients its pixels reach)."""
    device = device_of(backend)
    student, teacher, given = make((2, 3, 4, 6, *size), torch.float32, device, seed=5)
    bad = student if where == "student" else teacher
    bad[1, 2, 1, 3] = value
    check_like_the_reference(run(backend, student, teacher, given, size), student, teacher, given,
                             size)


def check_like_the_reference(outputs, student, teacher, given, size, what=""):
    """(loss, weight, grad) with NaN and inf where ``reference.pseudo_label_loss`` and its
    autograd put them, and the finite values close to its."""
    leaf = student.detach().cpu().requires_grad_()
    ref_loss, ref_weight = reference.pseudo_label_loss(leaf, teacher.cpu(), None if given is None
                                                       else given.cpu(), threshold=THRESHOLD,
                                                       output_size=size)
    (ref_grad,) = torch.autograd.grad(ref_loss, leaf)
    for name, ours, theirs in zip(("loss", "weight", "grad"), outputs,
                                  (ref_loss, ref_weight, ref_grad)):
        ours = ours.detach().cpu()
        assert torch.equal(ours.isnan(), theirs.isnan()), (name, what)
        assert torch.equal(ours.isinf(), theirs.isinf()), (name, what)
        finite = theirs.isfinite()
        torch.testing.assert_close(ours[finite], theirs[finite], rtol=1e-4, atol=1e-7)


@settings(max_examples=examples(12), deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 7), h=st.integers(1, 7), w=st.integers(1, 7),
       big_h=st.integers(1, 23), big_w=st.integers(1, 23), seed=st.integers(0, 2**16),
       labels=st.sampled_from(["mixed", "none"]))
def test_hypothesis_cpu(n, c, h, w, big_h, big_w, seed, labels):
    shape = (n, c, h, w, big_h, big_w)
    student, teacher, given = make(shape, torch.float32, "cpu", seed=seed, labels=labels)
    assume(expected(student, teacher, given, (big_h, big_w))[3] == 0)
    check("cpu", shape, torch.float32, labels, seed=seed)


@pytest.mark.skipif(not rtda_kernels.available_backends()["triton"].available,
                    reason="triton is not available")
@settings(max_examples=examples(4), deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 5), w=st.integers(1, 5),
       big_h=st.integers(1, 13), big_w=st.integers(1, 13), seed=st.integers(0, 2**16))
def test_hypothesis_triton(n, c, h, w, big_h, big_w, seed):
    shape = (n, c, h, w, big_h, big_w)
    student, teacher, given = make(shape, torch.float32, "cpu", seed=seed)
    assume(expected(student, teacher, given, (big_h, big_w))[3] == 0)
    check("triton", shape, torch.float32, seed=seed)


def test_gradcheck_float64():
    student, teacher, given = make((2, 3, 3, 4, 7, 9), torch.float64, "cpu")
    student.requires_grad_()
    with rtda_kernels.use_backend("cpu"):
        assert torch.autograd.gradcheck(
            lambda s: rtda_kernels.pseudo_label_loss(s, teacher, given, threshold=THRESHOLD,
                                                     output_size=(7, 9))[0], (student,))


@pytest.mark.parametrize("op", ["pseudo_label_loss", "pseudo_label_loss_triton"])
def test_opcheck(op):
    if op.endswith("triton") and not rtda_kernels.available_backends()["triton"].available:
        pytest.skip("triton is not available")
    student, teacher, given = make((2, 3, 3, 4, 7, 9), torch.float32, "cpu")
    fn = getattr(torch.ops.rtda_kernels, op)
    for labels in (given, None):
        for grad in (True, False):
            args = (student.clone().requires_grad_(), teacher, labels, THRESHOLD, [7, 9], grad)
            torch.library.opcheck(fn, args)


def test_torch_compile_fullgraph_matches_eager():
    student, teacher, given = make((2, 4, 4, 8, 16, 32), torch.float32, "cpu")

    def step(s, t, labels):
        loss, weight = rtda_kernels.pseudo_label_loss(s, t, labels, threshold=THRESHOLD,
                                                      output_size=(16, 32))
        return loss * 2.0, weight

    compiled = torch.compile(step, fullgraph=True)
    leaf = student.clone().requires_grad_()
    loss, weight = compiled(leaf, teacher, given)
    loss.backward()
    eager_leaf = student.clone().requires_grad_()
    eager_loss, eager_weight = step(eager_leaf, teacher, given)
    eager_loss.backward()
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(weight, eager_weight)
    torch.testing.assert_close(leaf.grad, eager_leaf.grad)


def test_cpu_kernel_is_deterministic_across_thread_counts():
    student, teacher, given = make((2, 19, 8, 16, 64, 128), torch.float32, "cpu")
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(run("cpu", student, teacher, given, (64, 128)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
