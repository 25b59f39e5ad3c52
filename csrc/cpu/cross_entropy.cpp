// Softmax cross-entropy, C++ kernels for CPU tensors (float16, bfloat16, float32, float64).
//
// Math. Row i has logits x (C classes), row max m, ls = log sum_c exp(x_c - m) (so the log-sum-exp
// is lse = m + ls), class weights w (1 when absent), W = sum_c w_c, label smoothing e.
//   class index y:  loss = (1-e) w_y ((m - x_y) + ls) + e/C (W ls + sum_c w_c (m - x_c))   (0 if y == ignore)
//                   dloss/dx_c = g [ p_c ((1-e) w_y + e W / C) - (1-e) w_y [c == y] - e/C w_c ]
//   probabilities t: with t' = (1-e) t + e/C,
//                   loss = sum_c w_c t'_c ((m - x_c) + ls)
//                   dloss/dx_c = g [ p_c sum_k w_k t'_k - w_c t'_c ]
//   where p_c = exp((x_c - m) - ls) and g is the row's upstream gradient (reduction folded in).
// The forward saves (m, ls) per row, never lse = m + ls rounded: that rounding costs ulp(m) / 2 in
// every exp argument and in a loss that is small next to m (3.9e-3 for float32 logits near 1e5;
// shifting all logits by a constant must not change the result). Written relative to m, every term
// of the loss is >= 0, so no large m * W - sum w x difference is ever formed.
//
// Decomposition. logits are viewed as (B, C, D), row r = (b, d). D == 1 ((N, C) and (C,)): rows
// are contiguous; at::parallel_for splits rows over threads and each row is swept with at::vec in
// blocks of kBlock elements that stay in L1: the block's max, then one exp per element into the
// running sum (rescaled once per block, not per element), then the weighted/target sums the loss
// needs (relative to the block-updated max, re-based by (m_old - m_new) * partial sum when the max
// moves), all from L1. D > 1 ((N, C, d1..dk)): a row is strided by D, so the SIMD lanes run over
// D consecutive rows instead (contiguous loads along d) with a per-lane online max/sum-exp.
// float16 / bfloat16 logits: the forward's row path widens each block to float32 in L1 in the same
// sweep that finds the block's max (and the target-probability block), then runs the float32 block
// code on it; the backward's row path is one sweep that widens each vector and rounds each result
// once as it stores it; the lane path widens each load and narrows each store.
//
// Traffic (s = bytes per logit: 4 for float32, 2 for float16 / bfloat16; N x C logits): forward
// reads N*C*s bytes once and writes 3 accumulation-type numbers per row; backward reads the
// logits once and writes the gradient once: 3*N*C*s bytes for forward+backward (+2*N*C*s with
// probability targets, read once per pass). Unfused PyTorch (log_softmax, nll_loss, their
// backwards) moves about 6 N x C tensors: ~6*N*C*s bytes, and keeps an N x C log_softmax.
//
// Numerics. The sum of exp is compensated: within an L1 block each SIMD lane adds with Kahan
// compensation, and across blocks (row path) the sums run in float64 for float32 input; the lane
// path adds each class with Kahan compensation. The other row sums (smoothing, probabilities) are
// two-level, input-dtype lanes within a block and the wide type across blocks. A plain float32 running sum loses every later term once it holds ~1 (a dominant
// logit first): with x = 2 randn(262144), x_0 = 30 the tail sum 1.8e-7 is below ulp(1) / 2 term by
// term and block by block, so the loss came out exactly 0 (float64: 1.83e-7, torch float32:
// 1.19e-7) and the target's gradient 0. ls = log(s) is taken in the wide type too: log of a float32
// s = 1 + 1.8e-7 would keep one significant bit of it. Max subtraction makes exp never overflow. float32 uses ATen's exp_u20 (<= 20
// ulp). A row whose max is not finite gets a NaN loss and gradient, as torch's log_softmax path:
// NaN in the row, all -inf (m = -inf), or a +inf logit (m = +inf).
// float16 / bfloat16 logits compute exactly as float32 ones (widening is exact): the weights are
// widened once per call, the loss and the (m, ls) stats are float32 (the accumulation dtype,
// cross_entropy_acc_dtype), and each gradient element is computed in float32 (the target class's
// -(1-e) w_y term included) and rounded to the logits' dtype once, when stored. torch instead
// rounds its log_softmax to bfloat16 before nll_loss and the softmax backward reads that back.
//
// Preconditions (checked in check_cross_entropy_args): C >= 1; target int64 of the row shape or
// float of logits' shape; weight (C,). Class indices outside [0, C) other than ignore_index raise
// IndexError before anything is read at that index.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/reduced_float.h"
#include "cpu/vec_exp.h"
#include "fastops.h"

