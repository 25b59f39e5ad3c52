// Softmax cross-entropy, CUDA kernels (float16, bfloat16, float32, float64 logits).
//
// Math (identical to csrc/cpu/cross_entropy.cpp). Row r has logits x (C classes), row max m,
// ls = log sum_c exp(x_c - m) (the log-sum-exp is m + ls), class weights w (1 when absent),
// W = sum_c w_c, label smoothing e, p_c = exp((x_c - m) - ls), g = the row's upstream gradient
// (the reduction's 1/denominator already folded in).
//   class index y:  loss = (1-e) w_y ((m - x_y) + ls) + e/C (W ls - sxr)            (0 if y == ignore)
//                   dloss/dx_c = g [ p_c ((1-e) w_y + e W / C) - (1-e) w_y [c == y] - e/C w_c ]
//   probabilities t: with t' = (1-e) t + e/C,
//                   loss = sum_c w_c t'_c ((m - x_c) + ls) = (1-e) (swt ls - swtxr) + e/C (W ls - sxr)
//                   dloss/dx_c = g [ p_c sum_k w_k t'_k - w_c t'_c ]
//   with sxr = sum_c w_c (x_c - m) <= 0, swt = sum_c w_c t_c, swtxr = sum_c w_c t_c (x_c - m) <= 0.
//   The forward keeps only stats = (m, ls) (two numbers per row) for the backward: no log_softmax
//   tensor exists at any point. Not lse = m + ls: see Numerics.
//
// Grid. logits are viewed as (B, C, D); row r = (b, d) holds C logits at stride D.
//   D == 1, C <  1024: a warp per row, 8 rows per 256-thread block. Such a row is at most 8
//                      vector loads per lane (fp32); a block per row would leave most warps idle
//                      and pay block-wide barriers for a few hundred elements.
//   D == 1, C >= 1024: a block per row; 256 threads, doubled (up to 1024) while a thread would get
//                      more than 4 vectors, so a 128k-class row has 1024 threads x ~16 loads in
//                      flight and a 1k-class row does not pay for 1024 threads' reduction.
//   D >  1           : a thread per row, looping over c with an online update. Consecutive threads
//                      take consecutive d, so each load instruction of a warp is one contiguous
//                      segment (coalesced) even though a row is strided. Simple and correct; it is
//                      slow when B * D is small and C large (few threads), a shape that
//                      (N, C, d1..dk) segmentation-style inputs rarely have.
//   All grids are capped at 2^31 - 1 blocks and loop with a grid stride; indices are int64.
//
// Tiling, where data lives. No shared-memory tiles: each thread streams its elements
// c = (lane + k * group) * VEC .. + VEC through registers as 16-byte vectors (8 x fp16/bf16,
// 4 x fp32, 2 x fp64), converts them to the accumulation type and folds them into its registers:
// the running max m, sum-of-exp s, and (only when needed) sxr, ws, swt, swtxr. The group then merges
// those partials with shuffles (warp) plus a 33-entry shared array (block). Vectors are used only
// when C % VEC == 0 and every row pointer (logits, probabilities, weights, gradient) is 16-byte
// aligned, checked on the host at launch; otherwise the same kernels run with scalar loads.
// Forward (one pass):  x (and t) are read exactly once; each thread owns a running (m, s) over its
//   elements and rescales s only when its max grows (once per vector, not per element); the
//   group merge is m = max(m1, m2), s = s1 exp(m1 - m) + s2 exp(m2 - m), and a relative sum
//   moves to the new max as sxr + (m1 - m) ws (likewise swtxr with swt).
// Backward, index target: one pass, out_c = f(x_c) written from the saved (m, ls); the thread that
//   owns c == y subtracts (1-e) g w_y in registers (no second write, no race).
// Backward, probabilities: the gradient needs sum_k w_k t_k before any element can be written, and
//   the forward does not save it (its outputs are fixed to loss and stats), so the group first
//   reduces swt over t (pass 1, reads t), then writes (pass 2, reads x and t again). The second
//   read of a row's t is mostly an L2 hit (a 32k-class bf16 row is 64 KiB).
//
// Memory traffic, s = bytes per logit, N rows x C classes (the benchmark's GB/s uses these counts):
//   forward   N C s (x) + 8 N (int64 y) + 3 N a (loss, m, ls; a = 4, or 8 for fp64)   [+ N C s for t]
//   backward  N C s (x) + N C s (gradient) + 8 N + 3 N a                               [+ 2 N C s for t]
//   so forward + backward ~ 3 N C s with index targets, and bwd_ writes the gradient over x so no
//   second N x C buffer exists. The unfused PyTorch baseline (log_softmax + nll_loss and their
//   backwards) moves ~6 N C s: log_softmax reads x and writes log p (2), nll_loss_backward writes a
//   dense N x C gradient (1), log_softmax_backward reads it and log p and writes dx (3); label
//   smoothing adds a full read of log p (7) and keeps an N x C log p alive between the passes.
//
// Numerics. Loads in the input dtype, all arithmetic in float32 (float64 for float64 logits);
// loss and stats come out in that accumulation dtype, the gradient is rounded once to the logits'
// dtype. exp(x - m) with m the running max never overflows. Shift invariance: the saved pair
// (m, ls) rather than lse = m + ls, because rounding lse costs ulp(m) / 2 in every exp argument
// (3.9e-3 for float32 logits near 1e5) while x - m is exact for every x within a factor 2 of m;
// and the loss is a sum of terms >= 0 ((m - x_c) + ls), never lse - x_y or W lse - sum w x, whose
// rounding at ulp(m) swamps a small loss. The relative sums are re-based (shift difference times
// the partial's weight sum, a term <= 0 too) when a max moves. expf/logf (<= 2 ulp, full range) rather
// than __expf, whose error grows as 2 + 1.16 |x| ulp: |x - m| reaches ~90 for fp32, i.e. ~100 ulp.
// Each thread sums ~C / (group * VEC) vectors with Kahan compensation, and the log2(group)-deep
// merge tree carries the compensations through exact two-sums; ls = log(s - sc) in float64. A
// plain float32 sum that holds exp(0) = 1 (the max came first) drops every term below ulp(1) / 2:
// with x = 2 randn(262144), x_0 = 30 that tail, 1.8e-7, is the whole loss of the row, and even the
// exact sum rounded to float32 before the log would be off by up to 30% of it (so the H100 showed).
// Special values, as the CPU kernel (and torch) do:
//   * -inf logits contribute exp = 0; the online update and the merge never form -inf - -inf
//     (a thread or group that has seen only -inf keeps m = -inf, s = 0, relative sums taken
//     against 0). A row of only -inf has m = -inf: a NaN loss and gradient row, as torch.
//   * NaN anywhere in a row: the max uses fmax (ignores NaN) so m stays a number and the NaN enters
//     s through exp(NaN - m): ls, loss and the gradient row are NaN.
//   * +inf: m = +inf, a NaN loss and gradient row, as torch's log_softmax path.
//   * a probability 0 on a -inf logit: 0 * -inf = NaN in swtxr, as -(t * log_softmax(x)).sum().
//
// Preconditions (check_cross_entropy_args / check_cross_entropy_bwd_args in fastops.h, plus the
// CUDA-specific checks below): logits on a CUDA device, float16/bfloat16/float32/float64, C >= 1;
// target int64 of the row shape or of logits' dtype and shape; weight (C,) in logits' dtype;
// grad_loss of the row shape and stats (2, *row shape), in the accumulation dtype; every tensor on
// logits' device.
// Non-contiguous inputs are made contiguous; bwd_ requires contiguous logits. Zero rows: empty
// outputs, no launch. W = sum(weight) is computed on the device into a 0-dim tensor (no host sync).
// Class indices outside [0, C) (other than ignore_index) are data, only known on the device: the
// kernels never dereference them; they write NaN to that row's loss and stats (forward) or gradient
// row (backward) and record the smallest such row in a device flag. The host then reads the flag
// and raises IndexError with the same message as the CPU kernel. That read is a device->host sync,
// paid only with index targets and only for this check; while the stream is capturing a CUDA graph
// a sync is illegal, so the check is skipped and the NaNs are the only report.
//
// References. M. Milakov, N. Gimelshein, "Online normalizer calculation for softmax", 2018
// (arXiv:1805.02867): the (m, s) merge. PyTorch aten/src/ATen/native/cuda/SoftMax.cu (warp-per-row
// vs block-per-row split, aligned vector loads); Liger-Kernel's fused linear/cross-entropy Triton
// kernels (gradient written over the logits); NVIDIA Apex xentropy (label smoothing, saved lse).
// Read to learn, not copied.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <optional>

