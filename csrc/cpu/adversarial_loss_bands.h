// The band engine of the CPU adversarial-loss kernels (adversarial_loss_cpu.cpp): the bilinear
// taps and bands of an axis, one band's loss and partial gradient rows, the flat (no resize)
// runs, and the parallel loop over every band of every map that adds the results up in a fixed
// order.
//
// The loss of a map of logits L (h x w per plane) resized bilinearly to H x W is computed without
// ever storing the resized map u: output rows are processed in *bands*, a band being the output
// rows whose upper source row is the same low-resolution row b (so all of them read rows b and
// b+1 of L). A band first resizes those two rows horizontally (2 x W values, cache resident);
// every output row of the band is then one multiply-add per pixel away (u = wt * top + wb *
// bottom), followed by the stable binary cross-entropy and its derivative (vec_math.h), vectorised.
//
// The gradient w.r.t. L is the transpose of the resize applied to g = dloss/du: a band sums
// wt * g and wb * g over its rows into two W-wide rows, then folds them horizontally into two
// w-wide partial rows for L's rows b and b+1. Each band owns its partials (no races), and the
// final gradient and the loss add the bands' partials in band order after the parallel loop:
// the split into bands depends only on the shapes, never on the thread count, so results are
// bitwise identical for any number of threads.
//
// float16 / bfloat16 are computed in float32, float32 in float32 (vectorised) with the loss
// summed per band in double, float64 in double (scalar loop over the shared header's formula).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include <rtda/adversarial_math.h>

#include "simd.h"
#include "vec_math.h"

namespace rtda::cpu::adversarial {

using rtda::cpu::lanes;
using rtda::cpu::load_vec;
using rtda::cpu::store_vec;
using rtda::cpu::VecF;

// Output pixels per parallel chunk, at least: below that the threads cost more than they save.
constexpr int64_t kMinChunkPixels = 16384;
// Values per unit of work when the loss is computed without resize.
constexpr int64_t kFlatRun = 4096;

// The bilinear taps of one axis (in -> out) and its bands: the output coordinates whose i0 is b
// are [band_begin[b], band_begin[b + 1]). i0 never decreases along the axis, so bands are ranges.
template <typename acc_t>
struct Axis {
  int64_t in = 0;
  int64_t out = 0;
  bool identity = false;  // in == out: every tap is (i, i) with weights (1, 0)
  std::vector<int64_t> i0, i1;
  std::vector<acc_t> w0, w1;
  std::vector<int64_t> band_begin;

  Axis(int64_t in_size, int64_t out_size) : in(in_size), out(out_size), identity(in == out) {
    const acc_t scale = rtda::resize_scale<acc_t>(in, out);
    i0.resize(out);
    i1.resize(out);
    w0.resize(out);
    w1.resize(out);
    band_begin.assign(in + 1, out);
    for (int64_t d = out - 1; d >= 0; --d) {
      const auto tap = rtda::linear_tap<acc_t>(d, in, scale);
      i0[d] = tap.i0;
      i1[d] = tap.i1;
      w0[d] = tap.w0;
      w1[d] = tap.w1;
    }
    for (int64_t b = in - 1, d = out; b >= 0; --b) {
      while (d > 0 && i0[d - 1] >= b) --d;
      band_begin[b] = d;
    }
  }
};

// One map of logits and what to compute for it.
template <typename scalar_t, typename acc_t>
struct MapJob {
  const scalar_t* logits;
  int64_t planes;
  const scalar_t* target;     // N x C x H x W labels, or nullptr: target_value everywhere
  acc_t target_value;
  const scalar_t* grad_loss;  // backward: per-pixel coefficient of g, or nullptr: coefficient
  acc_t coefficient;
  scalar_t* loss_map;         // reduction none: the per-pixel loss, or nullptr
  bool sum_loss;
  scalar_t* grad;             // dloss/dlogits (shape of logits), or nullptr
  Axis<acc_t> rows, cols;
  std::vector<double> unit_loss;   // per unit of work: band, or run of a flat job
  std::vector<acc_t> band_grad;    // planes x h x 2 x w: partial rows for L[b] and L[i1(b)]

  MapJob(const scalar_t* logits_, int64_t planes_, int64_t h, int64_t w, int64_t H, int64_t W)
      : logits(logits_), planes(planes_), target(nullptr), target_value(0), grad_loss(nullptr),
        coefficient(0), loss_map(nullptr), sum_loss(false), grad(nullptr), rows(h, H), cols(w, W) {}

