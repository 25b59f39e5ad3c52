// Fused linear + cross-entropy (the LM loss head), CUDA: the per-chunk row kernel and the op entry points.
//
// Math: csrc/linear_cross_entropy_driver.h (loss, dloss/dz, the softcap chain rule, the z-loss). The
// driver (shared with the CPU kernel) sweeps the rows in chunks: cuBLAS forms the chunk's logits Z
// (R, V) in the compute dtype (float32; float64 for float64 inputs; bfloat16 / float16 GEMMs write a
// reused input-dtype chunk that is widened), this file's kernel turns Z into the row losses, stats and
// (optionally) G = dloss/dlogits in place, and cuBLAS forms grad_x = G W, grad_W += G^T x, and
// grad_b += colsum(G).
//
// Grid. One block of kThreads threads per row of the chunk (grid = R rows, R <= 2^31 - 1 by the
// driver's chunking); threads stride over the V logits of the row with coalesced accesses:
//   pass 1  z = c tanh(l / c) written back (when capped), thread max -> block max m;
//   pass 2  thread sums of exp(z - m) (and of w_c (m - z_c) with smoothing) -> block sums;
//           thread 0 writes loss, stats (m, ls = log sum);
//   pass 3  (gradients) G_c = g (coef p_c - g0 w_c - g1 [c == y]) (1 - (z_c / c)^2) over z.
// The backward op (stats given) runs pass 1 (cap only) and pass 3.
//
// Tiling. Nothing is staged in shared memory except the block reductions' 33 partials; a row of
// V = 128256 float32 logits (513 KB) is read from L2 / HBM by each pass.
//
// Traffic per chunk (s = 4 bytes): passes read R V s three times and write it up to twice; the GEMMs
// read G twice. Eager PyTorch moves about 6 (N, V) tensors through HBM and keeps 2-3 of them alive;
// here only the (R, V) chunk exists.
//
// Numerics. Compute dtype float32 (float64 for float64). Thread sums run over V / kThreads terms each
// (<= 251 for V = 128256), then a tree reduction: error grows with V / kThreads + log2(kThreads), not
// with V. expf / logf are the accurate ones (no fast-math). Max subtraction keeps exp <= 1; the loss is
// assembled from max-relative terms. A row whose max is not finite (NaN, +inf, all -inf) gets a NaN
// loss and gradient, as torch's log_softmax path. Ignored rows: loss 0, exact zero gradient row.
//
// Preconditions (check_linear_cross_entropy_args, the driver): Z contiguous, targets in [0, V) or
// ignore_index (checked on the host before any GEMM), V < 2^31 (one row's index range per block).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/common.cuh"
#include "fastops.h"
#include "linear_cross_entropy_driver.h"