#include "cuda/common.cuh"
#include "fastops.h"

namespace fastops {
namespace {

using cuda::acc_t;
using cuda::exp_acc;
using cuda::inf_acc;
using cuda::kWarpSize;
using cuda::log_acc;
using cuda::max_acc;
using cuda::nan_acc;

// Grid thresholds (see the header).
constexpr int64_t kBlockPerRowMinC = 1024;
constexpr int kWarpRowsPerBlock = 8;     // warp-per-row: 8 warps = 256 threads
constexpr int kMinRowThreads = 256;      // block-per-row: 256..1024 threads
constexpr int kMaxRowThreads = 1024;
constexpr int kVectorsPerThread = 4;     // grow the block while a thread would get more than this
constexpr int kStridedThreads = 256;     // D > 1: a thread per row

// The launch bound caps registers at 64K / threads: 64 for a 1024-thread block, while the
// 256-thread warp-per-row launch may use more (fp64 vectors would otherwise spill).
constexpr int row_kernel_max_threads(bool block_per_row) {
  return block_per_row ? kMaxRowThreads : kWarpSize * kWarpRowsPerBlock;
}

template <typename T, typename A>
struct CeArgs {
  const T* x;                 // logits (B, C, D), contiguous
  const int64_t* y;           // class indices (B * D), or null with probability targets
  const T* t;                 // class probabilities (B, C, D), or null
  const T* w;                 // class weights (C,), or null
  const A* wsum;              // W = sum_c w_c (0-dim, device), or null: W = C
  int64_t rows, C, D;
  int64_t ignore_index;
  A eps;                      // label smoothing
  unsigned long long* bad;    // cuda::DeviceBadIndex, or null with probability targets
};

// ---- forward -----------------------------------------------------------------------------------

// Per-thread (then per-group) partials of one row. Plain aggregate: it lives in __shared__ and is
// moved through shuffles word by word. The weighted sums are kept relative to the partial's own
// max (shift(m): m, or 0 while m is -inf), so every term is <= 0 and the loss never forms a large
// difference such as W lse - sum w x (see the header's Numerics).
template <typename A>
struct RowAcc {
  A m;      // running max (never NaN: fmax)
  A s;      // sum exp(x - m); carries NaN
  A sc;     // s's Kahan compensation: the sum is s - sc (see row_acc_add)
  A sxr;    // sum w_c (x_c - shift(m))        (label smoothing only)
  A ws;     // sum w_c over the elements seen  (label smoothing only)
  A swt;    // sum w_c t_c                     (probabilities only)
  A swtxr;  // sum w_c t_c (x_c - shift(m))    (probabilities only)
};

template <typename A>
__device__ __forceinline__ RowAcc<A> row_acc_identity() {
  return RowAcc<A>{-inf_acc<A>(), A(0), A(0), A(0), A(0), A(0), A(0)};
}

// The value the relative sums are taken against: m, or 0 while m is -inf (all elements so far are
// -inf; x - (-inf) would be NaN for them).
template <typename A>
__device__ __forceinline__ A sum_shift(A m) {
  return m == -inf_acc<A>() ? A(0) : m;
}

// exp(a - m) for a <= m, where a == m gives exactly 1 even when both are -inf or +inf (a - m would
// be NaN). -inf == -inf: a thread that has seen only -inf (s = 0) merges without poisoning the sum.
// +inf == +inf: the max element counts exp(0) = 1, its limit (such a row's loss and gradient are
// NaN anyway, from its non-finite max).
template <typename A>
__device__ __forceinline__ A exp_below_max(A a, A m) {
  return a == m ? A(1) : exp_acc(a - m);
}

// Re-bases a partial's relative sums from shift(m_old) to shift(m_new), m_new >= m_old: adds
// (shift_old - shift_new) * (the weights they were summed with), a term <= 0 like the others.
template <typename A>
__device__ __forceinline__ void rebase_sums(RowAcc<A>& acc, A m_new) {
  const A d = sum_shift(acc.m) - sum_shift(m_new);
  if (d != A(0)) {
    acc.sxr += d * acc.ws;
    acc.swtxr += d * acc.swt;
  }
}

// A product rounded on its own: nvcc never contracts it into an FMA.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// Symmetric in (a, b) up to rounding in the compensation (only lane 0's merged value is ever
// read, so that cannot split a row). The products are rounded on their own (mul_rn): an FMA
// contracted into r.s would break the two-sum's exactness. A side with m = -inf below the
// other scales by exp(-inf) = 0, so the identity (-inf, 0, ...) is neutral.
template <typename A>
struct MergeRowAcc {
  __device__ __forceinline__ RowAcc<A> operator()(RowAcc<A> a, RowAcc<A> b) const {
    RowAcc<A> r;
    r.m = max_acc(a.m, b.m);
    const A ea = exp_below_max(a.m, r.m), eb = exp_below_max(b.m, r.m);
    // two-sum: xa + xb == r.s + err exactly, so the low part lost here joins the compensations
    const A xa = mul_rn(a.s, ea), xb = mul_rn(b.s, eb);
    r.s = xa + xb;
    const A bv = r.s - xa, err = (xa - (r.s - bv)) + (xb - bv);
    r.sc = (a.sc * ea + b.sc * eb) - err;
    rebase_sums(a, r.m);
    rebase_sums(b, r.m);
    r.sxr = a.sxr + b.sxr;
    r.ws = a.ws + b.ws;
    r.swt = a.swt + b.swt;
    r.swtxr = a.swtxr + b.swtxr;
    return r;
  }
};

// Folds N logits (weights w, probabilities t: N elements at stride 1 when N > 1, or null) into the
// partial: one rescale of s (and re-base of the relative sums) per vector when its max exceeds m,
// then one exp per element. A -inf element adds exactly 0 to s (exp_below_max would give 1 while m
// is still -inf). Every element is <= m after the rescale, so exp never overflows.
template <int N, typename T, typename A>
__device__ __forceinline__ void row_acc_add(RowAcc<A>& acc, const A (&x)[N], const A (&w)[N], const T* t,
                                            bool smooth) {
  A vmax = x[0];
#pragma unroll
  for (int k = 1; k < N; ++k) vmax = max_acc(vmax, x[k]);
  if (vmax > acc.m) {
    const A scale = exp_acc(acc.m - vmax);
    acc.s *= scale;
    acc.sc *= scale;
    if (smooth || t != nullptr) rebase_sums(acc, vmax);
    acc.m = vmax;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) {
    // Kahan: once s holds exp(0) = 1 (the max came first), every term below ulp(1) / 2 would be
    // dropped by a plain add; a long row's tail of such terms is the whole loss of a confident row
    const A term = (x[k] == -inf_acc<A>() ? A(0) : exp_below_max(x[k], acc.m)) - acc.sc;
    const A sum = acc.s + term;
    acc.sc = (sum - acc.s) - term;
    acc.s = sum;
  }
  const A shift = sum_shift(acc.m);
  if (smooth) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      acc.sxr += w[k] * (x[k] - shift);
      acc.ws += w[k];
    }
  }
  if (t != nullptr) {
    A tv[N];
    cuda::load_acc<N>(t, tv);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const A wt = w[k] * tv[k];
      acc.swt += wt;
      // with smoothing, a class with t = 0 adds nothing here (its -inf comes in through sxr, loss +inf
      // as torch's (1 - e) t + e / C weighting), where 0 * -inf would be NaN
      acc.swtxr += (smooth && wt == A(0)) ? A(0) : wt * (x[k] - shift);
    }
  }
}

