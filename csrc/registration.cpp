// Every op schema of the rtda_kernels library, in one place.
//
// Backends register implementations under their dispatch keys (csrc/cpu, csrc/cuda); Python adds
// fake kernels and autograd (rtda_kernels/ops). A backward is an op of its own so that autograd
// only ever calls ops PyTorch knows.
#include <torch/library.h>

TORCH_LIBRARY(rtda_kernels, m) {
  // y = leaky_relu(pointwise(depthwise(x))); negative_slope = None means no activation.
  m.def(
      "dwsep_conv2d(Tensor x, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, "
      "Tensor? pw_bias, int stride, int padding, float? negative_slope) -> Tensor");
  // Gradients w.r.t. (x, dw_weight, dw_bias, pw_weight, pw_bias); the bias gradients are always
  // computed (shapes C_in and C_out). The depthwise intermediate is recomputed from x.
  m.def(
      "dwsep_conv2d_backward(Tensor grad_y, Tensor x, Tensor y, Tensor dw_weight, "
      "Tensor? dw_bias, Tensor pw_weight, int stride, int padding, float? negative_slope) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Pixel-wise binary cross-entropy with logits of `logits` (N x C x h x w) bilinearly resized
  // (align_corners=False) to output_size = [H, W] on the fly, against `target` (an N x C x H x W
  // tensor) or, when target is None, the constant `target_value`. reduction: 0 none, 1 mean,
  // 2 sum (at::Reduction). Returns (loss, grad_logits): loss is the N x C x H x W map (none) or a
  // 0-dim tensor; grad_logits = d loss / d logits (shape of logits) when compute_grad and the
  // reduction is mean or sum, else an empty tensor (0,). Everything in the dtype of logits.
  m.def(
      "adversarial_loss(Tensor logits, Tensor? target, float target_value, int[] output_size, "
      "int reduction, bool compute_grad) -> (Tensor, Tensor)");
  // reduction none: the gradient of sum(grad_loss * loss_map) w.r.t. logits.
  m.def(
      "adversarial_loss_backward(Tensor grad_loss, Tensor logits, Tensor? target, "
      "float target_value, int[] output_size) -> Tensor");
  // Eq. (1): 0.5 * (mean loss(d_source, source_label) + mean loss(d_target, target_label)), both
  // maps resized to output_size. Returns (loss, grad_source, grad_target), the gradients of the
  // 0-dim loss when compute_grad, else empty tensors (0,).
  m.def(
      "discriminator_loss(Tensor d_source, Tensor d_target, float source_label, "
      "float target_label, int[] output_size, bool compute_grad) -> (Tensor, Tensor, Tensor)");

  // Inference only: a 3x3 stride-1 convolution (padding 1) by Winograd F(4x4, 3x3), float32, with
  // the weight given in its Winograd form (36 x C_in x C_out, see
  // rtda_kernels.reference.winograd_conv3x3.winograd_weight); y = conv + bias (+ residual), then
  // ReLU if relu. y is channels_last. weight (C_out x C_in x 3 x 3) is what weight_winograd was
  // computed from: a call with non-finite x or weight is computed directly from it, so that NaN
  // and inf come out as conv2d gives them.
  m.def(
      "winograd_conv3x3(Tensor x, Tensor weight, Tensor weight_winograd, Tensor? bias, "
      "Tensor? residual, bool relu) -> Tensor");
}
