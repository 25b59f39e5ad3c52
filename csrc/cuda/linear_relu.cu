// Fused linear + ReLU, CUDA kernels (float16, bfloat16, float32, float64).
//
// Math (as csrc/cpu/linear_relu.cpp). x seen as A (M, K), weight B (N, K), bias b (N,):
//   forward:  C = relu(A B^T + b)                                       2*M*N*K FLOPs
//   backward: D = G (.) [not C <= 0];  dA = D B,  dB = D^T A,  db = sum_m D     4*M*N*K FLOPs
// Backward needs A, B and C only (C's sign is the mask; the pre-activation is never stored).
//
// One kernel, three uses (the Triton backend's split): P (I, J) = Y (I, R) Z (R, J) with every
// operand addressed by its two strides, so transposes are stride swaps, never copies:
//   forward  I=M, J=N, R=K:  Y = A, Z[k][n] = B[n][k]; epilogue + b[n] and ReLU on the accumulator
//                            before the single store.
//   grad_x   I=M, J=K, R=N:  Y = G, masked by [not C <= 0] as it is staged into shared memory; Z = B.
//   grad_w   I=N, J=K, R=M:  Y[n][m] = G[m][n] masked by [not C[m][n] <= 0]; Z = A. The blocks of the first
//                            J tile also sum their staged (masked) Y tiles over R into db: each db
//                            element has exactly one writer, no atomics, no extra pass over G.
//   output_mask: grad_x's launch only when x wants a gradient, grad_w's when the weight or the bias
//   does (db rides on it; grad_w goes to a scratch buffer when only db is wanted).
//
// Grid and tiling.
//   SIMT (float32 / float64, and the fallback for any dtype): a 64 x 64 tile of P per block of
//   256 threads, grid (ceil(I/64), max(1, ceil(J/64))). Per step of 16 along R the block stages a
//   16 x 64 slice of Y and of Z in shared memory (converted to the accumulation type, mask applied),
//   then every thread updates a 4 x 4 register tile at rows ty + 16a and columns tx + 16b (a
//   strided mapping: a warp reads 16 consecutive Z columns and broadcasts Y rows, conflict-free).
//   Tensor cores (float16 / bfloat16): the same 64 x 64 block tile, 4 warps each owning a 32 x 32
//   quarter as 2 x 2 WMMA 16x16x16 fragments with float accumulators; Y and Z slices of 64 x 16 /
//   16 x 64 are staged in shared memory in the input dtype (mask applied while staging), and the
//   accumulators go through shared memory for the bias/ReLU epilogue and the bounds-checked store.
//   The staging loads are bounds-checked element loads (zeros outside I, J, R), so any size and
//   any strides are correct; they trade the 16-byte vector loads of a production GEMM for that.
//
// Traffic (s = bytes per element), ignoring tile re-reads that hit L2:
//   forward:  read A, B, b once per tile row/column, write C once, already activated.
//             torch: addmm writes C (after copying b into it), relu reads C and writes it again:
//             +2*M*N*s and one more M x N tensor.
//   backward: grad_x reads G, C (2*M*N*s), grad_w reads G, C again; db costs no traffic.
//             torch: threshold_backward reads G, C and writes D (3*M*N*s), db = D.sum(0) reads D.
//
// Numerics. Accumulation in float for fp16/bf16/fp32 and double for fp64, in FMA order along R.
// Bias and ReLU act on the accumulator, then one rounding to the output dtype. ReLU is
// (v <= 0 ? 0 : v): NaN stays NaN (torch.relu). The mask is threshold_backward's: G is zeroed where
// C <= 0 (exact zeros included, and those G become exact zeros even when NaN or inf) and passed where
// C is NaN.
//
// Preconditions (check_linear_relu_args): x (*, K), weight (N, K), bias (N,), one floating dtype, one
// CUDA device; grad_out and out of shape (*, N). Element offsets are int64 throughout (tensors may
// exceed 2^31 elements); tile indices fit gridDim limits for J < 65535 * 64.
//
// References. The CUTLASS / "How to optimize a CUDA matmul" register-tiling scheme (a thread's
// 4 x 4 outer products from shared-memory slices); CUDA C++ Programming Guide, Warp Matrix
// Functions (WMMA); cuBLASLt's RELU_AUX_BIAS / DRELU_BGRAD epilogues (the forward/backward split);
// fastops/triton/linear_relu.py (the same three-use kernel in Triton).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <type_traits>

#include "cuda/common.cuh"
#include "fastops.h"