  // Without any resize the loss is elementwise: the maps are cut into fixed runs of kFlatRun
  // values instead of bands (rows can be short), and the gradient is written directly.
  bool flat() const { return rows.identity && cols.identity; }
  int64_t pixels() const { return planes * rows.out * cols.out; }
  int64_t units() const { return flat() ? (pixels() + kFlatRun - 1) / kFlatRun : planes * rows.in; }
  int64_t scratch_width() const { return flat() ? kFlatRun : cols.out; }
};

// The band's inputs for one output row, in acc_t, padded to whole vectors.
template <typename acc_t>
struct RowArgs {
  const acc_t* top;
  const acc_t* bottom;  // or nullptr: one row (no vertical resize), u = w_top * top
  acc_t w_top, w_bottom;
  const acc_t* target;  // or nullptr: target_value
  acc_t target_value;
  const acc_t* coefficient;  // or nullptr: coefficient_value
  acc_t coefficient_value;
};

// Loss and gradient of one output row of `width` pixels (buffers padded to `padded`). Adds
// wt * g and wb * g to acc_top / acc_bottom when they are given; writes the loss to loss_out when
// given; returns the sum of the loss when sum_loss. Scalar version (float64).
template <typename acc_t>
double bce_row(const RowArgs<acc_t>& a, int64_t width, int64_t /*padded*/, bool sum_loss,
               acc_t* loss_out, acc_t* acc_top, acc_t* acc_bottom) {
  double sum = 0;
  for (int64_t x = 0; x < width; ++x) {
    const acc_t u = a.bottom ? a.w_top * a.top[x] + a.w_bottom * a.bottom[x] : a.w_top * a.top[x];
    const acc_t y = a.target ? a.target[x] : a.target_value;
    const auto terms = rtda::bce_with_logits<acc_t>(u, y);
    if (sum_loss) sum += terms.loss;
    if (loss_out) loss_out[x] = terms.loss;
    if (acc_top) {
      const acc_t g = terms.grad * (a.coefficient ? a.coefficient[x] : a.coefficient_value);
      acc_top[x] += a.w_top * g;
      if (acc_bottom) acc_bottom[x] += a.w_bottom * g;
    }
  }
  return sum;
}

// float: the same formula on whole vectors (the padding lanes are computed and then ignored).
template <>
inline double bce_row<float>(const RowArgs<float>& a, int64_t width, int64_t padded, bool sum_loss,
                      float* loss_out, float* acc_top, float* acc_bottom) {
  constexpr int L = lanes<float>();
  VecF index{};
  for (int i = 0; i < L; ++i) index[i] = static_cast<float>(i);
  const VecF zero{};
  VecF sum{};
  for (int64_t x = 0; x < padded; x += L) {
    const VecF top = a.w_top * load_vec(a.top + x);
    const VecF u = a.bottom ? top + a.w_bottom * load_vec(a.bottom + x) : top;
    const VecF y = a.target ? load_vec(a.target + x) : rtda::cpu::splat(a.target_value);
    const VecF e = rtda::cpu::exp_nonpositive(u < zero ? u : -u);
    if (sum_loss || loss_out) {
      const VecF loss = (1.0f - y) * u - (u < zero ? u : zero) + rtda::cpu::log1p_unit(e);
      if (loss_out) store_vec(loss_out + x, loss);
      if (sum_loss) sum += index < static_cast<float>(width - x) ? loss : zero;
    }
    if (acc_top) {
      const VecF s = e * rtda::cpu::reciprocal(e + 1.0f);  // sigmoid(-|u|)
      const VecF coefficient =
          a.coefficient ? load_vec(a.coefficient + x) : rtda::cpu::splat(a.coefficient_value);
      const VecF g = (u >= zero ? (1.0f - y) - s : s - y) * coefficient;
      store_vec(acc_top + x, load_vec(acc_top + x) + a.w_top * g);
      if (acc_bottom) store_vec(acc_bottom + x, load_vec(acc_bottom + x) + a.w_bottom * g);
    }
  }
  double total = 0;
  for (int i = 0; i < L; ++i) total += sum[i];
  return total;
}

// Scratch rows of one thread, padded to whole vectors of acc_t.
template <typename acc_t>
struct Scratch {
  int64_t padded;
  std::vector<acc_t> top, bottom, target, coefficient, loss, acc_top, acc_bottom;

