// CPU kernel of the fused self-training loss (op pseudo_label_loss; schema in
// rtda_kernels/schemas.py, reference in rtda_kernels/reference/pseudo_label_loss.py).
//
// Both logit maps (N x C x h x w) are resized to H x W on the fly by the bands of the adversarial
// loss (adversarial_loss_bands.h): a unit of work is one low-resolution row band b of one image,
// whose output rows all read rows b and b+1. The unit resizes those two rows horizontally for
// every class of the teacher and of the student (cache resident), then per output pixel, with the
// pixels of a row in SIMD lanes: the teacher's argmax (the pseudo-label) and softmax maximum
// 1 / sum exp(u - max) (confident above the threshold), the student's log-sum-exp and
// cross-entropy against the pixel's label, and the gradient softmax - onehot folded back into
// two low-resolution partial rows per class.
//
// A pseudo-labelled pixel's weight (its image's confident fraction) is known only once the whole
// image is seen, so a unit keeps the pseudo-labelled and the other pixels apart (loss sums and
// gradient partials per kind) and the weights are applied when the units are added up, in band
// order: results are bitwise identical for any number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include <rtda/checks.h>

#include "adversarial_loss_bands.h"

namespace {

using rtda::cpu::adversarial::Axis;
using rtda::cpu::adversarial::fold_row;
using rtda::cpu::adversarial::resize_row;

constexpr int kPseudo = -1;
constexpr int kIgnore = 255;

// The lane arithmetic the row loop is written in: float in SIMD vectors, double one at a time.
template <typename acc_t>
struct Lanes;

template <>
struct Lanes<float> {
  using V = rtda::cpu::VecF;
  using I = rtda::cpu::VecI;
  static constexpr int L = rtda::cpu::lanes<float>();
  static V load(const float* p) { return rtda::cpu::load_vec(p); }
  static void store(float* p, V v) { rtda::cpu::store_vec(p, v); }
  static I load_int(const int* p) { return rtda::cpu::load_vec(p); }
  static V splat(float v) { return rtda::cpu::splat(v); }
  static I splat_int(int v) { return I{} + v; }
  static V exp_nonpositive(V x) { return rtda::cpu::exp_nonpositive(x); }
  static V reciprocal(V x) { return rtda::cpu::reciprocal(x); }
  // log(s) for s >= 1 (a sum of exponentials whose largest term is 1): s = 2^k m, m in [1, 2),
  // log s = k ln2 + log1p(m - 1). NaN stays NaN.
  static V log_at_least_one(V s) {
    I bits;
    std::memcpy(&bits, &s, sizeof(bits));
    const I exponent = ((bits >> 23) & 0xff) - 127;
    const I mantissa_bits = (bits & 0x7fffff) | (127 << 23);
    V mantissa;
    std::memcpy(&mantissa, &mantissa_bits, sizeof(mantissa));
    const V k = __builtin_convertvector(exponent, V);
    const V result = k * 0.6931471805599453f + rtda::cpu::log1p_unit(mantissa - 1.0f);
    return s != s ? s : result;
  }
  static double sum(V v) {
    double total = 0;
    for (int i = 0; i < L; ++i) total += v[i];
    return total;
  }
  static int64_t sum_int(I v) {
    int64_t total = 0;
    for (int i = 0; i < L; ++i) total += v[i];
    return total;
  }
};

template <>
struct Lanes<double> {
  using V = double;
  using I = int;
  static constexpr int L = 1;
  static V load(const double* p) { return *p; }
  static void store(double* p, V v) { *p = v; }
  static I load_int(const int* p) { return *p; }
  static V splat(double v) { return v; }
  static I splat_int(int v) { return v; }
  static V exp_nonpositive(V x) { return std::exp(x); }
  static V reciprocal(V x) { return 1.0 / x; }
  static V log_at_least_one(V s) { return std::log(s); }
  static double sum(V v) { return v; }
  static int64_t sum_int(I v) { return v; }
};

template <typename scalar_t, typename acc_t>
struct Job {
  const scalar_t* student;
  const scalar_t* teacher;
  const int64_t* labels;  // N x H x W, or nullptr: the pseudo-label everywhere
  int64_t n, classes;
  acc_t threshold;
  bool grad;
  Axis<acc_t> rows, cols;
  // Per unit (image, band): loss sums of the pseudo-labelled and the other pixels, confident
  // pixels, and the gradient partials [kind][class][top, bottom][w].
  std::vector<double> loss_pseudo, loss_fixed;
  std::vector<int64_t> confident;
  std::vector<acc_t> partials;