namespace fastops {
namespace {

using cuda::acc_t;
using cuda::ceil_div;
using cuda::kMaxGridX;

constexpr int kTileI = 64, kTileJ = 64, kTileR = 16;

template <typename T>
struct GemmArgs {
  const T* y;       // (I, R) by (s_yi, s_yr)
  const T* z;       // (R, J) by (s_zr, s_zj)
  const T* c;       // mask source, Y's shape, by (s_ci, s_cr); null: no mask
  const T* bias;    // (J,) by s_b; null: none
  T* p;             // (I, J) contiguous
  T* db;            // (I,) row sums of masked Y; null: not wanted
  int64_t I, J, R;
  int64_t s_yi, s_yr, s_ci, s_cr, s_zr, s_zj, s_b;
  bool relu;
};

template <typename T, typename A>
__device__ __forceinline__ A load_y(const GemmArgs<T>& g, int64_t i, int64_t r) {
  if (i >= g.I || r >= g.R) return A(0);
  const A v = static_cast<A>(g.y[i * g.s_yi + r * g.s_yr]);
  if (g.c == nullptr) return v;
  return static_cast<A>(g.c[i * g.s_ci + r * g.s_cr]) <= A(0) ? A(0) : v;
}

template <typename T, typename A>
__device__ __forceinline__ A load_z(const GemmArgs<T>& g, int64_t r, int64_t j) {
  return (r < g.R && j < g.J) ? static_cast<A>(g.z[r * g.s_zr + j * g.s_zj]) : A(0);
}

template <typename T, typename A>
__device__ __forceinline__ void store_epilogue(const GemmArgs<T>& g, int64_t i, int64_t j, A v) {
  if (i >= g.I || j >= g.J) return;
  if (g.bias != nullptr) v += static_cast<A>(g.bias[j * g.s_b]);
  if (g.relu) v = v <= A(0) ? A(0) : v;
  g.p[i * g.J + j] = static_cast<T>(v);
}

// Staging order: element e of a 64 x 16 slice goes to (row, col) so that consecutive threads read
// consecutive addresses of whichever operand dimension has unit stride (the forward's Z = B^T and
// grad_w's Y = G^T are column-major): coalesced global loads for every one of the three uses.
// The branch depends only on the launch arguments, so it is uniform across the block.
__device__ __forceinline__ void slice_coords(int e, bool long_dim_contiguous, int long_extent, int& row_long,
                                             int& col_r) {
  if (long_dim_contiguous) {
    row_long = e % long_extent, col_r = e / long_extent;
  } else {
    col_r = e % kTileR, row_long = e / kTileR;
  }
}

// ---- SIMT path --------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(256) linear_relu_gemm_simt_kernel(const GemmArgs<T> g) {
  using A = acc_t<T>;
  __shared__ A ys[kTileR][kTileI];
  __shared__ A zs[kTileR][kTileJ];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t i0 = int64_t(blockIdx.x) * kTileI, j0 = int64_t(blockIdx.y) * kTileJ;
  const bool sums_db = g.db != nullptr && blockIdx.y == 0;
  const bool y_i_contiguous = g.s_yi == 1 && g.s_yr != 1, z_r_contiguous = g.s_zr == 1 && g.s_zj != 1;
  A acc[4][4] = {};
  A db_part = 0;  // thread tid < kTileI owns row i0 + tid of db
  for (int64_t r0 = 0; r0 < g.R; r0 += kTileR) {
    for (int e = tid; e < kTileI * kTileR; e += 256) {
      int i, r, j, rz;
      slice_coords(e, y_i_contiguous, kTileI, i, r);
      ys[r][i] = load_y<T, A>(g, i0 + i, r0 + r);
      slice_coords(e, !z_r_contiguous, kTileJ, j, rz);
      zs[rz][j] = load_z<T, A>(g, r0 + rz, j0 + j);
    }
    __syncthreads();
    if (sums_db && tid < kTileI) {
#pragma unroll
      for (int r = 0; r < kTileR; ++r) db_part += ys[r][tid];
    }
#pragma unroll
    for (int r = 0; r < kTileR; ++r) {
      A yv[4], zv[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) yv[a] = ys[r][ty + 16 * a];
#pragma unroll
      for (int b = 0; b < 4; ++b) zv[b] = zs[r][tx + 16 * b];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] += yv[a] * zv[b];
    }
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) store_epilogue<T, A>(g, i0 + ty + 16 * a, j0 + tx + 16 * b, acc[a][b]);
  if (sums_db && tid < kTileI && i0 + tid < g.I) g.db[i0 + tid] = static_cast<T>(db_part);
}