template <int N, typename T, typename A>
__device__ __forceinline__ void load_weights(const T* w, int64_t c, A (&out)[N]) {
  if (w != nullptr) {
    cuda::load_acc<N>(w + c, out);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = A(1);  // 1 * v == v exactly: one code path for both
  }
}

// Loss and stats (m at stats[r], ls at stats[rows + r]) of row r from its merged partials.
// x_row[c * x_stride] is logit c of the row. Every loss term is >= 0 (lse - x_c = (m - x_c) + ls);
// a row whose max is not finite (all -inf, or a +inf logit) gets a NaN loss, as torch.
template <typename T, typename A>
__device__ __forceinline__ void finish_fwd_row(const CeArgs<T, A>& a, int64_t r, const RowAcc<A>& acc,
                                               const T* x_row, int64_t x_stride, A* loss, A* stats) {
  const A e = a.eps, C = static_cast<A>(a.C);
  const A W = a.wsum != nullptr ? *a.wsum : C;
  // s - sc in double: a float32 s near 1 is 6e-8 apart, as large as a confident row's whole loss
  const A ls = static_cast<A>(log(static_cast<double>(acc.s) - static_cast<double>(acc.sc)));
  const bool finite = acc.m > -inf_acc<A>() && acc.m < inf_acc<A>();
  stats[r] = acc.m;
  stats[a.rows + r] = ls;
  const A smooth = e > 0 ? e / C * (W * ls - acc.sxr) : A(0);
  if (a.t != nullptr) {
    // e == 1: the (1 - e) term is dropped, not multiplied by 0 (a probability on a -inf logit makes it
    // +inf; torch's weights (1 - e) t + e / C = 1 / C give +inf, not NaN)
    loss[r] = finite ? (e < 1 ? (1 - e) * (acc.swt * ls - acc.swtxr) : A(0)) + smooth : nan_acc<A>();
    return;
  }
  const int64_t y = a.y[r];
  if (y == a.ignore_index) {
    loss[r] = A(0);
    return;
  }
  if (y < 0 || y >= a.C) {  // never read x_row[y]: report and poison the row instead
    loss[r] = nan_acc<A>();
    stats[r] = nan_acc<A>();
    stats[a.rows + r] = nan_acc<A>();
    cuda::report_bad_index(a.bad, r);
    return;
  }
  const A wy = a.w != nullptr ? static_cast<A>(a.w[y]) : A(1);
  loss[r] = finite ? (1 - e) * wy * ((acc.m - static_cast<A>(x_row[y * x_stride])) + ls) + smooth : nan_acc<A>();
}