namespace fastops {
namespace {

using lce::ChunkView;
using lce::RowParams;

constexpr int kThreads = 512;

// max that carries NaN (fmax would drop it).
template <typename T>
struct NanMaxOp {
  __device__ __forceinline__ T operator()(T a, T b) const { return a != a ? a : (b != b ? b : cuda::max_acc(a, b)); }
};

template <typename T>
struct RowSums {
  T s;    // sum exp(z - m)
  T sxr;  // sum w_c (m - z_c)
};

template <typename T>
struct RowSumsOp {
  __device__ __forceinline__ RowSums<T> operator()(RowSums<T> a, RowSums<T> b) const {
    return {a.s + b.s, a.sxr + b.sxr};
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) linear_cross_entropy_row_kernel(ChunkView<T> cv, RowParams<T> p) {
  __shared__ T smem_max[cuda::kWarpSize + 1];
  __shared__ RowSums<T> smem_sums[cuda::kWarpSize + 1];
  const int64_t r = blockIdx.x;
  const int64_t V = p.V;
  T* z = cv.z + r * V;
  const int64_t y = cv.y[r];
  const bool ignored = y == p.ignore_index;
  const T e = p.eps, c = p.softcap, nan = cuda::nan_acc<T>();
  const bool cap = c > T(0) && !(cv.have_stats && (ignored || !cv.write_grad));
  T m, ls;
  if (cap || !cv.have_stats) {
    T tmax = -cuda::inf_acc<T>();
    for (int64_t i = threadIdx.x; i < V; i += kThreads) {
      T v = z[i];
      if (cap) {
        v = c * tanh(v / c);
        z[i] = v;
      }
      tmax = NanMaxOp<T>{}(tmax, v);
    }
    m = cuda::block_all_reduce(tmax, NanMaxOp<T>{}, -cuda::inf_acc<T>(), smem_max);
  }
  if (cv.have_stats) {
    m = cv.m[r];
    ls = cv.ls[r];
  } else {
    const bool finite = isfinite(m);
    RowSums<T> t{T(0), T(0)};
    if (finite) {
      for (int64_t i = threadIdx.x; i < V; i += kThreads) {
        const T v = z[i];
        t.s += cuda::exp_acc(v - m);
        if (e > T(0)) t.sxr += (p.w ? p.w[i] : T(1)) * (m - v);
      }
    }
    const RowSums<T> tot = cuda::block_all_reduce(t, RowSumsOp<T>{}, RowSums<T>{T(0), T(0)}, smem_sums);
    ls = finite ? cuda::log_acc(tot.s) : nan;
    if (threadIdx.x == 0) {
      cv.m[r] = m;
      cv.ls[r] = ls;
      T loss = T(0);
      if (!ignored) {
        if (!finite) {
          loss = nan;
        } else {
          const T wy = p.w ? p.w[y] : T(1), lse = m + ls;
          const T smooth = e > T(0) ? e / static_cast<T>(V) * (p.wsum * ls + tot.sxr) : T(0);
          loss = (T(1) - e) * wy * ((m - z[y]) + ls) + smooth + p.z_loss * lse * lse;
        }
      }
      cv.loss[r] = loss;
    }
    // z[y] was read above by thread 0 before any thread writes the gradient below.
    __syncthreads();
  }
  if (!cv.write_grad) return;
  if (ignored || !isfinite(m) || !isfinite(ls)) {
    const T fill = ignored ? T(0) : nan;
    for (int64_t i = threadIdx.x; i < V; i += kThreads) z[i] = fill;
    return;
  }
  const T g = cv.g[r];
  const T wy = p.w ? p.w[y] : T(1), lse = m + ls;
  const T coef = g * ((T(1) - e) * wy + (e > T(0) ? e * p.wsum / static_cast<T>(V) : T(0)) + T(2) * p.z_loss * lse);
  const T g0 = e > T(0) ? g * e / static_cast<T>(V) : T(0), g1 = g * (T(1) - e) * wy;
  const T* w_s = e > T(0) ? p.w : nullptr;  // class weights enter the gradient through smoothing only
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const T v = z[i];
    T d = coef * cuda::exp_acc((v - m) - ls) - g0 * (w_s ? w_s[i] : T(1)) - (i == y ? g1 : T(0));
    if (c > T(0)) {
      const T u = v / c;
      d *= T(1) - u * u;
    }
    z[i] = d;
  }
}

struct CudaRowKernel {
  template <typename T>
  void operator()(const ChunkView<T>& cv, const RowParams<T>& p) const {
    if (cv.n == 0) return;
    linear_cross_entropy_row_kernel<T>
        <<<static_cast<unsigned>(cv.n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(cv, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_fwd_cuda(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target,
    const std::optional<at::Tensor>& class_weight, int64_t ignore_index, double label_smoothing, double softcap,
    double z_loss, int64_t reduction, int64_t chunk_rows, bool compute_grad) {
  const c10::cuda::CUDAGuard guard(x.device());
  return lce::linear_cross_entropy("linear_cross_entropy_fwd", nullptr, x, weight, bias, target, class_weight, nullptr,
                                   ignore_index, label_smoothing, softcap, z_loss, reduction, chunk_rows, compute_grad,
                                   CudaRowKernel{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_bwd_cuda(
    const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& class_weight, const at::Tensor& stats,
    int64_t ignore_index, double label_smoothing, double softcap, double z_loss, int64_t reduction,
    int64_t chunk_rows) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto [l, st, gx, gw, gb] = lce::linear_cross_entropy(
      "linear_cross_entropy_bwd", &grad_loss, x, weight, bias, target, class_weight, &stats, ignore_index,
      label_smoothing, softcap, z_loss, reduction, chunk_rows, true, CudaRowKernel{});
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("linear_cross_entropy_fwd", &linear_cross_entropy_fwd_cuda);
  m.impl("linear_cross_entropy_bwd", &linear_cross_entropy_bwd_cuda);
}

}  // namespace fastops
