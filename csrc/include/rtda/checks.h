// Argument checks of the compiled ops. The public Python functions validate everything first with
// messages that name the argument; these checks only keep a direct torch.ops call from reading
// out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "rtda/dwsep_math.h"

namespace rtda {

inline void check_dwsep_args(const at::Tensor& x, const at::Tensor& dw_weight,
                             const std::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight,
                             const std::optional<at::Tensor>& pw_bias, int64_t stride,
                             int64_t padding) {
  TORCH_CHECK(x.dim() == 4, "dwsep_conv2d: x must be N x C x H x W, got ", x.dim(), " dims");
  TORCH_CHECK(dw_weight.dim() == 4 && dw_weight.size(0) == x.size(1) && dw_weight.size(1) == 1 &&
                  dw_weight.size(2) == dw_weight.size(3),
              "dwsep_conv2d: dw_weight must be C_in x 1 x k x k, got ", dw_weight.sizes());
  TORCH_CHECK(pw_weight.dim() == 4 && pw_weight.size(1) == x.size(1) && pw_weight.size(2) == 1 &&
                  pw_weight.size(3) == 1,
              "dwsep_conv2d: pw_weight must be C_out x C_in x 1 x 1, got ", pw_weight.sizes());
  TORCH_CHECK(!dw_bias.has_value() || dw_bias->numel() == x.size(1),
              "dwsep_conv2d: dw_bias must have C_in elements");
  TORCH_CHECK(!pw_bias.has_value() || pw_bias->numel() == pw_weight.size(0),
              "dwsep_conv2d: pw_bias must have C_out elements");
  TORCH_CHECK(stride >= 1 && padding >= 0, "dwsep_conv2d: stride must be >= 1, padding >= 0");
  TORCH_CHECK(conv_out_size(x.size(2), dw_weight.size(2), stride, padding) >= 1 &&
                  conv_out_size(x.size(3), dw_weight.size(2), stride, padding) >= 1 &&
                  x.size(2) + 2 * padding >= dw_weight.size(2) &&
                  x.size(3) + 2 * padding >= dw_weight.size(2) && x.size(0) >= 1,
              "dwsep_conv2d: the output would be empty");
  TORCH_CHECK(dw_weight.scalar_type() == x.scalar_type() &&
                  pw_weight.scalar_type() == x.scalar_type(),
              "dwsep_conv2d: weights must have the dtype of x");
}

inline Activation activation_of(std::optional<double> negative_slope) {
  return Activation{negative_slope.has_value(),
                    negative_slope.value_or(0.0)};
}

}  // namespace rtda
