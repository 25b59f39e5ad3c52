// Fused linear + cross-entropy (the LM loss head), CPU: the per-chunk row kernel and the op entry points.
//
// Math: csrc/linear_cross_entropy_driver.h (loss, dloss/dz, the softcap chain rule, the z-loss).
//
// Decomposition. The driver forms each chunk's logits Z (R, V) with ATen's BLAS GEMM and calls
// row_kernel on it; the three GEMMs of the gradient run in the driver too. row_kernel splits the R
// rows over threads (at::parallel_for) and sweeps each row with at::vec in place:
//   pass 1  softcap (z = c tanh(l / c), stored over l) fused with the row max m;
//   pass 2  s = sum exp(z - m), and sum_c w_c (z_c - m) when label smoothing is on;
//   pass 3  (gradients only) G_c = g (coef p_c - g0 w_c) (1 - (z_c / c)^2), the target's extra
//           -g (1-e) w_y added from its saved z_y, written over z.
// The backward op (stats given) runs passes 1 (cap only) and 3.
//
// Traffic per chunk (s = 4 bytes for float32): the GEMM writes R V s; passes 1-3 read it 3 times and
// write it twice, all in the compute dtype; the GEMMs then read G twice. Eager PyTorch writes the
// (N, V) logits, reads them into log_softmax (N, V written), nll_loss, then log_softmax's backward
// reads 2 and writes 1 (N, V) tensor: about the same element traffic, but over (N, V) tensors that do
// not fit any cache, where a row of a chunk (V s = 128 KiB for V = 32000) stays in L2 across passes.
//
// Numerics. Everything in float32 (float64 for float64 inputs; float16 / bfloat16 chunks are widened
// to float32 by the driver). sum exp runs in four independent SIMD accumulators over blocks of kBlock
// elements, each block's total added in float64 for float32, so the row sum's error grows with the
// block size, not with V; ls = log(s) in float64 too. exp is ATen's exp_u20 for float32 (<= 20 ulp),
// Sleef's 1-ulp exp for float64. Max subtraction keeps exp <= 1. The loss is assembled from
// max-relative terms (lse - z_y = (m - z_y) + ls >= 0), so nothing cancels at ulp(m). A row whose max
// is not finite (NaN, +inf, or all -inf) gets a NaN loss and gradient, as torch's log_softmax path.
// Ignored rows: loss 0 and an exact zero gradient row.
//
// Preconditions (check_linear_cross_entropy_args and the driver): z contiguous; targets in [0, V) or
// ignore_index (checked before any GEMM).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "cpu/vec_exp.h"
#include "fastops.h"
#include "linear_cross_entropy_driver.h"

namespace fastops {
namespace {

using at::vec::Vectorized;
using lce::ChunkView;
using lce::RowParams;
using cpu::vexp;

template <typename T>
using wide_t = std::conditional_t<std::is_same_v<T, float>, double, T>;

constexpr int64_t kBlock = 1024;

// sum_i exp(x_i - m) over n elements: four SIMD accumulators per block of kBlock, block totals in wide_t.
template <typename T>
wide_t<T> sum_exp(const T* x, int64_t n, T m) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const V vm(m);
  wide_t<T> total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    V s0(0), s1(0), s2(0), s3(0);
    int64_t i = b0;
    for (; i + 4 * L <= b1; i += 4 * L) {
      s0 = s0 + vexp(V::loadu(x + i) - vm);
      s1 = s1 + vexp(V::loadu(x + i + L) - vm);
      s2 = s2 + vexp(V::loadu(x + i + 2 * L) - vm);
      s3 = s3 + vexp(V::loadu(x + i + 3 * L) - vm);
    }
    for (; i + L <= b1; i += L) s0 = s0 + vexp(V::loadu(x + i) - vm);
    if (i < b1) s1 = s1 + V::set(V(0), vexp(V::loadu(x + i, b1 - i) - vm), b1 - i);
    const V s = (s0 + s1) + (s2 + s3);
    T lanes[L];
    s.store(lanes);
    for (int64_t j = 0; j < L; ++j) total += lanes[j];
  }
  return total;
}

// Pass 1: cap in place (when c > 0) and return the row max.
template <typename T>
T cap_and_max(T* z, int64_t V, T c) {
  using V_ = Vectorized<T>;
  if (c > 0) {
    const V_ vc(c), inv(T(1) / c);
    at::vec::map([&](V_ l) { return vc * (l * inv).tanh(); }, z, z, V);
  }
  return at::vec::reduce_all<T>([](V_ a, V_ b) { return at::vec::maximum(a, b); }, z, V);
}