  Job(int64_t n_, int64_t classes_, int64_t h, int64_t w, int64_t H, int64_t W)
      : student(nullptr), teacher(nullptr), labels(nullptr), n(n_), classes(classes_),
        threshold(0), grad(false), rows(h, H), cols(w, W) {}

  int64_t units() const { return n * rows.in; }
  int64_t partial_size() const { return 2 * classes * 2 * cols.in; }
};

// Scratch of one thread: the resized rows [tensor][top, bottom][class][padded W], the label row,
// the exponentials of one vector of pixels, and the W-wide gradient rows [kind][top, bottom][class].
template <typename acc_t>
struct Scratch {
  int64_t padded, classes;
  std::vector<acc_t> resized, exps, acc;
  std::vector<int> labels;

  Scratch(int64_t width, int64_t classes_) : classes(classes_) {
    constexpr int64_t L = Lanes<acc_t>::L;
    padded = (width + L - 1) / L * L;
    resized.assign(2 * 2 * classes * padded, acc_t(0));
    exps.assign(classes * L, acc_t(0));
    acc.assign(2 * 2 * classes * padded, acc_t(0));
    labels.assign(padded, kIgnore);
  }
  acc_t* row(int tensor, int which, int64_t c) {
    return resized.data() + ((tensor * 2 + which) * classes + c) * padded;
  }
  acc_t* grad_row(int kind, int which, int64_t c) {
    return acc.data() + ((kind * 2 + which) * classes + c) * padded;
  }
};

// One output row: the loss sums (pseudo-labelled, other), confident pixels, and the gradient
// added to the scratch's W-wide rows with the row weights wt (top) and wb (bottom, when two_rows).
template <typename acc_t>
void run_row(Scratch<acc_t>& s, int64_t width, acc_t wt, acc_t wb, bool two_rows, bool grad,
             acc_t threshold, double& loss_pseudo, double& loss_fixed, int64_t& confident) {
  using T = Lanes<acc_t>;
  using V = typename T::V;
  using I = typename T::I;
  constexpr int L = T::L;
  const int64_t C = s.classes;
  V index{};
  if constexpr (L > 1) {
    for (int i = 0; i < L; ++i) index[i] = static_cast<acc_t>(i);
  }
  const V zero = T::splat(0), one = T::splat(1);
  const I izero = T::splat_int(0), ione = T::splat_int(1);
  V sum_pseudo = zero, sum_fixed = zero;
  I count = izero;
  auto value = [&](int tensor, int64_t c, int64_t x) {
    const V top = wt * T::load(s.row(tensor, 0, c) + x);
    return two_rows ? top + wb * T::load(s.row(tensor, 1, c) + x) : top;
  };
  for (int64_t x = 0; x < s.padded; x += L) {
    const auto in_row = index < static_cast<acc_t>(width - x);
    // Teacher: argmax (NaN counts as the largest, as torch.argmax) and softmax maximum.
    V t_max = value(0, 0, x);
    I label = izero;
    for (int64_t c = 1; c < C; ++c) {
      const V u = value(0, c, x);
      const auto larger = (u > t_max) | ((u != u) & (t_max == t_max));
      t_max = larger ? u : t_max;
      label = larger ? T::splat_int(static_cast<int>(c)) : label;
    }
    V t_sum = zero;
    for (int64_t c = 0; c < C; ++c) t_sum += T::exp_nonpositive(value(0, c, x) - t_max);
    const auto sure = (T::reciprocal(t_sum) > threshold) & in_row;
    count += sure ? ione : izero;
    // The pixel's label: the pseudo-label, a class id (weight 1) or ignored.
    const I given = T::load_int(s.labels.data() + x);
    const auto pseudo = given == T::splat_int(kPseudo);
    const I target = pseudo ? label : given;
    const auto counted = pseudo | (given != T::splat_int(kIgnore));
    // Student: log-sum-exp, cross-entropy, softmax.
    V s_max = value(1, 0, x);
    for (int64_t c = 1; c < C; ++c) {
      const V u = value(1, c, x);
      s_max = u > s_max ? u : s_max;
    }
    V s_sum = zero, picked = zero;
    for (int64_t c = 0; c < C; ++c) {
      const V u = value(1, c, x);
      const V e = T::exp_nonpositive(u - s_max);
      T::store(s.exps.data() + c * L, e);
      s_sum += e;
      picked = target == T::splat_int(static_cast<int>(c)) ? u : picked;
    }
    const V loss = (s_max - picked) + T::log_at_least_one(s_sum);  // exact 0 + log when the max is picked
    sum_pseudo += (pseudo & in_row) ? loss : zero;
    sum_fixed += (counted & ~pseudo & in_row) ? loss : zero;
    if (!grad) continue;
    // d loss / d u_c = coefficient * (softmax_c - [c == target]); an ignored pixel's
    // coefficient is 0 (0 * NaN stays NaN, as in cross_entropy's backward).
    const V coefficient = counted ? one : zero;
    const V inverse = T::reciprocal(s_sum);
    for (int64_t c = 0; c < C; ++c) {
      const V hot = target == T::splat_int(static_cast<int>(c)) ? one : zero;
      const V g = coefficient * (T::load(s.exps.data() + c * L) * inverse - hot);
      const V g_pseudo = pseudo ? g : zero;
      const V g_fixed = pseudo ? zero : g;
      for (int kind = 0; kind < 2; ++kind) {
        const V gk = kind == 0 ? g_pseudo : g_fixed;
        acc_t* top = s.grad_row(kind, 0, c) + x;
        T::store(top, T::load(top) + wt * gk);
        if (two_rows) {
          acc_t* bottom = s.grad_row(kind, 1, c) + x;
          T::store(bottom, T::load(bottom) + wb * gk);
        }
      }
    }
  }
  loss_pseudo += T::sum(sum_pseudo);
  loss_fixed += T::sum(sum_fixed);
  confident += T::sum_int(count);
}

template <typename scalar_t, typename acc_t>
void run_band(Job<scalar_t, acc_t>& job, int64_t image, int64_t b, Scratch<acc_t>& s) {
  const Axis<acc_t>& rows = job.rows;
  const Axis<acc_t>& cols = job.cols;
  const int64_t h = rows.in, w = cols.in, H = rows.out, W = cols.out, C = job.classes;
  const int64_t unit = image * h + b;
  acc_t* partial = job.grad ? job.partials.data() + unit * job.partial_size() : nullptr;
  if (partial) std::fill(partial, partial + job.partial_size(), acc_t(0));
  job.loss_pseudo[unit] = job.loss_fixed[unit] = 0;
  job.confident[unit] = 0;
  const int64_t y_begin = rows.band_begin[b], y_end = rows.band_begin[b + 1];
  if (y_begin == y_end) return;
  const int64_t b1 = rows.i1[y_begin];
  const bool two_rows = !rows.identity;  // no vertical resize: the lower row's weights are all 0
  for (int tensor = 0; tensor < 2; ++tensor) {
    const scalar_t* maps = (tensor == 0 ? job.teacher : job.student) + image * C * h * w;
    for (int64_t c = 0; c < C; ++c) {
      resize_row(maps + (c * h + b) * w, cols, s.row(tensor, 0, c));
      if (two_rows) resize_row(maps + (c * h + b1) * w, cols, s.row(tensor, 1, c));
    }
  }
  if (job.grad) std::fill(s.acc.begin(), s.acc.end(), acc_t(0));
  double loss_pseudo = 0, loss_fixed = 0;
  int64_t confident = 0;
  for (int64_t y = y_begin; y < y_end; ++y) {
    if (job.labels) {
      const int64_t* given = job.labels + (image * H + y) * W;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t v = given[x];
        // Anything but -1, a class id or 255 is ignored (the Python function refuses it first).
        s.labels[x] = v == kPseudo || (v >= 0 && v < C) ? static_cast<int>(v) : kIgnore;
      }
    } else {
      std::fill(s.labels.begin(), s.labels.begin() + W, kPseudo);
    }
    run_row<acc_t>(s, W, rows.w0[y], two_rows ? rows.w1[y] : acc_t(0), two_rows, job.grad,
                   job.threshold, loss_pseudo, loss_fixed, confident);
  }
  job.loss_pseudo[unit] = loss_pseudo;
  job.loss_fixed[unit] = loss_fixed;
  job.confident[unit] = confident;
  if (!job.grad) return;
  for (int kind = 0; kind < 2; ++kind) {
    for (int64_t c = 0; c < C; ++c) {
      acc_t* out = partial + ((kind * C + c) * 2) * w;
      fold_row(s.grad_row(kind, 0, c), cols, out);
      if (two_rows) fold_row(s.grad_row(kind, 1, c), cols, out + w);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pseudo_label_loss_cpu(
    const at::Tensor& student_in, const at::Tensor& teacher_in,
    const std::optional<at::Tensor>& labels_in, double threshold, at::IntArrayRef output_size,
    bool compute_grad) {
  rtda::check_pseudo_label_args(student_in, teacher_in, labels_in, output_size);
  const at::Tensor student = student_in.contiguous();
  const at::Tensor teacher = teacher_in.contiguous();
  const std::optional<at::Tensor> labels =
      labels_in.has_value() ? std::optional<at::Tensor>(labels_in->contiguous()) : std::nullopt;
  const int64_t n = student.size(0), C = student.size(1), h = student.size(2), w = student.size(3);
  const int64_t H = output_size[0], W = output_size[1];
  at::Tensor loss = at::empty({}, student.options());
  at::Tensor weight = at::empty({n}, student.options());
  at::Tensor grad = compute_grad ? at::empty(student.sizes(), student.options())
                                 : at::empty({0}, student.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(),
                                  "pseudo_label_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Job<scalar_t, acc_t> job(n, C, h, w, H, W);
    job.student = student.const_data_ptr<scalar_t>();
    job.teacher = teacher.const_data_ptr<scalar_t>();
    job.labels = labels ? labels->const_data_ptr<int64_t>() : nullptr;
    job.threshold = static_cast<acc_t>(threshold);
    job.grad = compute_grad;
    job.loss_pseudo.assign(job.units(), 0.0);
    job.loss_fixed.assign(job.units(), 0.0);
    job.confident.assign(job.units(), 0);
    if (compute_grad) job.partials.assign(job.units() * job.partial_size(), acc_t(0));
    at::parallel_for(0, job.units(), 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> scratch(W, C);
      for (int64_t unit = begin; unit < end; ++unit) run_band(job, unit / h, unit % h, scratch);
    });
    // Add the units up in band order, each image's pseudo-labelled pixels weighted by its
    // confident fraction.
    const double pixels = static_cast<double>(H) * static_cast<double>(W);
    const double scale = 1.0 / (static_cast<double>(n) * pixels);
    double total = 0;
    std::vector<acc_t> kinds(2 * C * h * w);
    for (int64_t image = 0; image < n; ++image) {
      double pseudo = 0, fixed = 0;
      int64_t confident = 0;
      for (int64_t b = 0; b < h; ++b) {
        pseudo += job.loss_pseudo[image * h + b];
        fixed += job.loss_fixed[image * h + b];
        confident += job.confident[image * h + b];
      }
      const acc_t fraction = static_cast<acc_t>(static_cast<double>(confident) / pixels);
      weight.mutable_data_ptr<scalar_t>()[image] = static_cast<scalar_t>(fraction);
      total += static_cast<double>(fraction) * pseudo + fixed;
      if (!compute_grad) continue;
      std::fill(kinds.begin(), kinds.end(), acc_t(0));
      for (int64_t b = 0; b < h; ++b) {
        const acc_t* part = job.partials.data() + (image * h + b) * job.partial_size();
        const int64_t b1 = std::min(b + 1, h - 1);
        for (int kind = 0; kind < 2; ++kind) {
          for (int64_t c = 0; c < C; ++c) {
            const acc_t* top = part + ((kind * C + c) * 2) * w;
            acc_t* plane = kinds.data() + (kind * C + c) * h * w;
            for (int64_t x = 0; x < w; ++x) plane[b * w + x] += top[x];
            for (int64_t x = 0; x < w; ++x) plane[b1 * w + x] += top[w + x];
          }
        }
      }
      scalar_t* out = grad.mutable_data_ptr<scalar_t>() + image * C * h * w;
      const acc_t acc_scale = static_cast<acc_t>(scale);
      for (int64_t i = 0; i < C * h * w; ++i) {
        out[i] = static_cast<scalar_t>((fraction * kinds[i] + kinds[C * h * w + i]) * acc_scale);
      }
    }
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(total * scale);
  });
  return {loss, weight, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtda_kernels, CPU, m) {
  m.impl("pseudo_label_loss", &pseudo_label_loss_cpu);
}