// Which threads share a row: a whole block, or one warp (several rows per block).
template <bool kBlockPerRow>
struct RowGroup {
  int lane, size;
  int64_t first, stride;

  __device__ __forceinline__ RowGroup() {
    if constexpr (kBlockPerRow) {
      lane = threadIdx.x;
      size = blockDim.x;
      first = blockIdx.x;
      stride = gridDim.x;
    } else {
      const int warps = blockDim.x / kWarpSize;
      lane = threadIdx.x % kWarpSize;
      size = kWarpSize;
      first = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / kWarpSize;
      stride = static_cast<int64_t>(gridDim.x) * warps;
    }
  }

  // Every row of a block-per-row loop is uniform over the block, so all threads reach the barriers.
  template <typename V, typename Op>
  __device__ __forceinline__ V all_reduce(const V& v, Op op, const V& identity, V* smem) const {
    if constexpr (kBlockPerRow) {
      return cuda::block_all_reduce(v, op, identity, smem);
    } else {
      return cuda::warp_all_reduce(v, op);
    }
  }
};

// D == 1. N = elements per load (16 bytes, or 1 when alignment or C % N forbids).
template <int N, bool kBlockPerRow, typename T, typename A>
__global__ void __launch_bounds__(row_kernel_max_threads(kBlockPerRow))
    cross_entropy_fwd_online_rows_kernel(const CeArgs<T, A> a, A* __restrict__ loss, A* __restrict__ stats) {
  __shared__ RowAcc<A> smem[kWarpSize + 1];
  const RowGroup<kBlockPerRow> grp;
  const bool smooth = a.eps > 0;
  const int64_t nvec = a.C / N;
  for (int64_t row = grp.first; row < a.rows; row += grp.stride) {
    const T* x = a.x + row * a.C;
    const T* t = a.t != nullptr ? a.t + row * a.C : nullptr;
    RowAcc<A> acc = row_acc_identity<A>();
    for (int64_t i = grp.lane; i < nvec; i += grp.size) {
      const int64_t c = i * N;
      A xv[N], wv[N];
      cuda::load_acc<N>(x + c, xv);
      load_weights<N>(a.w, c, wv);
      row_acc_add<N>(acc, xv, wv, t != nullptr ? t + c : nullptr, smooth);
    }
    acc = grp.all_reduce(acc, MergeRowAcc<A>{}, row_acc_identity<A>(), smem);
    if (grp.lane == 0) finish_fwd_row(a, row, acc, x, 1, loss, stats);
  }
}

