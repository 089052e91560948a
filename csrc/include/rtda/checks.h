// Argument checks of the compiled ops. The public Python functions validate everything first with
// messages that name the argument; these checks only keep a direct torch.ops call from reading
// out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include <c10/util/ArrayRef.h>

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

// The loss-map shape N x C x H x W of logits N x C x h x w resized to output_size = [H, W].
inline void check_loss_map(const char* name, const at::Tensor& map, const at::Tensor& logits,
                           at::IntArrayRef output_size) {
  TORCH_CHECK(map.dim() == 4 && map.size(0) == logits.size(0) && map.size(1) == logits.size(1) &&
                  map.size(2) == output_size[0] && map.size(3) == output_size[1],
              "adversarial_loss: ", name, " must have the loss map's shape N x C x H x W, got ",
              map.sizes());
  TORCH_CHECK(map.scalar_type() == logits.scalar_type(), "adversarial_loss: ", name,
              " must have the dtype of the logits");
}

inline void check_adversarial_args(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                                   at::IntArrayRef output_size, int64_t reduction) {
  TORCH_CHECK(logits.dim() == 4 && logits.numel() > 0,
              "adversarial_loss: logits must be a non-empty N x C x h x w tensor, got ",
              logits.sizes());
  TORCH_CHECK(output_size.size() == 2 && output_size[0] >= 1 && output_size[1] >= 1,
              "adversarial_loss: output_size must be [H, W] with H, W >= 1, got ", output_size);
  TORCH_CHECK(reduction >= 0 && reduction <= 2,
              "adversarial_loss: reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  if (target.has_value()) check_loss_map("target", *target, logits, output_size);
}

inline void check_pseudo_label_args(const at::Tensor& student, const at::Tensor& teacher,
                                    const std::optional<at::Tensor>& labels,
                                    at::IntArrayRef output_size) {
  TORCH_CHECK(student.dim() == 4 && student.numel() > 0,
              "pseudo_label_loss: student must be a non-empty N x C x h x w tensor, got ",
              student.sizes());
  TORCH_CHECK(teacher.sizes() == student.sizes() && teacher.scalar_type() == student.scalar_type(),
              "pseudo_label_loss: teacher must have the shape and dtype of student, got ",
              teacher.sizes());
  TORCH_CHECK(output_size.size() == 2 && output_size[0] >= 1 && output_size[1] >= 1,
              "pseudo_label_loss: output_size must be [H, W] with H, W >= 1, got ", output_size);
  TORCH_CHECK(!labels.has_value() ||
                  (labels->scalar_type() == at::kLong && labels->dim() == 3 &&
                   labels->size(0) == student.size(0) && labels->size(1) == output_size[0] &&
                   labels->size(2) == output_size[1]),
              "pseudo_label_loss: labels must be an int64 N x H x W tensor");
}

inline Activation activation_of(std::optional<double> negative_slope) {
  return Activation{negative_slope.has_value(),
                    negative_slope.value_or(0.0)};
}

}  // namespace rtda