namespace fastops {
namespace {

using at::vec::Vectorized;
using cpu::compute_t;
using cpu::convert_n;
using cpu::is_reduced_v;
using cpu::load_wide;
using cpu::store_narrow;
using cpu::store_narrow2;
using cpu::vexp;
using cpu::vexp_keep_nan;
using cpu::widen;

// Logits, targets and weights as the kernels see them: S is the storage type of the logits (and of
// probability targets), T = compute_t<S> the arithmetic type (float for float16 / bfloat16 /
// float32, double for float64). Weights are widened to T once per call.
template <typename S>
struct Args {
  using T = compute_t<S>;
  const S* x;          // logits (B, C, D)
  const int64_t* y;    // class indices (B, D), or null
  const S* t;          // class probabilities (B, C, D), or null
  const T* w;          // class weights (C,), or null
  int64_t B, C, D;
  int64_t ignore_index;
  T eps;               // label smoothing
  T wsum;              // W = sum_c w_c (C without weights)
};

template <typename S>
inline void check_index(int64_t yv, int64_t r, const Args<S>& a) {
  FASTOPS_CHECK_INDEX(yv >= 0 && yv < a.C, "cross_entropy: target[", r, "] = ", yv, " is out of bounds for ", a.C,
                      " classes (expected 0 <= target < ", a.C, ", or target == ignore_index ", a.ignore_index, ")");
}

// L1-resident block: 8 KiB of compute-type logits plus the same of target probabilities (float16 /
// bfloat16 rows are widened into such blocks first).
template <typename T>
constexpr int64_t kBlock = 8192 / sizeof(T);

// ---- D == 1: contiguous rows ------------------------------------------------------------------

// The type the row sums are carried in across blocks: float64 for float32 arithmetic (see Numerics).
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, float>, double, T>;

template <typename T>
struct RowSums {
  using A = acc_t<T>;
  T m;     // row max
  A ls;    // log sum_c exp(x_c - m)
  A sxr;   // sum_c w_c (x_c - m)         (smoothing)
  A swt;   // sum_c w_c t_c               (probabilities)
  A swtxr; // sum_c w_c t_c (x_c - m)     (probabilities)
};

// sum_i exp(x_i - m) over n contiguous elements, in the wide type: each SIMD lane adds with Kahan
// compensation (a lane that holds exp(0) = 1 would otherwise drop every term below ulp(1) / 2), four
// independent lane sets so the compensation's four dependent adds do not serialise the loop, and
// the lanes' (sum - compensation) are added in acc_t.
template <typename T>
acc_t<T> sum_exp_compensated(const T* x, int64_t n, T m) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size(), U = 4;
  const V vm(m), zero(0);
  V s[U] = {zero, zero, zero, zero}, c[U] = {zero, zero, zero, zero};
  const auto add = [&](int64_t u, const V& e) {
    const V y = e - c[u];
    const V t = s[u] + y;
    c[u] = (t - s[u]) - y;
    s[u] = t;
  };
  int64_t i = 0;
  for (; i + U * L <= n; i += U * L) {
    for (int64_t u = 0; u < U; ++u) add(u, vexp(V::loadu(x + i + u * L) - vm));
  }
  for (; i + L <= n; i += L) add(0, vexp(V::loadu(x + i) - vm));
  if (i < n) add(1, V::set(zero, vexp(V::loadu(x + i, n - i) - vm), n - i));
  acc_t<T> total = 0;
  T sv[L], cv[L];
  for (int64_t u = 0; u < U; ++u) {
    s[u].store(sv);
    c[u].store(cv);
    for (int64_t j = 0; j < L; ++j) total += acc_t<T>(sv[j]) - acc_t<T>(cv[j]);
  }
  return total;
}

// The shift the relative sums are taken against: the running max, or 0 while it is -inf (every
// element so far is -inf, and x - (-inf) would be NaN for them).
template <typename T>
inline T sum_shift(T m) {
  return m == -std::numeric_limits<T>::infinity() ? T(0) : m;
}

// The block's max, and the block itself in compute_t<S> (x, or x widened into buf in the same sweep).
template <typename S, typename T = compute_t<S>>
const T* widen_max(const S* x, int64_t n, T* buf, T& max) {
  using V = Vectorized<T>;
  const auto vmax = [](const V& a, const V& b) { return at::vec::maximum(a, b); };
  if constexpr (!is_reduced_v<S>) {
    max = at::vec::reduce_all<T>(vmax, x, n);
    return x;
  } else {
    const V ninf(-std::numeric_limits<T>::infinity());
    V m = ninf;
    for (int64_t i = 0; i < n; i += V::size()) {
      const int64_t k = std::min<int64_t>(V::size(), n - i);
      const V v = load_wide(x + i, k);
      v.store(buf + i, k);
      m = vmax(m, k == V::size() ? v : V::set(ninf, v, k));
    }
    max = at::vec::vec_reduce_all<T>(vmax, m);
    return buf;
  }
}

// scratch: 2 kBlock<T> elements, used when S is narrower than T (the widened x and t blocks).
// A term t_c (x_c - m) of swtxr. With label smoothing e > 0 every class carries target weight
// (1 - e) t_c + e / C > 0, as torch computes it: a class with t_c = 0 and x_c = -inf then adds
// nothing here and its -inf comes in through the smoothing sum (loss +inf, torch's), where the
// product alone would be 0 * -inf = NaN. Without smoothing the NaN is torch's result too
// (-(t * log_softmax(x)).sum()), so the product stays.
template <typename T>
inline Vectorized<T> zero_target_term(const Vectorized<T>& t, const Vectorized<T>& term, bool smoothing) {
  return smoothing ? Vectorized<T>::blendv(term, Vectorized<T>(0), t == Vectorized<T>(0)) : term;
}

// A term that label smoothing e adds: dropped, not multiplied by 0, when e == 0, so that a NaN or inf
// weight of a class that is no target, or an infinite upstream gradient, does not make every
// gradient of the row NaN through 0 * inf (torch's gradient has no smoothing terms then).
template <typename T>
inline T smooth_term(T v, T e) {
  return e > 0 ? v : T(0);
}

template <typename S, typename T = compute_t<S>>
RowSums<T> row_sums(const S* x, const S* t, const T* w, int64_t C, bool need_sx, T* scratch) {
  using V = Vectorized<T>;
  const auto vadd = [](const V& a, const V& b) { return a + b; };
  const auto vmul = [](const V& a, const V& b) { return a * b; };
  using A = acc_t<T>;
  T m = -std::numeric_limits<T>::infinity();
  A s = 0;
  A ws = 0;  // sum of w_c over the blocks seen (what sxr's terms are shifted by when m moves)
  RowSums<T> out{0, 0, 0, 0, 0};
  for (int64_t c0 = 0; c0 < C; c0 += kBlock<T>) {
    const int64_t n = std::min(kBlock<T>, C - c0);
    T bm;
    const T* xb = widen_max(x + c0, n, scratch, bm);
    const T shift_old = sum_shift(m);
    if (std::isnan(bm)) {
      m = bm;
      s = 1;
    } else if (bm > m) {
      s *= std::exp(A(m) - A(bm));
      m = bm;
    }
    const T shift = sum_shift(m);
    if (shift != shift_old) {  // re-base the relative sums on the new max (terms stay <= 0)
      out.sxr += (A(shift_old) - A(shift)) * ws;
      out.swtxr += (A(shift_old) - A(shift)) * out.swt;
    }
    if (std::isfinite(m)) {  // -inf so far: nothing to add; +inf / NaN: the row is NaN anyway (and
                             // exp_u20 must not see the NaN of inf - inf)
      s += sum_exp_compensated<T>(xb, n, m);
    }
    const V vs(shift);
    if (need_sx) {
      if (w) {
        out.sxr += at::vec::map2_reduce_all<T>([&](V xv, V wv) { return (xv - vs) * wv; }, vadd, xb, w + c0, n);
        ws += at::vec::reduce_all<T>(vadd, w + c0, n);
      } else {
        out.sxr += at::vec::map_reduce_all<T>([&](V xv) { return xv - vs; }, vadd, xb, n);
        ws += static_cast<T>(n);
      }
    }
    if (t) {
      const T* tb = widen(t + c0, n, scratch + kBlock<T>);
      if (w) {
        out.swt += at::vec::map2_reduce_all<T>(vmul, vadd, tb, w + c0, n);
        out.swtxr += at::vec::map3_reduce_all<T>([&](V a, V b, V c) { return zero_target_term(a, a * b * (c - vs), need_sx); },
                                                 vadd, tb, w + c0, xb, n);
      } else {
        out.swt += at::vec::reduce_all<T>(vadd, tb, n);
        out.swtxr += at::vec::map2_reduce_all<T>([&](V a, V c) { return zero_target_term(a, a * (c - vs), need_sx); },
                                                 vadd, tb, xb, n);
      }
    }
  }
  out.m = m;
  out.ls = std::log(s);
  return out;
}

// The loss from the max-relative sums: every term is >= 0 (lse - x_c = (m - x_c) + ls), so nothing
// cancels, and the loss of a row whose target is its max is ls itself, not (m + ls) - m rounded at
// ulp(m). A row whose max is not finite (all -inf, a +inf or a NaN logit) gets a NaN loss, as
// torch's log_softmax path.
template <typename S, typename T = compute_t<S>>
T row_loss(const Args<S>& a, int64_t r, const RowSums<T>& rs, T x_y) {
  using A = acc_t<T>;
  const A e = a.eps, C = static_cast<A>(a.C);
  if (!a.t && a.y[r] == a.ignore_index) return 0;
  if (!std::isfinite(rs.m)) return std::numeric_limits<T>::quiet_NaN();
  const A smooth = e > 0 ? e / C * (A(a.wsum) * rs.ls - rs.sxr) : A(0);
  // e == 1: the (1 - e) term is dropped, not multiplied by 0: a probability on a -inf logit makes it
  // +inf, and torch's weights (1 - e) t + e / C = 1 / C give +inf, not 0 * inf = NaN.
  if (a.t) return static_cast<T>((e < 1 ? (1 - e) * (rs.swt * rs.ls - rs.swtxr) : A(0)) + smooth);
  const A wy = a.w ? a.w[a.y[r]] : T(1);
  return static_cast<T>((1 - e) * wy * ((A(rs.m) - A(x_y)) + rs.ls) + smooth);
}

// Scratch for the widened blocks of one thread: empty when S is its own compute type.
template <typename S, typename T = compute_t<S>>
std::vector<T> block_scratch(int64_t blocks) {
  return std::vector<T>(is_reduced_v<S> ? static_cast<size_t>(blocks * kBlock<T>) : 0);
}

template <typename S, typename T = compute_t<S>>
void fwd_rows(const Args<S>& a, T* loss, T* stats) {
  const int64_t rows = a.B;
  at::parallel_for(0, rows, std::max<int64_t>(1, at::internal::GRAIN_SIZE / a.C), [&](int64_t r0, int64_t r1) {
    std::vector<T> scratch = block_scratch<S>(2);
    for (int64_t r = r0; r < r1; ++r) {
      const S* x = a.x + r * a.C;
      T x_y = 0;
      if (!a.t) {
        const int64_t yv = a.y[r];
        if (yv != a.ignore_index) {
          check_index(yv, r, a);
          x_y = static_cast<T>(x[yv]);
        }
      }
      const RowSums<T> rs = row_sums<S>(x, a.t ? a.t + r * a.C : nullptr, a.w, a.C, a.eps > 0, scratch.data());
      stats[r] = rs.m;
      stats[rows + r] = static_cast<T>(rs.ls);
      loss[r] = row_loss(a, r, rs, x_y);
    }
  });
}

// o[i] = f(x[i], t[i] (0 without t), w[i] (1 without w)) for i < n, x and t widened per vector and
// the result rounded to S once per element: the float16 / bfloat16 backward's one sweep.
template <typename S, typename T, typename F>
void map_row_narrow(const S* x, const S* t, const T* w, S* o, int64_t n, const F& f) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const V zero(T(0)), one(T(1));
  const auto at = [&](int64_t i, int64_t k) {  // f of elements [i, i + k), k <= L
    if (k <= 0) return zero;
    return f(load_wide(x + i, k), t ? load_wide(t + i, k) : zero, w ? V::loadu(w + i, k) : one);
  };
  for (int64_t i = 0; i < n; i += 2 * L) {  // two vectors per narrowing conversion
    const int64_t k = std::min<int64_t>(2 * L, n - i);
    store_narrow2(at(i, std::min<int64_t>(L, k)), at(i + L, k - L), o + i, k);
  }
}