// D > 1: one thread per row (b, d), element c at x[(b C + c) D + d].
template <typename T, typename A>
__global__ void __launch_bounds__(kStridedThreads)
    cross_entropy_fwd_online_strided_kernel(const CeArgs<T, A> a, A* __restrict__ loss, A* __restrict__ stats) {
  const bool smooth = a.eps > 0;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < a.rows; r += step) {
    const int64_t b = r / a.D, d = r - b * a.D, base = b * a.C * a.D + d;
    const T* x = a.x + base;
    const T* t = a.t != nullptr ? a.t + base : nullptr;
    RowAcc<A> acc = row_acc_identity<A>();
    for (int64_t c = 0; c < a.C; ++c) {
      A xv[1], wv[1];
      cuda::load_acc<1>(x + c * a.D, xv);
      wv[0] = a.w != nullptr ? static_cast<A>(a.w[c]) : A(1);
      row_acc_add<1>(acc, xv, wv, t != nullptr ? t + c * a.D : nullptr, smooth);
    }
    finish_fwd_row(a, r, acc, x, a.D, loss, stats);
  }
}

// ---- backward ----------------------------------------------------------------------------------

// kBadIndex: an out-of-range class index (reported to the host); kNaN: a row whose max or log-sum
// is not finite (NaN, all -inf, +inf), a NaN gradient row as torch's.
enum class GradKind : int { kFormula, kZero, kNaN, kBadIndex };

// The per-row constants of dloss/dx_c = coef p_c - sub_c (see the header).
template <typename A>
struct GradRow {
  A m, ls, coef, g0, g1;
  int64_t y;      // the target class, -1 with probabilities
  bool probs;
  bool smooth;    // e > 0: the index-target smoothing term is e/C g w_c rather than e/C g
  GradKind kind;
};

template <typename A>
__device__ __forceinline__ bool stats_finite(A m, A ls) {
  return m > -inf_acc<A>() && m < inf_acc<A>() && ls > -inf_acc<A>() && ls < inf_acc<A>();
}

template <typename T, typename A>
__device__ __forceinline__ GradRow<A> index_grad_row(const CeArgs<T, A>& a, int64_t r, A g, A m, A ls) {
  GradRow<A> gr;
  gr.m = m;
  gr.ls = ls;
  gr.y = a.y[r];
  gr.probs = false;
  const A e = a.eps, C = static_cast<A>(a.C);
  gr.smooth = e > 0;
  gr.coef = gr.g0 = gr.g1 = A(0);
  if (gr.y == a.ignore_index) {
    // exact zeros, even where exp(x - m) is inf/NaN; a row whose max is not finite gets NaN, as
    // torch's log_softmax backward gives it
    gr.kind = stats_finite(m, ls) ? GradKind::kZero : GradKind::kNaN;
    return gr;
  }
  if (gr.y < 0 || gr.y >= a.C) {
    gr.kind = GradKind::kBadIndex;
    return gr;
  }
  if (!stats_finite(m, ls)) {
    gr.kind = GradKind::kNaN;
    return gr;
  }
  const A W = a.wsum != nullptr ? *a.wsum : C;
  const A wy = a.w != nullptr ? static_cast<A>(a.w[gr.y]) : A(1);
  // Smoothing terms are dropped, not multiplied by 0, when e == 0: a NaN / inf weight of a class that
  // is no target, or an infinite g, must not make the whole row NaN through 0 * inf (torch's result).
  gr.coef = g * (1 - e) * wy + (e > 0 ? g * e * W / C : A(0));
  gr.g0 = e > 0 ? g * e / C : A(0);
  gr.g1 = g * (1 - e) * wy;
  gr.kind = GradKind::kFormula;
  return gr;
}

template <typename T, typename A>
__device__ __forceinline__ GradRow<A> prob_grad_row(const CeArgs<T, A>& a, A g, A m, A ls, A swt) {
  GradRow<A> gr;
  const A e = a.eps, C = static_cast<A>(a.C);
  const A W = a.wsum != nullptr ? *a.wsum : C;
  gr.m = m;
  gr.ls = ls;
  gr.y = -1;
  gr.probs = true;
  gr.smooth = e > 0;
  gr.coef = g * (1 - e) * swt + (e > 0 ? g * e / C * W : A(0));
  gr.g1 = g * (1 - e);
  gr.g0 = e > 0 ? g * e / C : A(0);
  gr.kind = stats_finite(m, ls) ? GradKind::kFormula : GradKind::kNaN;
  return gr;
}

