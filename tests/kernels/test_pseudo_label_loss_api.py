"""rtda_kernels.pseudo_label_loss refuses bad input with one clear exception naming the argument,
on every backend, before any kernel runs."""

from __future__ import annotations

import pytest
import torch

import rtda_kernels
from tests.kernels.helpers import backend_params

BACKENDS = backend_params("reference", "cpu", "triton")


def _inputs():
    student = torch.randn(2, 3, 4, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 5)
    labels = torch.full((2, 8, 10), -1, dtype=torch.long)
    return student, teacher, labels


CASES = [
    ("student not a tensor", lambda s, t, l: (s.tolist(), t, l, {}), TypeError, "student must be a torch.Tensor"),
    ("student 3-D", lambda s, t, l: (s[0], t[0], l, {}), ValueError, "student must be a 4-D tensor"),
    ("student empty", lambda s, t, l: (s[:0], t[:0], None, {}), ValueError, "student must not be empty"),
    ("student integer", lambda s, t, l: (s.detach().long(), t, l, {}), TypeError, "student must be a floating-point"),
    ("teacher shape", lambda s, t, l: (s, t[:, :2], l, {}), ValueError, "teacher must have shape that of student"),
    ("teacher dtype", lambda s, t, l: (s, t.double(), l, {}), TypeError, "teacher has dtype torch.float64"),
    ("teacher requires grad", lambda s, t, l: (s, t.requires_grad_(), l, {}), ValueError, "teacher requires grad"),
    ("labels dtype", lambda s, t, l: (s, t, l.int(), {}), TypeError, "labels must be an int64 tensor"),
    ("labels shape", lambda s, t, l: (s, t, l[:, :4], {}), ValueError, "labels must have shape N x H x W"),
    ("labels values", lambda s, t, l: (s, t, l.fill_(7), {}), ValueError, r"labels must hold class ids in \[0, 3\), -1 \(pseudo-label\) or 255 \(ignored\), got 7"),
    ("labels -2", lambda s, t, l: (s, t, l.fill_(-2), {}), ValueError, "got -2"),
    ("labels not a tensor", lambda s, t, l: (s, t, [[0]], {}), TypeError, "labels must be a torch.Tensor or None"),
    ("threshold 1", lambda s, t, l: (s, t, l, {"threshold": 1.0}), ValueError, r"threshold must be a float in \[0, 1\)"),
    ("threshold negative", lambda s, t, l: (s, t, l, {"threshold": -0.1}), ValueError, "threshold must be"),
    ("threshold bool", lambda s, t, l: (s, t, l, {"threshold": True}), ValueError, "threshold must be"),
    ("output_size", lambda s, t, l: (s, t, None, {"output_size": (8,)}), ValueError, "output_size must be None or a pair"),
    ("output_size zero", lambda s, t, l: (s, t, None, {"output_size": (0, 4)}), ValueError, "output_size H must be >= 1"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build,error,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_the_argument(backend, build, error, message):
    student, teacher, labels = _inputs()
    s, t, lab, kwargs = build(student, teacher, labels)
    kwargs.setdefault("output_size", (8, 10))
    with rtda_kernels.use_backend(backend), pytest.raises(error, match=message):
        rtda_kernels.pseudo_label_loss(s, t, lab, **kwargs)


def test_labels_on_another_device_are_refused():
    student, teacher, labels = _inputs()
    with pytest.raises(ValueError, match="labels is on meta but student is on cpu"):
        rtda_kernels.pseudo_label_loss(student, teacher, labels.to("meta"), output_size=(8, 10))


def test_the_compiled_op_refuses_what_would_read_out_of_bounds():
    """A direct torch.ops call skips the Python checks: the C++ checks still stop it."""
    student, teacher, labels = _inputs()
    op = torch.ops.rtda_kernels.pseudo_label_loss
    with pytest.raises(RuntimeError, match="teacher must have the shape and dtype of student"):
        op(student.detach(), teacher[:, :2], labels, 0.9, [8, 10], False)
    with pytest.raises(RuntimeError, match="labels must be an int64 N x H x W tensor"):
        op(student.detach(), teacher, labels[:, :4], 0.9, [8, 10], False)
    with pytest.raises(RuntimeError, match="output_size must be"):
        op(student.detach(), teacher, None, 0.9, [8], False)