// p_c = exp((x_c - m) - ls): x_c - m is exact for x_c within a factor 2 of m (Sterbenz), so the
// probabilities of the classes near the max keep full relative precision at any logit offset.
// float32 / float64 rows are swept in place; a float16 / bfloat16 row in one sweep that widens each
// vector of logits (and targets), computes in float32 and rounds once when storing; the target's
// element, whose -(1-e) w_y term the sweep leaves out, is then recomputed in float32 and rounded once.
template <typename S, typename T = compute_t<S>>
void bwd_rows(const Args<S>& a, const T* grad, const T* stats, S* out) {
  using V = Vectorized<T>;
  const T e = a.eps, C = static_cast<T>(a.C);
  at::parallel_for(0, a.B, std::max<int64_t>(1, at::internal::GRAIN_SIZE / a.C), [&](int64_t r0, int64_t r1) {
    std::vector<T> tbuf = block_scratch<S>(1);  // a widened block of probability targets (for sum w t)
    for (int64_t r = r0; r < r1; ++r) {
      const S* x = a.x + r * a.C;
      S* o = out + r * a.C;
      const T g = grad[r];
      const V vm(stats[r]), vls(stats[a.B + r]);
      const auto p = [&](const V& xv) { return vexp((xv - vm) - vls); };
      // NaN, +inf or all -inf rows: a NaN gradient
      const bool finite = std::isfinite(stats[r]) && std::isfinite(stats[a.B + r]);
      if (a.t) {
        const S* t = a.t + r * a.C;
        if (!finite) {
          std::fill(o, o + a.C, std::numeric_limits<S>::quiet_NaN());
          continue;
        }
        const auto vadd = [](const V& u, const V& v) { return u + v; };
        T swt = 0;
        for (int64_t c0 = 0; c0 < a.C; c0 += kBlock<T>) {
          const int64_t n = std::min(kBlock<T>, a.C - c0);
          const T* tb = widen(t + c0, n, tbuf.data());
          swt += a.w ? at::vec::map2_reduce_all<T>([](V u, V v) { return u * v; }, vadd, tb, a.w + c0, n)
                     : at::vec::reduce_all<T>(vadd, tb, n);
        }
        const V coef(g * (1 - e) * swt + smooth_term(g * e / C * a.wsum, e)), g1(g * (1 - e)),
            g0(smooth_term(g * e / C, e));
        if constexpr (is_reduced_v<S>) {
          map_row_narrow(x, t, a.w, o, a.C, [&](V xv, V tv, V wv) { return coef * p(xv) - (g1 * tv + g0) * wv; });
        } else if (a.w) {
          at::vec::map3<T>([&](V xv, V tv, V wv) { return coef * p(xv) - (g1 * tv + g0) * wv; }, o, x, t, a.w, a.C);
        } else {
          at::vec::map2<T>([&](V xv, V tv) { return coef * p(xv) - (g1 * tv + g0); }, o, x, t, a.C);
        }
        continue;
      }
      const int64_t yv = a.y[r];
      if (yv == a.ignore_index) {  // exact zeros; NaN when the row's max is not finite, as torch's
        std::fill(o, o + a.C, finite ? S(0) : std::numeric_limits<S>::quiet_NaN());  // log_softmax backward
        continue;
      }
      check_index(yv, r, a);
      if (!finite) {
        std::fill(o, o + a.C, std::numeric_limits<S>::quiet_NaN());
        continue;
      }
      const T wy = a.w ? a.w[yv] : T(1);
      const T coef_s = g * (1 - e) * wy + smooth_term(g * e / C * a.wsum, e), g0_s = smooth_term(g * e / C, e);
      const V coef(coef_s), g0(g0_s);
      const T* w_smooth = a.w && e > 0 ? a.w : nullptr;  // the weights enter only through smoothing
      if constexpr (is_reduced_v<S>) {
        const T x_y = static_cast<T>(x[yv]);  // read before the sweep: in place, o is x
        map_row_narrow(x, static_cast<const S*>(nullptr), w_smooth, o, a.C,
                       [&](V xv, V, V wv) { return coef * p(xv) - g0 * wv; });
        const T p_y = std::exp((x_y - stats[r]) - stats[a.B + r]);
        o[yv] = static_cast<S>(coef_s * p_y - g0_s * (w_smooth ? w_smooth[yv] : T(1)) - g * (1 - e) * wy);
      } else {
        if (w_smooth) {
          at::vec::map2<T>([&](V xv, V wv) { return coef * p(xv) - g0 * wv; }, o, x, w_smooth, a.C);
        } else {
          at::vec::map<T>([&](V xv) { return coef * p(xv) - g0; }, o, x, a.C);
        }
        o[yv] -= g * (1 - e) * wy;
      }
    }
  });
}