  explicit Scratch(int64_t width) {
    constexpr int64_t L = lanes<float>();
    padded = (width + L - 1) / L * L;
    for (auto* row : {&top, &bottom, &target, &coefficient, &loss, &acc_top, &acc_bottom}) {
      row->assign(padded, acc_t(0));
    }
  }
};

// Row r of one plane of L resized to W columns, in acc_t.
template <typename scalar_t, typename acc_t>
void resize_row(const scalar_t* row, const Axis<acc_t>& cols, acc_t* out) {
  if (cols.identity) {
    for (int64_t x = 0; x < cols.out; ++x) out[x] = static_cast<acc_t>(row[x]);
    return;
  }
  for (int64_t x = 0; x < cols.out; ++x) {
    out[x] = cols.w0[x] * static_cast<acc_t>(row[cols.i0[x]]) +
             cols.w1[x] * static_cast<acc_t>(row[cols.i1[x]]);
  }
}

// The transpose of resize_row: adds row (W values) into out (w values). Gathered per input
// column c from the output columns whose taps reach it (i0 == c: band c; i1 == c: band c - 1, and
// band c itself for the last column), so each sum runs in registers instead of through a chain of
// read-modify-writes of the same few addresses.
template <typename acc_t>
void fold_row(const acc_t* row, const Axis<acc_t>& cols, acc_t* out) {
  if (cols.identity) {
    for (int64_t x = 0; x < cols.out; ++x) out[x] += row[x];
    return;
  }
  const int64_t w = cols.in;
  for (int64_t c = 0; c < w; ++c) {
    acc_t sum = 0;
    for (int64_t x = cols.band_begin[c]; x < cols.band_begin[c + 1]; ++x) sum += cols.w0[x] * row[x];
    const int64_t upper_begin = c == 0 ? 0 : cols.band_begin[c - 1];
    const int64_t upper_end = c == w - 1 ? cols.band_begin[w] : cols.band_begin[c];
    for (int64_t x = upper_begin; x < upper_end; ++x) {
      if (cols.i1[x] == c) sum += cols.w1[x] * row[x];
    }
    out[c] += sum;
  }
}

template <typename scalar_t, typename acc_t>
void to_acc(const scalar_t* in, int64_t n, acc_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<acc_t>(in[i]);
}

// One band b of one plane: its loss sum and its two partial gradient rows.
template <typename scalar_t, typename acc_t>
void run_band(MapJob<scalar_t, acc_t>& job, int64_t plane, int64_t b, Scratch<acc_t>& s) {
  const Axis<acc_t>& rows = job.rows;
  const Axis<acc_t>& cols = job.cols;
  const int64_t h = rows.in, w = cols.in, H = rows.out, W = cols.out;
  const int64_t unit = plane * h + b;
  acc_t* grad_top = job.grad ? job.band_grad.data() + unit * 2 * w : nullptr;
  acc_t* grad_bottom = grad_top ? grad_top + w : nullptr;
  if (grad_top) std::fill(grad_top, grad_top + 2 * w, acc_t(0));
  const int64_t y_begin = rows.band_begin[b], y_end = rows.band_begin[b + 1];
  if (y_begin == y_end) {
    job.unit_loss[unit] = 0;
    return;
  }
  const scalar_t* plane_logits = job.logits + plane * h * w;
  const int64_t b1 = rows.i1[y_begin];
  // With no vertical resize every weight of the lower row is 0: skip it.
  const bool two_rows = !rows.identity;
  resize_row(plane_logits + b * w, cols, s.top.data());
  if (two_rows) resize_row(plane_logits + b1 * w, cols, s.bottom.data());
  if (job.grad) {
    std::fill(s.acc_top.begin(), s.acc_top.end(), acc_t(0));
    std::fill(s.acc_bottom.begin(), s.acc_bottom.end(), acc_t(0));
  }
  RowArgs<acc_t> args{s.top.data(), two_rows ? s.bottom.data() : nullptr, 0, 0,
                      nullptr, job.target_value, nullptr, job.coefficient};
  double sum = 0;
  for (int64_t y = y_begin; y < y_end; ++y) {
    const int64_t pixel = (plane * H + y) * W;
    args.w_top = rows.w0[y];
    args.w_bottom = two_rows ? rows.w1[y] : acc_t(0);
    if (job.target) {
      to_acc(job.target + pixel, W, s.target.data());
      args.target = s.target.data();
    }
    if (job.grad_loss) {
      to_acc(job.grad_loss + pixel, W, s.coefficient.data());
      args.coefficient = s.coefficient.data();
    }
    sum += bce_row<acc_t>(args, W, s.padded, job.sum_loss, job.loss_map ? s.loss.data() : nullptr,
                          job.grad ? s.acc_top.data() : nullptr,
                          job.grad && two_rows ? s.acc_bottom.data() : nullptr);
    if (job.loss_map) {
      for (int64_t x = 0; x < W; ++x) job.loss_map[pixel + x] = static_cast<scalar_t>(s.loss[x]);
    }
  }
  job.unit_loss[unit] = sum;
  if (job.grad) {
    fold_row(s.acc_top.data(), cols, grad_top);
    if (two_rows) fold_row(s.acc_bottom.data(), cols, grad_bottom);
  }
}

// One run of a job without resize: values [unit * kFlatRun, +kFlatRun) of the flattened maps.
template <typename scalar_t, typename acc_t>
void run_flat(MapJob<scalar_t, acc_t>& job, int64_t unit, Scratch<acc_t>& s) {
  const int64_t begin = unit * kFlatRun;
  const int64_t count = std::min(kFlatRun, job.pixels() - begin);
  constexpr int64_t L = lanes<float>();
  to_acc(job.logits + begin, count, s.top.data());
  RowArgs<acc_t> args{s.top.data(), nullptr, acc_t(1), acc_t(0),
                      nullptr, job.target_value, nullptr, job.coefficient};
  if (job.target) {
    to_acc(job.target + begin, count, s.target.data());
    args.target = s.target.data();
  }
  if (job.grad_loss) {
    to_acc(job.grad_loss + begin, count, s.coefficient.data());
    args.coefficient = s.coefficient.data();
  }
  if (job.grad) std::fill(s.acc_top.begin(), s.acc_top.end(), acc_t(0));
  job.unit_loss[unit] = bce_row<acc_t>(args, count, (count + L - 1) / L * L, job.sum_loss,
                                       job.loss_map ? s.loss.data() : nullptr,
                                       job.grad ? s.acc_top.data() : nullptr, nullptr);
  if (job.loss_map) {
    for (int64_t i = 0; i < count; ++i) job.loss_map[begin + i] = static_cast<scalar_t>(s.loss[i]);
  }
  if (job.grad) {
    for (int64_t i = 0; i < count; ++i) job.grad[begin + i] = static_cast<scalar_t>(s.acc_top[i]);
  }
}

// dloss/dL from the bands' partial rows, added in band order, cast to the logits' dtype.
template <typename scalar_t, typename acc_t>
void assemble_grad(const MapJob<scalar_t, acc_t>& job) {
  const int64_t h = job.rows.in, w = job.cols.in;
  std::vector<acc_t> plane_grad(h * w);
  for (int64_t plane = 0; plane < job.planes; ++plane) {
    std::fill(plane_grad.begin(), plane_grad.end(), acc_t(0));
    for (int64_t b = 0; b < h; ++b) {
      const acc_t* top = job.band_grad.data() + (plane * h + b) * 2 * w;
      const acc_t* bottom = top + w;
      acc_t* row_top = plane_grad.data() + b * w;
      acc_t* row_bottom = plane_grad.data() + std::min(b + 1, h - 1) * w;
      for (int64_t x = 0; x < w; ++x) row_top[x] += top[x];
      for (int64_t x = 0; x < w; ++x) row_bottom[x] += bottom[x];
    }
    scalar_t* out = job.grad + plane * h * w;
    for (int64_t i = 0; i < h * w; ++i) out[i] = static_cast<scalar_t>(plane_grad[i]);
  }
}

// Runs every unit of every job in one parallel loop (the discriminator's two maps share it),
// then adds up the units' losses and gradients in a fixed order. Returns each job's loss sum.
template <typename scalar_t, typename acc_t>
std::vector<double> run_jobs(std::vector<MapJob<scalar_t, acc_t>*> jobs) {
  std::vector<int64_t> first_unit{0};
  int64_t pixels = 0;
  for (auto* job : jobs) {
    job->unit_loss.assign(job->units(), 0.0);
    if (job->grad && !job->flat()) job->band_grad.assign(job->units() * 2 * job->cols.in, acc_t(0));
    first_unit.push_back(first_unit.back() + job->units());
    pixels += job->pixels();
  }
  const int64_t units = first_unit.back();
  const int64_t grain = std::max<int64_t>(1, kMinChunkPixels * units / std::max<int64_t>(pixels, 1));
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    std::vector<Scratch<acc_t>> scratch;
    for (auto* job : jobs) scratch.emplace_back(job->scratch_width());
    for (int64_t unit = begin; unit < end; ++unit) {
      const size_t j = std::upper_bound(first_unit.begin(), first_unit.end(), unit) -
                       first_unit.begin() - 1;
      MapJob<scalar_t, acc_t>& job = *jobs[j];
      const int64_t local = unit - first_unit[j];
      if (job.flat()) {
        run_flat(job, local, scratch[j]);
      } else {
        run_band(job, local / job.rows.in, local % job.rows.in, scratch[j]);
      }
    }
  });
  std::vector<double> sums;
  for (auto* job : jobs) {
    double total = 0;
    for (double unit_loss : job->unit_loss) total += unit_loss;
    sums.push_back(total);
    if (job->grad && !job->flat()) assemble_grad(*job);
  }
  return sums;
}

}  // namespace rtda::cpu::adversarial