template <typename T>
void row_kernel(const ChunkView<T>& cv, const RowParams<T>& p) {
  using V_ = Vectorized<T>;
  using A = wide_t<T>;
  const int64_t V = p.V;
  const T e = p.eps, Vt = static_cast<T>(V), nan = std::numeric_limits<T>::quiet_NaN();
  at::parallel_for(0, cv.n, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* z = cv.z + r * V;
      const int64_t y = cv.y[r];
      const bool ignored = y == p.ignore_index;
      T m, ls;
      if (cv.have_stats) {
        if (p.softcap > 0 && !ignored && cv.write_grad) cap_and_max(z, V, p.softcap);
        m = cv.m[r];
        ls = cv.ls[r];
      } else {
        m = cap_and_max(z, V, p.softcap);
        const bool finite = std::isfinite(m);
        const A s = finite ? sum_exp<T>(z, V, m) : A(1);
        const A lsw = std::log(s);
        ls = static_cast<T>(lsw);
        cv.m[r] = m;
        cv.ls[r] = ls;
        if (ignored) {
          cv.loss[r] = 0;
        } else if (!finite) {
          cv.loss[r] = nan;
        } else {
          A smooth = 0;
          if (e > 0) {
            const V_ vm(m);
            const auto add = [](V_ a, V_ b) { return a + b; };
            // sum_c w_c (lse - z_c) = W ls + sum_c w_c (m - z_c): every term >= 0
            const A sxr = p.w ? at::vec::map2_reduce_all<T>([&](V_ zv, V_ wv) { return (vm - zv) * wv; }, add, z,
                                                            p.w, V)
                              : at::vec::map_reduce_all<T>([&](V_ zv) { return vm - zv; }, add, z, V);
            smooth = A(e) / A(V) * (A(p.wsum) * lsw + sxr);
          }
          const A wy = p.w ? A(p.w[y]) : A(1);
          const A lse = A(m) + lsw;
          cv.loss[r] = static_cast<T>((1 - A(e)) * wy * ((A(m) - A(z[y])) + lsw) + smooth + A(p.z_loss) * lse * lse);
        }
      }
      if (!cv.write_grad) continue;
      if (ignored) {
        std::fill(z, z + V, T(0));
        continue;
      }
      if (!std::isfinite(m) || !std::isfinite(ls)) {
        std::fill(z, z + V, nan);
        continue;
      }
      const T g = cv.g[r];
      const T wy = p.w ? p.w[y] : T(1);
      const T lse = m + ls;
      const T coef_s = g * ((1 - e) * wy + (e > 0 ? e * p.wsum / Vt : T(0)) + 2 * p.z_loss * lse);
      const T g0_s = e > 0 ? g * e / Vt : T(0), g1 = g * (1 - e) * wy;
      const T z_y = z[y];
      const V_ vm(m), vls(ls), coef(coef_s), g0(g0_s);
      const auto prob = [&](V_ zv) { return vexp((zv - vm) - vls); };
      const T* w_s = e > 0 ? p.w : nullptr;  // the class weights enter the gradient through smoothing only
      if (p.softcap > 0) {
        const V_ inv(T(1) / p.softcap), one(1);
        const auto cap_d = [&](V_ zv) {
          const V_ u = zv * inv;
          return one - u * u;
        };
        if (w_s) {
          at::vec::map2<T>([&](V_ zv, V_ wv) { return (coef * prob(zv) - g0 * wv) * cap_d(zv); }, z, z, w_s, V);
        } else {
          at::vec::map<T>([&](V_ zv) { return (coef * prob(zv) - g0) * cap_d(zv); }, z, z, V);
        }
        const T u = z_y / p.softcap;
        z[y] = (coef_s * std::exp((z_y - m) - ls) - g0_s * (w_s ? w_s[y] : T(1)) - g1) * (1 - u * u);
      } else {
        if (w_s) {
          at::vec::map2<T>([&](V_ zv, V_ wv) { return coef * prob(zv) - g0 * wv; }, z, z, w_s, V);
        } else {
          at::vec::map<T>([&](V_ zv) { return coef * prob(zv) - g0; }, z, z, V);
        }
        z[y] -= g1;
      }
    }
  });
}

struct CpuRowKernel {
  template <typename T>
  void operator()(const ChunkView<T>& cv, const RowParams<T>& p) const {
    row_kernel<T>(cv, p);
  }
};

// A capability refusal for a floating dtype the kernel lacks. A non-floating x is left to the argument
// contract (check_linear_cross_entropy_args: "x must be a floating tensor"), so the message is the same
// as every other backend's.
void check_cpu(const char* op, const at::Tensor& x) {
  const auto dt = x.scalar_type();
  if (!at::isFloatingType(dt)) return;
  FASTOPS_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
                     ": the CPU kernel takes float16, bfloat16, float32 or float64 x, got ", dt,
                     " (use backend='torch' for other dtypes)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_fwd_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target,
    const std::optional<at::Tensor>& class_weight, int64_t ignore_index, double label_smoothing, double softcap,
    double z_loss, int64_t reduction, int64_t chunk_rows, bool compute_grad) {
  const char* op = "linear_cross_entropy_fwd";
  check_cpu(op, x);
  return lce::linear_cross_entropy(op, nullptr, x, weight, bias, target, class_weight, nullptr, ignore_index,
                                   label_smoothing, softcap, z_loss, reduction, chunk_rows, compute_grad,
                                   CpuRowKernel{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_bwd_cpu(
    const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& class_weight, const at::Tensor& stats,
    int64_t ignore_index, double label_smoothing, double softcap, double z_loss, int64_t reduction,
    int64_t chunk_rows) {
  const char* op = "linear_cross_entropy_bwd";
  check_cpu(op, x);
  auto [l, st, gx, gw, gb] =
      lce::linear_cross_entropy(op, &grad_loss, x, weight, bias, target, class_weight, &stats, ignore_index,
                                label_smoothing, softcap, z_loss, reduction, chunk_rows, true, CpuRowKernel{});
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("linear_cross_entropy_fwd", &linear_cross_entropy_fwd_cpu);
  m.impl("linear_cross_entropy_bwd", &linear_cross_entropy_bwd_cpu);
}

}  // namespace fastops