// ---- tensor-core path (float16 / bfloat16) ----------------------------------------------------

template <typename T>
struct WmmaType;
template <>
struct WmmaType<at::Half> {
  using type = __half;
  static __device__ __forceinline__ type from(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ float to(type v) { return __half2float(v); }
};
template <>
struct WmmaType<at::BFloat16> {
  using type = __nv_bfloat16;
  static __device__ __forceinline__ type from(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ float to(type v) { return __bfloat162float(v); }
};

// bfloat16 WMMA needs sm_80; launch_gemm never picks this kernel below that, and the body is
// compiled only for architectures that have it.
template <typename T>
__global__ void __launch_bounds__(128) linear_relu_gemm_wmma_kernel(const GemmArgs<T> g) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using Conv = WmmaType<T>;
  using W = typename Conv::type;
  // Staged operands in the input dtype; the accumulator tile reuses its own buffer for the epilogue.
  __shared__ __align__(32) W ys[kTileI][kTileR];  // row-major 64 x 16
  __shared__ __align__(32) W zs[kTileR][kTileJ];  // row-major 16 x 64
  __shared__ __align__(32) float cs[kTileI][kTileJ];
  __shared__ float db_rows[kTileI];
  const int tid = threadIdx.x, warp = tid / 32;
  const int wi = (warp / 2) * 32, wj = (warp % 2) * 32;  // this warp's 32 x 32 quarter
  const int64_t i0 = int64_t(blockIdx.x) * kTileI, j0 = int64_t(blockIdx.y) * kTileJ;
  const bool sums_db = g.db != nullptr && blockIdx.y == 0;
  const bool y_i_contiguous = g.s_yi == 1 && g.s_yr != 1, z_r_contiguous = g.s_zr == 1 && g.s_zj != 1;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b) wmma::fill_fragment(acc[a][b], 0.0f);
  float db_part = 0.f;
  for (int64_t r0 = 0; r0 < g.R; r0 += kTileR) {
    for (int e = tid; e < kTileI * kTileR; e += 128) {
      int i, r, j, rz;
      slice_coords(e, y_i_contiguous, kTileI, i, r);
      // Exact: the float holds a value of the input dtype (or 0), so the conversion back is lossless.
      ys[i][r] = Conv::from(load_y<T, float>(g, i0 + i, r0 + r));
      slice_coords(e, !z_r_contiguous, kTileJ, j, rz);
      zs[rz][j] = Conv::from(load_z<T, float>(g, r0 + rz, j0 + j));
    }
    __syncthreads();
    if (sums_db && tid < kTileI) {
#pragma unroll
      for (int r = 0; r < kTileR; ++r) db_part += Conv::to(ys[tid][r]);
    }
    wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> fa[2];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::row_major> fb[2];
#pragma unroll
    for (int a = 0; a < 2; ++a) wmma::load_matrix_sync(fa[a], &ys[wi + 16 * a][0], kTileR);
#pragma unroll
    for (int b = 0; b < 2; ++b) wmma::load_matrix_sync(fb[b], &zs[0][wj + 16 * b], kTileJ);
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 2; ++b) wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b)
      wmma::store_matrix_sync(&cs[wi + 16 * a][wj + 16 * b], acc[a][b], kTileJ, wmma::mem_row_major);
  if (sums_db && tid < kTileI) db_rows[tid] = db_part;
  __syncthreads();
  for (int e = tid; e < kTileI * kTileJ; e += 128) {
    const int i = e / kTileJ, j = e % kTileJ;
    store_epilogue<T, float>(g, i0 + i, j0 + j, cs[i][j]);
  }
  if (sums_db && tid < kTileI && i0 + tid < g.I) g.db[i0 + tid] = static_cast<T>(db_rows[tid]);
#else
  __trap();  // built without sm_80 code (e.g. 7.5+PTX run on sm_90): fail loudly, never leave outputs unwritten
#endif
}

// ---- launch -----------------------------------------------------------------------------------