// dloss/dx_c for a kFormula row; w = 1 without weights, t unused with index targets.
// p_c = exp((x_c - m) - ls): x_c - m is exact for x_c within a factor 2 of m (Sterbenz).
template <typename A>
__device__ __forceinline__ A grad_elem(const GradRow<A>& gr, A x, A w, A t, int64_t c) {
  const A pterm = gr.coef * exp_acc((x - gr.m) - gr.ls);
  if (gr.probs) return pterm - (gr.g1 * t + gr.g0) * w;
  A v = pterm - (gr.smooth ? gr.g0 * w : gr.g0);
  if (c == gr.y) v -= gr.g1;
  return v;
}

// D == 1. `out` may alias a.x (bwd_): each element is read and then written by the same thread, so
// neither pointer is __restrict__.
template <int N, bool kBlockPerRow, typename T, typename A>
__global__ void __launch_bounds__(row_kernel_max_threads(kBlockPerRow))
    cross_entropy_bwd_rows_kernel(const CeArgs<T, A> a, const A* __restrict__ grad, const A* __restrict__ stats,
                                  T* out) {
  __shared__ A smem[kWarpSize + 1];
  const RowGroup<kBlockPerRow> grp;
  const int64_t nvec = a.C / N;
  for (int64_t row = grp.first; row < a.rows; row += grp.stride) {
    const T* x = a.x + row * a.C;
    const T* t = a.t != nullptr ? a.t + row * a.C : nullptr;
    T* o = out + row * a.C;
    const A g = grad[row], m = stats[row], ls = stats[a.rows + row];
    GradRow<A> gr;
    if (t != nullptr) {
      // Pass 1: swt = sum_k w_k t_k, needed by every element of the row.
      A swt = A(0);
      for (int64_t i = grp.lane; i < nvec; i += grp.size) {
        const int64_t c = i * N;
        A tv[N], wv[N];
        cuda::load_acc<N>(t + c, tv);
        load_weights<N>(a.w, c, wv);
#pragma unroll
        for (int k = 0; k < N; ++k) swt += wv[k] * tv[k];
      }
      swt = grp.all_reduce(swt, cuda::SumOp<A>{}, A(0), smem);
      gr = prob_grad_row(a, g, m, ls, swt);
    } else {
      gr = index_grad_row(a, row, g, m, ls);
      if (gr.kind == GradKind::kBadIndex && grp.lane == 0) cuda::report_bad_index(a.bad, row);
    }
    // Pass 2 (the only pass for index targets).
    for (int64_t i = grp.lane; i < nvec; i += grp.size) {
      const int64_t c = i * N;
      A ov[N];
      if (gr.kind == GradKind::kFormula) {
        A xv[N], wv[N], tv[N];
        cuda::load_acc<N>(x + c, xv);
        load_weights<N>(a.w, c, wv);
        if (t != nullptr) {
          cuda::load_acc<N>(t + c, tv);
        } else {
#pragma unroll
          for (int k = 0; k < N; ++k) tv[k] = A(0);
        }
#pragma unroll
        for (int k = 0; k < N; ++k) ov[k] = grad_elem(gr, xv[k], wv[k], tv[k], c + k);
      } else {
        const A fill = gr.kind == GradKind::kZero ? A(0) : nan_acc<A>();
#pragma unroll
        for (int k = 0; k < N; ++k) ov[k] = fill;
      }
      cuda::store_from_acc<N>(o + c, ov);
    }
  }
}

// D > 1: one thread per row (b, d). `out` may alias a.x, as above.
template <typename T, typename A>
__global__ void __launch_bounds__(kStridedThreads)
    cross_entropy_bwd_strided_kernel(const CeArgs<T, A> a, const A* __restrict__ grad, const A* __restrict__ stats,
                                     T* out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < a.rows; r += step) {
    const int64_t b = r / a.D, d = r - b * a.D, base = b * a.C * a.D + d;
    const T* x = a.x + base;
    const T* t = a.t != nullptr ? a.t + base : nullptr;
    T* o = out + base;
    const A g = grad[r], m = stats[r], ls = stats[a.rows + r];
    GradRow<A> gr;
    if (t != nullptr) {
      A swt = A(0);
      for (int64_t c = 0; c < a.C; ++c) {
        const A wc = a.w != nullptr ? static_cast<A>(a.w[c]) : A(1);
        swt += wc * static_cast<A>(t[c * a.D]);
      }
      gr = prob_grad_row(a, g, m, ls, swt);
    } else {
      gr = index_grad_row(a, r, g, m, ls);
      if (gr.kind == GradKind::kBadIndex) cuda::report_bad_index(a.bad, r);
    }
    for (int64_t c = 0; c < a.C; ++c) {
      A v;
      if (gr.kind == GradKind::kFormula) {
        const A wc = a.w != nullptr ? static_cast<A>(a.w[c]) : A(1);
        const A tc = t != nullptr ? static_cast<A>(t[c * a.D]) : A(0);
        v = grad_elem(gr, static_cast<A>(x[c * a.D]), wc, tc, c);
      } else {
        v = gr.kind == GradKind::kZero ? A(0) : nan_acc<A>();
      }
      o[c * a.D] = static_cast<T>(v);
    }
  }
}

// ---- host side ---------------------------------------------------------------------------------