// ---- D > 1: SIMD lanes over consecutive rows (b, d0 .. d0+L) ----------------------------------

// a - m, but -inf where the running max m is still -inf (exp of it is then 0, not NaN).
template <typename T>
inline Vectorized<T> sub_max(const Vectorized<T>& a, const Vectorized<T>& m) {
  using V = Vectorized<T>;
  const V ninf(-std::numeric_limits<T>::infinity());
  return V::blendv(a - m, ninf, m == ninf);
}

template <typename S, typename T = compute_t<S>>
void fwd_cols(const Args<S>& a, T* loss, T* stats) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t chunks = (a.D + L - 1) / L, rows = a.B * a.D;
  const bool need_sx = a.eps > 0;
  at::parallel_for(0, a.B * chunks, std::max<int64_t>(1, at::internal::GRAIN_SIZE / (a.C * L)), [&](int64_t i0,
                                                                                                      int64_t i1) {
    T m_[L], s_[L], sc_[L], sxr_[L], swt_[L], swtxr_[L];
    const V ninf(-std::numeric_limits<T>::infinity()), zero(0);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / chunks, d0 = (i % chunks) * L, n = std::min(L, a.D - d0);
      const S* xb = a.x + b * a.C * a.D + d0;
      const S* tb = a.t ? a.t + b * a.C * a.D + d0 : nullptr;
      // Per lane as row_sums: relative sums against shift = m (0 while m is -inf), re-based when m moves.
      // s carries a Kahan compensation sc (the low part lost by the last additions), rescaled with s.
      V m(ninf), s(0), sc(0), sxr(0), ws(0), swt(0), swtxr(0), shift(0);
      for (int64_t c = 0; c < a.C; ++c) {
        const V xv = load_wide(xb + c * a.D, n);
        const V mn = at::vec::maximum(m, xv);
        const V scale = vexp_keep_nan(sub_max(m, mn));
        s = s * scale;
        sc = sc * scale;
        const V term = vexp_keep_nan(sub_max(xv, mn)) - sc;
        const V sum = s + term;
        sc = (sum - s) - term;
        s = sum;
        m = mn;
        const V shift_new = V::blendv(mn, zero, mn == ninf), delta = shift - shift_new;
        shift = shift_new;
        const V wc(a.w ? a.w[c] : T(1));
        if (need_sx) {
          sxr = sxr + delta * ws + wc * (xv - shift);
          ws = ws + wc;
        }
        if (tb) {
          const V tv = load_wide(tb + c * a.D, n) * wc;
          swtxr = swtxr + delta * swt + zero_target_term(tv, tv * (xv - shift), need_sx);
          swt = swt + tv;
        }
      }
      m.store(m_, n);
      s.store(s_, n);
      sc.store(sc_, n);
      sxr.store(sxr_, n);
      swt.store(swt_, n);
      swtxr.store(swtxr_, n);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t r = b * a.D + d0 + j;
        using A = acc_t<T>;
        const RowSums<T> rs{m_[j], std::log(A(s_[j]) - A(sc_[j])), sxr_[j], swt_[j], swtxr_[j]};
        T x_y = 0;
        if (!a.t && a.y[r] != a.ignore_index) {
          check_index(a.y[r], r, a);
          x_y = static_cast<T>(xb[a.y[r] * a.D + j]);
        }
        stats[r] = rs.m;
        stats[rows + r] = static_cast<T>(rs.ls);
        loss[r] = row_loss(a, r, rs, x_y);
      }
    }
  });
}

