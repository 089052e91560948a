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
}