struct LaunchPlan {
  enum class Kind { kStrided, kWarpPerRow, kBlockPerRow } kind;
  bool vec;  // 16-byte loads
  dim3 grid, block;
};

// `ptrs`: every per-row base pointer the kernel will load or store as a vector.
template <typename T>
LaunchPlan plan_launch(const CrossEntropyGeometry& g, std::initializer_list<const void*> ptrs) {
  constexpr int V = cuda::kVec16<T>;
  LaunchPlan p;
  p.vec = false;
  const int64_t rows = g.rows();
  if (g.D > 1) {
    p.kind = LaunchPlan::Kind::kStrided;
    p.block = dim3(kStridedThreads);
    p.grid = dim3(static_cast<unsigned>(std::min(cuda::ceil_div(rows, kStridedThreads), cuda::kMaxGridX)));
    return p;
  }
  // Row r starts at base + r * C elements: all rows are 16-byte aligned iff the base is and
  // C * sizeof(T) is a multiple of 16.
  p.vec = g.C % V == 0;
  for (const void* q : ptrs) p.vec = p.vec && (q == nullptr || cuda::is_aligned(q, 16));
  const int64_t nvec = g.C / (p.vec ? V : 1);
  if (g.C < kBlockPerRowMinC) {
    p.kind = LaunchPlan::Kind::kWarpPerRow;
    p.block = dim3(kWarpSize * kWarpRowsPerBlock);
    p.grid = dim3(static_cast<unsigned>(std::min(cuda::ceil_div(rows, kWarpRowsPerBlock), cuda::kMaxGridX)));
  } else {
    int threads = kMinRowThreads;
    while (threads < kMaxRowThreads && nvec > static_cast<int64_t>(kVectorsPerThread) * threads) threads *= 2;
    p.kind = LaunchPlan::Kind::kBlockPerRow;
    p.block = dim3(threads);
    p.grid = dim3(static_cast<unsigned>(std::min(rows, cuda::kMaxGridX)));
  }
  return p;
}