template <typename S, typename T = compute_t<S>>
void bwd_cols(const Args<S>& a, const T* grad, const T* stats, S* out) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t chunks = (a.D + L - 1) / L, rows = a.B * a.D;
  const T e = a.eps, C = static_cast<T>(a.C);
  at::parallel_for(0, a.B * chunks, std::max<int64_t>(1, at::internal::GRAIN_SIZE / (a.C * L)), [&](int64_t i0,
                                                                                                      int64_t i1) {
    T coef_[L], g1_[L], g0_[L], xy_[L];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / chunks, d0 = (i % chunks) * L, n = std::min(L, a.D - d0);
      const int64_t base = b * a.C * a.D + d0, r0 = b * a.D + d0;
      const S* xb = a.x + base;
      S* ob = out + base;
      const V vm = V::loadu(stats + r0, n), vls = V::loadu(stats + rows + r0, n), vg = V::loadu(grad + r0, n);
      // p_c = exp((x_c - m) - ls), as bwd_rows; a non-finite m or ls makes the lane NaN.
      const auto p = [&](int64_t c) { return vexp_keep_nan((load_wide(xb + c * a.D, n) - vm) - vls); };
      if (a.t) {
        const S* tb = a.t + base;
        V swt(0);
        for (int64_t c = 0; c < a.C; ++c) swt = swt + load_wide(tb + c * a.D, n) * V(a.w ? a.w[c] : T(1));
        const V coef = e > 0 ? vg * (V(1 - e) * swt + V(e / C * a.wsum)) : vg * swt, g1 = vg * V(1 - e),
                g0 = e > 0 ? vg * V(e / C) : V(0);
        for (int64_t c = 0; c < a.C; ++c) {
          const V wc(a.w ? a.w[c] : T(1));
          const V tv = load_wide(tb + c * a.D, n);
          store_narrow(coef * p(c) - (g1 * tv + g0) * wc, ob + c * a.D, n);
        }
        continue;
      }
      // Ignored rows get coef = g0 = g1 = 0: an exact zero gradient.
      for (int64_t j = 0; j < n; ++j) {
        const int64_t r = r0 + j, yv = a.y[r];
        coef_[j] = g1_[j] = g0_[j] = 0;
        if (yv == a.ignore_index) continue;
        check_index(yv, r, a);
        const T wy = a.w ? a.w[yv] : T(1);
        coef_[j] = grad[r] * (1 - e) * wy + smooth_term(grad[r] * e / C * a.wsum, e);
        g1_[j] = grad[r] * (1 - e) * wy;
        g0_[j] = smooth_term(grad[r] * e / C, e);
        xy_[j] = static_cast<T>(xb[yv * a.D + j]);  // read before the sweep: in place, ob is xb
      }
      const V g0 = V::loadu(g0_, n);
      const V coef = V::loadu(coef_, n);
      for (int64_t c = 0; c < a.C; ++c) {
        const V wc(a.w ? a.w[c] : T(1));
        store_narrow(coef * p(c) - g0 * wc, ob + c * a.D, n);
      }
      // The target's extra -g1 term. float16 / bfloat16: the target element is recomputed in float32
      // and rounded once (subtracting from the stored value would round twice).
      for (int64_t j = 0; j < n; ++j) {
        const int64_t r = r0 + j, yv = a.y[r];
        if (yv == a.ignore_index) continue;
        S& o = ob[yv * a.D + j];
        if constexpr (is_reduced_v<S>) {
          const T pj = std::exp((xy_[j] - stats[r]) - stats[rows + r]);
          o = static_cast<S>(coef_[j] * pj - g0_[j] * (a.w ? a.w[yv] : T(1)) - g1_[j]);
        } else {
          o -= g1_[j];
        }
      }
    }
  });
}