template <typename T>
void launch_gemm(const GemmArgs<T>& g) {
  if (g.I == 0 || (g.J == 0 && g.db == nullptr)) return;
  const int64_t tiles_i = ceil_div(g.I, kTileI), tiles_j = std::max<int64_t>(1, ceil_div(g.J, kTileJ));
  FASTOPS_CHECK(tiles_j <= 65535 && tiles_i <= int64_t(kMaxGridX), "linear_relu: matrix of ", g.I, " x ", g.J,
                " is beyond the CUDA kernels' grid");
  const dim3 grid(static_cast<unsigned>(tiles_i), static_cast<unsigned>(tiles_j));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if constexpr (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>) {
    if (at::cuda::getCurrentDeviceProperties()->major >= 8) {
      linear_relu_gemm_wmma_kernel<T><<<grid, 128, 0, stream>>>(g);
    } else {
      linear_relu_gemm_simt_kernel<T><<<grid, 256, 0, stream>>>(g);
    }
  } else {
    linear_relu_gemm_simt_kernel<T><<<grid, 256, 0, stream>>>(g);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor linear_relu_fwd_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const BelowAutograd below_autograd;
  const auto geo = check_linear_relu_args("linear_relu_fwd", x, weight, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor a = x.reshape({geo.M, geo.K});
  // The output's own shape (contiguous, so the kernel's row-major M x N view of it is exact): the op
  // returns a fresh tensor, not a view (FSDP2 and autograd treat a returned view as an alias).
  at::Tensor out = new_output(geo.out_shape, x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "linear_relu_fwd_cuda", [&] {
    GemmArgs<scalar_t> g{};
    g.y = a.const_data_ptr<scalar_t>();
    g.z = weight.const_data_ptr<scalar_t>();
    g.bias = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    g.p = out.data_ptr<scalar_t>();
    g.I = geo.M, g.J = geo.N, g.R = geo.K;
    g.s_yi = a.stride(0), g.s_yr = a.stride(1);
    g.s_zr = weight.stride(1), g.s_zj = weight.stride(0);  // Z[k][n] = weight[n][k]
    g.s_b = bias.has_value() ? bias->stride(0) : 0;
    g.relu = true;
    launch_gemm(g);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_relu_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                                    const at::Tensor& weight, const at::Tensor& out,
                                                                    std::array<bool, 3> mask) {
  const BelowAutograd below_autograd;
  const auto geo = check_linear_relu_args("linear_relu_bwd", x, weight, std::nullopt);
  check_linear_relu_bwd_args("linear_relu_bwd", geo, x, grad_out, out);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor a = x.reshape({geo.M, geo.K});
  const at::Tensor go = grad_out.reshape({geo.M, geo.N}), c = out.reshape({geo.M, geo.N});
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  // A masked-off output is (0,) and its product is not launched; grad_w's GEMM also carries db, so it
  // runs (into a scratch grad_w) when only db is wanted.
  at::Tensor dx = mask[0] ? new_output(x.sizes(), opts) : x.new_empty({0});
  at::Tensor dw = mask[1] ? new_output({geo.N, geo.K}, opts)
                          : (mask[2] ? at::empty({geo.N, geo.K}, opts) : x.new_empty({0}));
  at::Tensor db = mask[2] ? new_output({geo.N}, opts) : x.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "linear_relu_bwd_cuda", [&] {
    if (mask[0]) {
      // grad_x (M, K) = (G . mask) (M, N) @ weight (N, K)
      GemmArgs<scalar_t> gx{};
      gx.y = go.const_data_ptr<scalar_t>(), gx.c = c.const_data_ptr<scalar_t>();
      gx.z = weight.const_data_ptr<scalar_t>(), gx.p = dx.data_ptr<scalar_t>();
      gx.I = geo.M, gx.J = geo.K, gx.R = geo.N;
      gx.s_yi = go.stride(0), gx.s_yr = go.stride(1), gx.s_ci = c.stride(0), gx.s_cr = c.stride(1);
      gx.s_zr = weight.stride(0), gx.s_zj = weight.stride(1);
      launch_gemm(gx);
    }
    if (!mask[1] && !mask[2]) return;
    // grad_w (N, K) = (G . mask)^T (N, M) @ A (M, K), db from the same staged tiles
    GemmArgs<scalar_t> gw{};
    gw.y = go.const_data_ptr<scalar_t>(), gw.c = c.const_data_ptr<scalar_t>();
    gw.z = a.const_data_ptr<scalar_t>(), gw.p = dw.data_ptr<scalar_t>();
    gw.db = mask[2] ? db.data_ptr<scalar_t>() : nullptr;
    gw.I = geo.N, gw.J = geo.K, gw.R = geo.M;
    gw.s_yi = go.stride(1), gw.s_yr = go.stride(0), gw.s_ci = c.stride(1), gw.s_cr = c.stride(0);
    gw.s_zr = a.stride(0), gw.s_zj = a.stride(1);
    launch_gemm(gw);
  });
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("linear_relu_fwd", &linear_relu_fwd_cuda);
  m.impl("linear_relu_bwd", &linear_relu_bwd_cuda);
}

}  // namespace fastops