template <typename T, typename A>
void launch_fwd(const LaunchPlan& p, const CeArgs<T, A>& a, A* loss, A* stats) {
  constexpr int V = cuda::kVec16<T>;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (p.kind) {
    case LaunchPlan::Kind::kStrided:
      cross_entropy_fwd_online_strided_kernel<T, A><<<p.grid, p.block, 0, stream>>>(a, loss, stats);
      break;
    case LaunchPlan::Kind::kWarpPerRow:
      if (p.vec) cross_entropy_fwd_online_rows_kernel<V, false, T, A><<<p.grid, p.block, 0, stream>>>(a, loss, stats);
      else cross_entropy_fwd_online_rows_kernel<1, false, T, A><<<p.grid, p.block, 0, stream>>>(a, loss, stats);
      break;
    case LaunchPlan::Kind::kBlockPerRow:
      if (p.vec) cross_entropy_fwd_online_rows_kernel<V, true, T, A><<<p.grid, p.block, 0, stream>>>(a, loss, stats);
      else cross_entropy_fwd_online_rows_kernel<1, true, T, A><<<p.grid, p.block, 0, stream>>>(a, loss, stats);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename A>
void launch_bwd(const LaunchPlan& p, const CeArgs<T, A>& a, const A* grad, const A* stats, T* out) {
  constexpr int V = cuda::kVec16<T>;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (p.kind) {
    case LaunchPlan::Kind::kStrided:
      cross_entropy_bwd_strided_kernel<T, A><<<p.grid, p.block, 0, stream>>>(a, grad, stats, out);
      break;
    case LaunchPlan::Kind::kWarpPerRow:
      if (p.vec) cross_entropy_bwd_rows_kernel<V, false, T, A><<<p.grid, p.block, 0, stream>>>(a, grad, stats, out);
      else cross_entropy_bwd_rows_kernel<1, false, T, A><<<p.grid, p.block, 0, stream>>>(a, grad, stats, out);
      break;
    case LaunchPlan::Kind::kBlockPerRow:
      if (p.vec) cross_entropy_bwd_rows_kernel<V, true, T, A><<<p.grid, p.block, 0, stream>>>(a, grad, stats, out);
      else cross_entropy_bwd_rows_kernel<1, true, T, A><<<p.grid, p.block, 0, stream>>>(a, grad, stats, out);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_cuda_logits(const char* op, const at::Tensor& logits) {
  FASTOPS_CHECK_VALUE(logits.is_cuda(), op, ": the CUDA kernel needs logits on a CUDA device, got ", logits.device());
  const auto dt = logits.scalar_type();
  FASTOPS_CHECK_TYPE(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kDouble, op,
                     ": the CUDA kernel takes float16, bfloat16, float32 or float64 logits, got ", dt);
}

// The inputs every kernel reads, contiguous, plus W on the device.
struct Inputs {
  at::Tensor target, weight, wsum;
};

Inputs prepare_inputs(const at::Tensor& target, const std::optional<at::Tensor>& weight, at::ScalarType acc) {
  Inputs in;
  in.target = target.contiguous();
  if (weight.has_value()) {
    in.weight = weight->contiguous();
    in.wsum = in.weight.sum(acc);  // 0-dim, on the device: the kernel reads it, the host never does
  }
  return in;
}

template <typename T, typename A>
CeArgs<T, A> make_args(const CrossEntropyGeometry& g, const at::Tensor& logits, const Inputs& in,
                       int64_t ignore_index, double label_smoothing, unsigned long long* bad) {
  CeArgs<T, A> a;
  a.x = logits.const_data_ptr<T>();
  a.y = g.probs ? nullptr : in.target.const_data_ptr<int64_t>();
  a.t = g.probs ? in.target.const_data_ptr<T>() : nullptr;
  a.w = in.weight.defined() ? in.weight.const_data_ptr<T>() : nullptr;
  a.wsum = in.wsum.defined() ? in.wsum.const_data_ptr<A>() : nullptr;
  a.rows = g.rows();
  a.C = g.C;
  a.D = g.D;
  a.ignore_index = ignore_index;
  a.eps = static_cast<A>(label_smoothing);
  a.bad = bad;
  return a;
}

// Raises the CPU kernel's IndexError when a kernel reported an out-of-range class index (one
// device->host sync; skipped during graph capture, see the header).
void raise_if_bad_target(const cuda::DeviceBadIndex& bad, const at::Tensor& target, int64_t C,
                         int64_t ignore_index) {
  const std::optional<int64_t> r = bad.first_bad();
  if (!r.has_value()) return;
  const int64_t v = target.reshape(-1)[*r].item<int64_t>();
  FASTOPS_CHECK_INDEX(false, "cross_entropy: target[", *r, "] = ", v, " is out of bounds for ", C,
                      " classes (expected 0 <= target < ", C, ", or target == ignore_index ", ignore_index, ")");
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_fwd_cuda(const at::Tensor& logits_, const at::Tensor& target_,
                                                          const std::optional<at::Tensor>& weight_,
                                                          int64_t ignore_index, double label_smoothing) {
  const BelowAutograd below_autograd;
  const char* op = "cross_entropy_fwd";
  const auto g = check_cross_entropy_args(op, logits_, target_, weight_, label_smoothing);
  check_cuda_logits(op, logits_);
  const c10::cuda::CUDAGuard guard(logits_.device());
  const auto acc = cross_entropy_acc_dtype(logits_.scalar_type());
  at::Tensor loss = new_output(g.row_shape, logits_.options().dtype(acc));
  at::Tensor stats = new_output(cross_entropy_stats_shape(g), logits_.options().dtype(acc));
  if (g.rows() == 0) return {loss, stats};
  const at::Tensor logits = logits_.contiguous();
  const Inputs in = prepare_inputs(target_, weight_, acc);
  std::optional<cuda::DeviceBadIndex> bad;
  if (!g.probs) bad.emplace(logits.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_fwd_cuda", [&] {
    using A = acc_t<scalar_t>;
    const auto a = make_args<scalar_t, A>(g, logits, in, ignore_index, label_smoothing, bad ? bad->ptr() : nullptr);
    const LaunchPlan p = plan_launch<scalar_t>(g, {a.x, a.t, a.w});
    launch_fwd<scalar_t, A>(p, a, loss.mutable_data_ptr<A>(), stats.mutable_data_ptr<A>());
  });
  if (bad) raise_if_bad_target(*bad, in.target, g.C, ignore_index);
  return {loss, stats};
}

// `logits` contiguous; `out` contiguous with logits' shape and dtype (may be logits itself).
void cross_entropy_bwd_into(const char* op, const at::Tensor& grad_loss_, const at::Tensor& logits,
                            const at::Tensor& target_, const std::optional<at::Tensor>& weight_,
                            const at::Tensor& stats_, int64_t ignore_index, double label_smoothing, at::Tensor& out) {
  const auto g = check_cross_entropy_args(op, logits, target_, weight_, label_smoothing);
  check_cuda_logits(op, logits);
  check_cross_entropy_bwd_args(op, g, logits, grad_loss_, stats_);
  const c10::cuda::CUDAGuard guard(logits.device());
  if (g.rows() == 0) return;
  const auto acc = cross_entropy_acc_dtype(logits.scalar_type());
  const at::Tensor grad_loss = grad_loss_.contiguous(), stats = stats_.contiguous();
  const Inputs in = prepare_inputs(target_, weight_, acc);
  std::optional<cuda::DeviceBadIndex> bad;
  if (!g.probs) bad.emplace(logits.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_bwd_cuda", [&] {
    using A = acc_t<scalar_t>;
    const auto a = make_args<scalar_t, A>(g, logits, in, ignore_index, label_smoothing, bad ? bad->ptr() : nullptr);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const LaunchPlan p = plan_launch<scalar_t>(g, {a.x, a.t, a.w, o});
    launch_bwd<scalar_t, A>(p, a, grad_loss.const_data_ptr<A>(), stats.const_data_ptr<A>(), o);
  });
  if (bad) raise_if_bad_target(*bad, in.target, g.C, ignore_index);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd_cuda);
  m.impl("cross_entropy_bwd", &cross_entropy_bwd_entry<cross_entropy_bwd_into>);
  m.impl("cross_entropy_bwd_", &cross_entropy_bwd_inplace_entry<cross_entropy_bwd_into>);
}

}  // namespace fastops