// weight_c: the class weights already widened to the compute type (contiguous), or undefined.
template <typename S, typename T = compute_t<S>>
Args<S> make_args(const CrossEntropyGeometry& g, const at::Tensor& logits, const at::Tensor& target,
                  const at::Tensor& weight_c, int64_t ignore_index, double eps) {
  Args<S> a;
  a.x = logits.const_data_ptr<S>();
  a.y = g.probs ? nullptr : target.const_data_ptr<int64_t>();
  a.t = g.probs ? target.const_data_ptr<S>() : nullptr;
  a.w = weight_c.defined() ? weight_c.const_data_ptr<T>() : nullptr;
  a.B = g.B;
  a.C = g.C;
  a.D = g.D;
  a.ignore_index = ignore_index;
  a.eps = static_cast<T>(eps);
  a.wsum = weight_c.defined() ? weight_c.sum().item<T>() : static_cast<T>(g.C);
  return a;
}

void check_cpu_dtype(const char* op, const at::Tensor& logits) {
  const auto dt = logits.scalar_type();
  FASTOPS_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
                     ": the CPU kernel takes float16, bfloat16, float32 or float64 logits, got ", dt,
                     " (use backend='torch' for other dtypes)");
}

// The class weights in the accumulation dtype (what Args::w points at), or undefined.
at::Tensor widened_weight(const std::optional<at::Tensor>& weight, const at::Tensor& logits) {
  if (!weight.has_value()) return at::Tensor();
  return weight->contiguous().to(cross_entropy_acc_dtype(logits.scalar_type()));
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_fwd_cpu(const at::Tensor& logits_, const at::Tensor& target_,
                                                         const std::optional<at::Tensor>& weight_,
                                                         int64_t ignore_index, double label_smoothing) {
  const BelowAutograd below_autograd;
  const char* op = "cross_entropy_fwd";
  const auto g = check_cross_entropy_args(op, logits_, target_, weight_, label_smoothing);
  check_cpu_dtype(op, logits_);
  const at::Tensor logits = logits_.contiguous(), target = target_.contiguous();
  const at::Tensor weight = widened_weight(weight_, logits);
  // loss and stats in the accumulation dtype (float32 for float16 / bfloat16 logits)
  const auto acc_opts = logits.options().dtype(cross_entropy_acc_dtype(logits.scalar_type()));
  at::Tensor loss = new_output(g.row_shape, acc_opts);
  at::Tensor stats = new_output(cross_entropy_stats_shape(g), acc_opts);
  if (g.rows() == 0) return {loss, stats};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_fwd_cpu", [&] {
    using T = compute_t<scalar_t>;
    const auto a = make_args<scalar_t>(g, logits, target, weight, ignore_index, label_smoothing);
    if (g.D == 1) {
      fwd_rows<scalar_t>(a, loss.data_ptr<T>(), stats.data_ptr<T>());
    } else {
      fwd_cols<scalar_t>(a, loss.data_ptr<T>(), stats.data_ptr<T>());
    }
  });
  return {loss, stats};
}

