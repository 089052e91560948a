"""Every op schema of the ``rtda_kernels`` library, defined once, here.

The C++ backends only implement these ops (``TORCH_LIBRARY_IMPL`` in csrc/cpu and csrc/cuda);
the Triton kernels become ``<op>_triton`` ops with the same schema (``triton_op``). A backward is
an op of its own, so that autograd only ever calls ops PyTorch knows. Each schema's contract
(shapes, dtypes, what each argument means) is in docs/kernels.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NAMESPACE = "rtda_kernels"
# The losses' ``int reduction`` argument, in at::Reduction's numbering.
REDUCE_NONE, REDUCE_MEAN, REDUCE_SUM = 0, 1, 2
REDUCTIONS = {"none": REDUCE_NONE, "mean": REDUCE_MEAN, "sum": REDUCE_SUM}

SCHEMAS = {
    # y = leaky_relu(pointwise(depthwise(x))); negative_slope None: no activation.
    "dwsep_conv2d": "(Tensor x, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, "
                    "Tensor? pw_bias, int stride, int padding, float? negative_slope) -> Tensor",
    # Gradients of (x, dw_weight, dw_bias, pw_weight, pw_bias); the depthwise output is recomputed.
    "dwsep_conv2d_backward": "(Tensor grad_y, Tensor x, Tensor y, Tensor dw_weight, "
                             "Tensor? dw_bias, Tensor pw_weight, int stride, int padding, "
                             "float? negative_slope) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    # BCE with logits of `logits` resized to output_size on the fly, against `target` or the
    # constant target_value; reduction 0 none, 1 mean, 2 sum -> (loss, grad_logits or (0,)).
    "adversarial_loss": "(Tensor logits, Tensor? target, float target_value, int[] output_size, "
                        "int reduction, bool compute_grad) -> (Tensor, Tensor)",
    # reduction none: the gradient of sum(grad_loss * loss_map) w.r.t. logits.
    "adversarial_loss_backward": "(Tensor grad_loss, Tensor logits, Tensor? target, "
                                 "float target_value, int[] output_size) -> Tensor",
    # Eq. (1) of the paper in one call -> (loss, grad_source or (0,), grad_target or (0,)).
    "discriminator_loss": "(Tensor d_source, Tensor d_target, float source_label, "
                          "float target_label, int[] output_size, bool compute_grad) "
                          "-> (Tensor, Tensor, Tensor)",
    # Self-training: the student's cross-entropy against the teacher's confidence-weighted
    # pseudo-labels (labels -1), class ids or 255, both maps resized to output_size on the fly
    # -> (loss, weight per image, grad_student or (0,)).
    "pseudo_label_loss": "(Tensor student, Tensor teacher, Tensor? labels, float threshold, "
                         "int[] output_size, bool compute_grad) -> (Tensor, Tensor, Tensor)",
    # Inference: 3x3 stride-1 conv by Winograd F(4x4, 3x3), + bias (+ residual), then ReLU.
    "winograd_conv3x3": "(Tensor x, Tensor weight, Tensor weight_winograd, Tensor? bias, "
                        "Tensor? residual, bool relu) -> Tensor",
}

_library = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _library.define(_name + _schema)


def triton_op(op: str) -> Callable[[Callable], torch.library.CustomOpDef]:
    """Declare a Triton kernel as the op ``<op>_triton``, with ``op``'s schema."""
    return torch.library.custom_op(f"{NAMESPACE}::{op}_triton", mutates_args=(),
                                   schema=SCHEMAS[op])