void cross_entropy_bwd_into(const char* op, const at::Tensor& grad_loss_, const at::Tensor& logits,
                            const at::Tensor& target_, const std::optional<at::Tensor>& weight_,
                            const at::Tensor& stats_, int64_t ignore_index, double label_smoothing, at::Tensor& out) {
  const auto g = check_cross_entropy_args(op, logits, target_, weight_, label_smoothing);
  check_cpu_dtype(op, logits);
  check_cross_entropy_bwd_args(op, g, logits, grad_loss_, stats_);
  if (g.rows() == 0) return;
  const at::Tensor target = target_.contiguous(), grad_loss = grad_loss_.contiguous(), stats = stats_.contiguous();
  const at::Tensor weight = widened_weight(weight_, logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_bwd_cpu", [&] {
    using T = compute_t<scalar_t>;
    const auto a = make_args<scalar_t>(g, logits, target, weight, ignore_index, label_smoothing);
    if (g.D == 1) {
      bwd_rows<scalar_t>(a, grad_loss.const_data_ptr<T>(), stats.const_data_ptr<T>(), out.data_ptr<scalar_t>());
    } else {
      bwd_cols<scalar_t>(a, grad_loss.const_data_ptr<T>(), stats.const_data_ptr<T>(), out.data_ptr<scalar_t>());
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd_cpu);
  m.impl("cross_entropy_bwd", &cross_entropy_bwd_entry<cross_entropy_bwd_into>);
  m.impl("cross_entropy_bwd_", &cross_entropy_bwd_inplace_entry<cross_entropy_bwd_into>);
}

}  // namespace fastops
