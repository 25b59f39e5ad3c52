// Conv2d, CUDA kernels: implicit-GEMM forward (bias + optional ReLU epilogue), dgrad and wgrad.
// Two paths, picked per call on the host:
//   * tensor cores (float16 / bfloat16 on sm_80+): one WMMA kernel over channels_last (NHWC)
//     operands for all three passes, split-K when the tile grid is small. Its gathers, staging and
//     split-K are in conv2d_igemm.cuh (host-and-device code, tested on the CPU by
//     tests/cpp/test_conv2d_igemm.cpp), where the layouts and tile shapes are described.
//   * SIMT (float32 / float64, and fp16/bf16 below sm_80 or beyond int32 extents): the NCHW kernel
//     below. float32 stays off the tensor cores on purpose: TF32 would lose the 1e-5 agreement with
//     the float64 reference that the tests (and torch's own fp32 path with TF32 off) hold.
//
// Math (x (N, C, H, W), w (K, Cg, R, S), y (N, K, P, Q), Cg = C / G, Kg = K / G, group g; hi = p sh -
// ph + r dh, wi = q sw - pw + s dw, x = 0 outside the image):
//   forward  y[n, k, p, q]  = act(b[k] + sum_{c, r, s} w[k, c, r, s] x[n, g Cg + c, hi, wi])
//   dgrad    dx[n, c', h, w] = sum_{k, r, s} w[k, c, r, s] dy[n, k, p, q]  over p = (h + ph - r dh) / sh,
//            q = (w + pw - s dw) / sw integral and in range
//   wgrad    dw[k, c, r, s] = sum_{n, p, q} dy[n, k, p, q] x[n, g Cg + c, hi, wi];   db[k] = sum dy[:, k]
// Each pass is one GEMM C (M x N) = A (M x Kr) B (Kr x N) per group with an operand gathered on
// the fly (no im2col tensor is ever written); SIMT orders Kr as (c, r, s) over NCHW:
//   forward  M = N P Q (pixel n,p,q)   N = Kg (k)        Kr = Cg R S (c,r,s)  A = gather(x), B = w
//   dgrad    M = N H W (pixel n,h,w)   N = Cg (c)        Kr = Kg R S (k,r,s)  A = gather(dy), B = w
//   wgrad    M = Kg (k)                N = Cg R S        Kr = N P Q           A = dy, B = gather(x)
// FLOPs: 2 N K P Q Cg R S per pass (dgrad multiplies (sh sw - 1)/(sh sw) of its A entries by
// masked zeros when strided: simple and correct for every stride / dilation, not the fastest).
//
// Tensor-core path. Block tile 128 x 64, reduction step 32, 4 warps of 64 x 32 (4 x 2 WMMA
// 16x16x16 fragments, float accumulators). Traffic per step: 128 x 32 A and 32 x 64 B elements
// (16-byte loads when channels % 8 == 0), i.e. x is fetched about K / 64 times in forward (mostly
// from L2); y written once, already biased and activated. Registers hold the next step's operands
// while the tensor cores consume the current shared buffer. Split-K workspace: < 4 x SMs tiles of
// floats, plus one float pass to reduce it. db: per-slice column sums of NHWC dy, then a sum over
// slices in order. Numerics: fp16/bf16 products accumulated in float32, one rounding at the end
// (split partials add in float in split order): deterministic run to run.
//
// SIMT path.
// Grid: (cdiv(M, 64), cdiv(N, 64), G), 256 threads; a block owns one 64 x 64 tile of C and loops
// over Kr in steps of 16. Each step the block gathers A (64 x 16) and B (16 x 64) into shared
// memory (converted to the accumulation type, so fp16/bf16 are widened once), then each thread
// accumulates a 4 x 4 micro-tile in registers. Every C element is written by one thread: no
// atomics, deterministic. db is a separate reduction kernel, one block per output channel.
//
// Traffic: per K-step a block reads 64 x 16 A and 16 x 64 B elements (through L1/L2: neighbouring
// gathers overlap), i.e. each x element is fetched about K / 64 times for forward, plus one write
// of y. The fused ReLU saves a full read + write of y (2 N K P Q elements) against cuDNN conv
// followed by separate bias and ReLU kernels.
//
// Numerics: accumulation in float32 (float64 for float64 input; at::opmath_type), one rounding
// to the output dtype after bias and ReLU. SIMT sums each K-step's 16 products apart and adds that
// partial to the running sum with Kahan compensation, so the error stays near one rounding of the
// result however long Kr is (a weight gradient's N P Q): a plain running sum grows like sqrt(Kr)
// ulp, and missed the float32 tolerance on an H100 at Kr = 5740. The ReLU is written `v <= 0 ? 0 : v` so that NaN stays
// NaN, as torch.relu does (fmax would drop it).
//
// Preconditions (check_conv2d_args, csrc/fastops.h): 4-D operands of the same dtype and device,
// valid groups / shapes, P, Q >= 1; operands are made contiguous in the path's layout here (NCHW for
// SIMT, channels_last for tensor cores) and outputs returned in torch's conv layout
// (conv_memory_format). Offsets are int64 (the tensor-core path indexes coordinates in int only
// after use_tensor_cores checked every extent); a load happens only under its bounds mask, so no
// thread reads or writes out of bounds; 16-byte vector loads only from 16-byte-aligned bases.
//
// References: NVIDIA CUTLASS, "Implicit GEMM Convolution" (media/docs/implicit_gemm_convolution.md);
// Vasudevan et al. / Chetlur et al., "cuDNN: Efficient Primitives for Deep Learning" (2014).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <limits>
#include <type_traits>

#include "cuda/conv2d_igemm.cuh"
#include "fastops.h"

namespace fastops {
namespace {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kThreads = 256;

// Geometry passed by value to the kernels (int64 everywhere: N C H W may exceed 2^31).
struct ConvParams {
  int64_t N, C, H, W, K, P, Q, R, S, sh, sw, ph, pw, dh, dw, Cg, Kg;
};

inline ConvParams make_params(const Conv2dGeometry& g) {
  return {g.N, g.C, g.H, g.W, g.K, g.P, g.Q, g.R, g.S, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.Cg, g.Kg};
}

// ---- the three operand gathers -----------------------------------------------------------------
// a(m, kr, g) and b(kr, n, g) return the GEMM operand (0 outside the image / matrix);
// store(m, n, g, acc) writes C. m < M, n < N and kr < Kr are guaranteed by the caller.

template <typename T, typename Acc>
struct FwdGemm {
  const T* x;
  const T* w;
  const T* bias;  // (K,) or null
  T* y;
  ConvParams p;
  bool relu;
  __device__ Acc a(int64_t m, int64_t kr, int64_t g) const {
    const int64_t q = m % p.Q, pp = (m / p.Q) % p.P, n = m / (p.P * p.Q);
    const int64_t s = kr % p.S, r = (kr / p.S) % p.R, c = kr / (p.R * p.S);
    const int64_t hi = pp * p.sh - p.ph + r * p.dh, wi = q * p.sw - p.pw + s * p.dw;
    if (hi < 0 || hi >= p.H || wi < 0 || wi >= p.W) return Acc(0);
    return static_cast<Acc>(x[((n * p.C + g * p.Cg + c) * p.H + hi) * p.W + wi]);
  }
  __device__ Acc b(int64_t kr, int64_t k, int64_t g) const {
    return static_cast<Acc>(w[(g * p.Kg + k) * (p.Cg * p.R * p.S) + kr]);
  }
  __device__ void store(int64_t m, int64_t k, int64_t g, Acc v) const {
    const int64_t q = m % p.Q, pp = (m / p.Q) % p.P, n = m / (p.P * p.Q), kk = g * p.Kg + k;
    if (bias != nullptr) v += static_cast<Acc>(bias[kk]);
    if (relu) v = (v <= Acc(0)) ? Acc(0) : v;  // keeps NaN, as torch.relu does
    y[((n * p.K + kk) * p.P + pp) * p.Q + q] = static_cast<T>(v);
  }
};

template <typename T, typename Acc>
struct DgradGemm {
  const T* dy;
  const T* w;
  T* dx;
  ConvParams p;
  __device__ Acc a(int64_t m, int64_t kr, int64_t g) const {
    const int64_t wq = m % p.W, h = (m / p.W) % p.H, n = m / (p.H * p.W);
    const int64_t s = kr % p.S, r = (kr / p.S) % p.R, k = kr / (p.R * p.S);
    const int64_t hn = h + p.ph - r * p.dh, wn = wq + p.pw - s * p.dw;  // = pp sh, q sw when they contribute
    if (hn < 0 || wn < 0 || hn % p.sh != 0 || wn % p.sw != 0) return Acc(0);
    const int64_t pp = hn / p.sh, q = wn / p.sw;
    if (pp >= p.P || q >= p.Q) return Acc(0);
    return static_cast<Acc>(dy[((n * p.K + g * p.Kg + k) * p.P + pp) * p.Q + q]);
  }
  __device__ Acc b(int64_t kr, int64_t c, int64_t g) const {
    const int64_t rs = kr % (p.R * p.S), k = kr / (p.R * p.S);
    return static_cast<Acc>(w[((g * p.Kg + k) * p.Cg + c) * (p.R * p.S) + rs]);
  }
  __device__ void store(int64_t m, int64_t c, int64_t g, Acc v) const {
    const int64_t wq = m % p.W, h = (m / p.W) % p.H, n = m / (p.H * p.W);
    dx[((n * p.C + g * p.Cg + c) * p.H + h) * p.W + wq] = static_cast<T>(v);
  }
};

template <typename T, typename Acc>
struct WgradGemm {
  const T* dy;
  const T* x;
  T* dw;
  ConvParams p;
  __device__ Acc a(int64_t k, int64_t t, int64_t g) const {
    const int64_t q = t % p.Q, pp = (t / p.Q) % p.P, n = t / (p.P * p.Q);
    return static_cast<Acc>(dy[((n * p.K + g * p.Kg + k) * p.P + pp) * p.Q + q]);
  }
  __device__ Acc b(int64_t t, int64_t j, int64_t g) const {
    const int64_t q = t % p.Q, pp = (t / p.Q) % p.P, n = t / (p.P * p.Q);
    const int64_t s = j % p.S, r = (j / p.S) % p.R, c = j / (p.R * p.S);
    const int64_t hi = pp * p.sh - p.ph + r * p.dh, wi = q * p.sw - p.pw + s * p.dw;
    if (hi < 0 || hi >= p.H || wi < 0 || wi >= p.W) return Acc(0);
    return static_cast<Acc>(x[((n * p.C + g * p.Cg + c) * p.H + hi) * p.W + wi]);
  }
  __device__ void store(int64_t k, int64_t j, int64_t g, Acc v) const {
    dw[(g * p.Kg + k) * (p.Cg * p.R * p.S) + j] = static_cast<T>(v);
  }
};

// acc += v with Kahan compensation comp (the sum is acc - comp). Once acc is inf or NaN the
// compensation would turn NaN ((inf - acc) - v) and poison later finite steps: it is dropped then,
// and inf / NaN propagate as in a plain sum.
template <typename Acc>
__device__ __forceinline__ void kahan_add(Acc& acc, Acc& comp, Acc v) {
  const Acc y = v - comp, t = acc + y;
  comp = isfinite(t) ? (t - acc) - y : Acc(0);
  acc = t;
}

// C (M x Ncols) of group blockIdx.z = A (M x Kr) B (Kr x Ncols), A and B gathered by `op`.
template <typename Acc, typename Op>
__global__ void __launch_bounds__(kThreads)
    conv2d_implicit_gemm_simt_kernel(const Op op, int64_t M, int64_t Ncols, int64_t Kr) {
  __shared__ Acc As[kTileK][kTileM];
  __shared__ Acc Bs[kTileK][kTileN];
  const int tid = threadIdx.x;
  const int64_t m0 = int64_t(blockIdx.x) * kTileM, n0 = int64_t(blockIdx.y) * kTileN, g = blockIdx.z;
  // Thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j (i, j < 4): strided so that
  // neighbouring threads read neighbouring shared-memory words (no bank conflicts on Bs).
  const int tx = tid % 16, ty = tid / 16;
  // Each K-tile's products sum into part, which joins acc with Kahan compensation (acc - comp is
  // the sum so far): a plain running sum over a weight gradient's N P Q terms (5740 in the tests)
  // grew its error like sqrt(N P Q) ulp, past the float32 tolerance on an H100.
  Acc acc[4][4] = {}, comp[4][4] = {};
  for (int64_t k0 = 0; k0 < Kr; k0 += kTileK) {
    // 64 x 16 = 1024 elements per operand, 4 per thread; consecutive threads take consecutive m
    // (A) / n (B), which are the contiguous directions of x / w for most shapes.
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int idx = tid + e * kThreads;
      const int am = idx % kTileM, ak = idx / kTileM;
      const int64_t gm = m0 + am, gk = k0 + ak;
      As[ak][am] = (gm < M && gk < Kr) ? op.a(gm, gk, g) : Acc(0);
      const int bn = idx % kTileN, bk = idx / kTileN;
      const int64_t gn = n0 + bn, gk2 = k0 + bk;
      Bs[bk][bn] = (gn < Ncols && gk2 < Kr) ? op.b(gk2, gn, g) : Acc(0);
    }
    __syncthreads();
    Acc part[4][4] = {};
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      Acc av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) part[i][j] += av[i] * bv[j];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) kahan_add(acc[i][j], comp[i][j], part[i][j]);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gm = m0 + ty + 16 * i, gn = n0 + tx + 16 * j;
      if (gm < M && gn < Ncols) op.store(gm, gn, g, acc[i][j] - comp[i][j]);
    }
  }
}

// db[k] = sum_{n, p, q} dy[n, k, p, q]: one block per k, a block-wide tree reduction.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    conv2d_bias_grad_reduce_kernel(const T* __restrict__ dy, T* __restrict__ db, int64_t N, int64_t K, int64_t PQ) {
  __shared__ Acc part[kThreads];
  const int64_t k = blockIdx.x;
  Acc s = 0;
  for (int64_t i = threadIdx.x; i < N * PQ; i += kThreads) {
    const int64_t n = i / PQ, j = i % PQ;
    s += static_cast<Acc>(dy[(n * K + k) * PQ + j]);
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[k] = static_cast<T>(part[0]);
}

template <typename Acc, typename Op>
void launch_gemm(const Op& op, int64_t M, int64_t Ncols, int64_t Kr, int64_t G) {
  if (M == 0 || Ncols == 0) return;
  const int64_t gx = (M + kTileM - 1) / kTileM, gy = (Ncols + kTileN - 1) / kTileN;
  FASTOPS_CHECK(gx <= std::numeric_limits<int32_t>::max() && gy <= 65535 && G <= 65535,
                "conv2d: problem too large for one launch (grid ", gx, " x ", gy, " x ", G, ")");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(G));
  conv2d_implicit_gemm_simt_kernel<Acc, Op>
      <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(op, M, Ncols, Kr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- tensor-core path (float16 / bfloat16, NHWC; see conv2d_igemm.cuh) --------------------------

template <typename T>
struct WmmaElem;
template <>
struct WmmaElem<at::Half> {
  using type = __half;  // same 16 bits as at::Half
};
template <>
struct WmmaElem<at::BFloat16> {
  using type = __nv_bfloat16;
};
// The staged tiles are c10 types read back through the CUDA types: the same 16 bits.
static_assert(sizeof(at::Half) == sizeof(__half) && alignof(at::Half) == alignof(__half));
static_assert(sizeof(at::BFloat16) == sizeof(__nv_bfloat16) && alignof(at::BFloat16) == alignof(__nv_bfloat16));

// One (kTcM x kTcN) tile of group g's GEMM over the reduction range of one split. The next step's
// operands are loaded into registers while the tensor cores work on the current shared-memory
// buffer, then stored into the other buffer: one barrier per step. bfloat16 WMMA needs sm_80, so the
// body exists only there (the host never launches this kernel on older devices).
template <typename Op>
__global__ void __launch_bounds__(igemm::kTcThreads, 3)
    conv2d_implicit_gemm_wmma_kernel(const Op op, int splits, int chunk, float* __restrict__ ws) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using namespace igemm;
  using T = typename Op::T;
  using W = typename WmmaElem<T>::type;
  using Stage = TcStage<Op>;
  using LayoutA = std::conditional_t<Stage::kARowMajor, wmma::row_major, wmma::col_major>;
  using LayoutB = std::conditional_t<Stage::kBRowMajor, wmma::row_major, wmma::col_major>;
  __shared__ __align__(128) T As[2][Stage::kASize];
  __shared__ __align__(128) T Bs[2][Stage::kBSize];
  __shared__ __align__(128) float Cs[kTcWarps][kFrag * kFrag];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int m0 = blockIdx.x * kTcM, n0 = blockIdx.y * kTcN;
  const int g = blockIdx.z / splits, split = blockIdx.z % splits;
  const int G = gridDim.z / splits;
  int kbeg, kend;
  split_range(op.Kr, chunk, split, kbeg, kend);
  const int wm = warp_m(warp), wn = warp_n(warp);

  constexpr int kFm = kWarpM / kFrag, kFn = kWarpN / kFrag;
  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float> acc[kFm][kFn];
#pragma unroll
  for (int a = 0; a < kFm; ++a)
#pragma unroll
    for (int b = 0; b < kFn; ++b) wmma::fill_fragment(acc[a][b], 0.0f);

  typename Stage::Regs regs;
  if (kbeg < kend) {
    Stage::load(op, tid, m0, n0, kbeg, kend, g, regs);
    Stage::store(regs, tid, As[0], Bs[0]);
  }
  __syncthreads();
  int buf = 0;
  for (int k0 = kbeg; k0 < kend; k0 += kTcK) {
    const bool more = k0 + kTcK < kend;
    if (more) Stage::load(op, tid, m0, n0, k0 + kTcK, kend, g, regs);
    const W* as = reinterpret_cast<const W*>(As[buf]);
    const W* bs = reinterpret_cast<const W*>(Bs[buf]);
#pragma unroll
    for (int kk = 0; kk < kTcK; kk += kFrag) {
      wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, W, LayoutA> fa[kFm];
      wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, W, LayoutB> fb[kFn];
#pragma unroll
      for (int a = 0; a < kFm; ++a) wmma::load_matrix_sync(fa[a], as + Stage::a_off(wm + kFrag * a, kk), Stage::kLda);
#pragma unroll
      for (int b = 0; b < kFn; ++b) wmma::load_matrix_sync(fb[b], bs + Stage::b_off(kk, wn + kFrag * b), Stage::kLdb);
#pragma unroll
      for (int a = 0; a < kFm; ++a)
#pragma unroll
        for (int b = 0; b < kFn; ++b) wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
    }
    if (more) Stage::store(regs, tid, As[buf ^ 1], Bs[buf ^ 1]);
    __syncthreads();
    buf ^= 1;
  }

  // Epilogue, one 16 x 16 fragment at a time through this warp's own scratch tile: lanes then write
  // 16 consecutive output columns (channels, contiguous in NHWC) per half-warp.
  float* cs = Cs[warp];
#pragma unroll
  for (int a = 0; a < kFm; ++a) {
#pragma unroll
    for (int b = 0; b < kFn; ++b) {
      wmma::store_matrix_sync(cs, acc[a][b], kFrag, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < kFrag * kFrag; e += 32) {
        store_acc(op, ws, split, g, G, m0 + wm + kFrag * a + e / kFrag, n0 + wn + kFrag * b + e % kFrag, cs[e]);
      }
      __syncwarp();
    }
  }
#else
  __trap();  // built without sm_80 code: fail loudly rather than leave the outputs unwritten
#endif
}

template <typename Op>
__global__ void __launch_bounds__(kThreads)
    conv2d_implicit_gemm_split_reduce_kernel(const Op op, const float* __restrict__ ws, int splits, int G, int64_t total) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    igemm::reduce_splits(op, ws, splits, G, e);
  }
}

// db[k] = sum over rows of dy (rows, K) in NHWC: block (32 x 8) threads own 32 channels and a
// slice of rows (threads along x read consecutive channels: coalesced); per-slice float partials
// go to `part` (slices x K), summed in slice order by the second kernel (deterministic).
template <typename T>
__global__ void __launch_bounds__(256)
    conv2d_bias_grad_nhwc_partial_kernel(const T* __restrict__ dy, float* __restrict__ part, int64_t rows, int64_t K,
                                         int64_t rows_per_slice) {
  __shared__ float sums[8][33];
  const int64_t k = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_slice;
  const int64_t r1 = std::min(rows, r0 + rows_per_slice);
  float s = 0.f;
  if (k < K) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) s += static_cast<float>(dy[r * K + k]);
  }
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && k < K) {
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) t += sums[i][threadIdx.x];
    part[blockIdx.y * K + k] = t;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    conv2d_bias_grad_finish_kernel(const float* __restrict__ part, T* __restrict__ db, int64_t slices, int64_t K) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  float s = 0.f;
  for (int64_t i = 0; i < slices; ++i) s += part[i * K + k];
  db[k] = static_cast<T>(s);
}

template <typename T>
void launch_bias_grad_nhwc(const at::Tensor& dy_cl, at::Tensor& db, int64_t rows, int64_t K) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t slices = std::clamp<int64_t>((rows + 1023) / 1024, 1, 1024);
  const int64_t rows_per_slice = (rows + slices - 1) / slices;
  const at::Tensor part = at::empty({slices, K}, dy_cl.options().dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned>((K + 31) / 32), static_cast<unsigned>(slices));
  conv2d_bias_grad_nhwc_partial_kernel<T><<<grid, dim3(32, 8), 0, stream>>>(
      dy_cl.const_data_ptr<T>(), part.mutable_data_ptr<float>(), rows, K, rows_per_slice);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  conv2d_bias_grad_finish_kernel<T><<<static_cast<unsigned>((K + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      part.const_data_ptr<float>(), db.mutable_data_ptr<T>(), slices, K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs one implicit GEMM on the tensor cores, split along the reduction when the tile grid is small.
template <typename Op>
void launch_igemm_wmma(const Op& op, int G, const at::Tensor& like) {
  using namespace igemm;
  if (op.M == 0 || op.Nc == 0) return;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const SplitPlan plan = plan_splits(op.M, op.Nc, op.Kr, G, sms);
  const int64_t gx = (int64_t(op.M) + kTcM - 1) / kTcM, gy = (int64_t(op.Nc) + kTcN - 1) / kTcN;
  const int64_t gz = int64_t(G) * plan.splits;
  FASTOPS_CHECK(gy <= 65535 && gz <= 65535, "conv2d: problem too large for one launch (grid ", gx, " x ", gy, " x ",
                gz, ")");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor ws;
  if (plan.splits > 1) ws = at::empty({int64_t(plan.splits) * G * op.M * op.Nc}, like.options().dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz));
  conv2d_implicit_gemm_wmma_kernel<Op><<<grid, kTcThreads, 0, stream>>>(op, plan.splits, plan.chunk,
                                                               ws.defined() ? ws.mutable_data_ptr<float>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (plan.splits > 1) {
    const int64_t total = int64_t(G) * op.M * op.Nc;
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(sms) * 8);
    conv2d_implicit_gemm_split_reduce_kernel<Op><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        op, ws.const_data_ptr<float>(), plan.splits, G, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// The tensor-core path takes float16 / bfloat16 on sm_80+ when every GEMM and image extent fits in
// int with a tile to spare (the igemm ops index in int); anything else runs the SIMT kernels.
// The kernel's image for this device must come from sm_80+ code: a build for older archs only
// (e.g. TORCH_CUDA_ARCH_LIST="7.5+PTX" run on an H100 through the PTX JIT) has the empty body.
bool tensor_core_kernel_built(int device) {
  static std::array<std::atomic<int>, 64> cached{};  // 0 unknown, 1 yes, 2 no (a racing twin writes the same)
  if (device < 0 || device >= static_cast<int>(cached.size())) return false;
  if (cached[device].load() == 0) {
    cudaFuncAttributes attr{};
    const cudaError_t err = cudaFuncGetAttributes(&attr, conv2d_implicit_gemm_wmma_kernel<igemm::FwdTc<at::Half>>);
    if (err != cudaSuccess) (void)cudaGetLastError();  // clear it: the SIMT path will run instead
    cached[device].store((err == cudaSuccess && attr.ptxVersion >= 80) ? 1 : 2);
  }
  return cached[device].load() == 1;
}

bool use_tensor_cores(const at::Tensor& x, const Conv2dGeometry& g) {
  if (x.scalar_type() != at::kHalf && x.scalar_type() != at::kBFloat16) return false;
  if (at::cuda::getDeviceProperties(x.device().index())->major < 8) return false;
  if (!tensor_core_kernel_built(x.device().index())) return false;
  constexpr int64_t kLimit = std::numeric_limits<int>::max() - 2 * igemm::kTcM;
  const int64_t extents[] = {g.N * g.P * g.Q, g.N * g.H * g.W, g.K * g.R * g.S, g.C * g.R * g.S, g.N, g.C, g.H,
                             g.W, g.K, g.P + g.ph, g.Q + g.pw, g.H + g.ph, g.W + g.pw, g.P * g.sh + g.R * g.dh,
                             g.Q * g.sw + g.S * g.dw};
  return std::all_of(std::begin(extents), std::end(extents), [&](int64_t e) { return e < kLimit; });
}

igemm::TcParams make_tc_params(const Conv2dGeometry& g) {
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return {i(g.N), i(g.C),  i(g.H),  i(g.W),  i(g.K),  i(g.P),  i(g.Q),  i(g.R), i(g.S),
          i(g.sh), i(g.sw), i(g.ph), i(g.pw), i(g.dh), i(g.dw), i(g.Cg), i(g.Kg), i(g.G)};
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

at::Tensor conv2d_fwd_cuda(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& bias_,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           bool relu) {
  const BelowAutograd below_autograd;
  const auto g = check_conv2d_args("conv2d_fwd", x_, w_, stride, padding, dilation, groups);
  check_conv2d_bias("conv2d_fwd", g, x_, bias_);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::MemoryFormat out_format = conv_memory_format(x_, w_, stride, padding, dilation, groups);
  const at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  const bool tc = use_tensor_cores(x_, g);
  const at::MemoryFormat work_format = tc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_.contiguous(work_format), w = w_.contiguous(work_format);
  at::Tensor y = new_output({g.N, g.K, g.P, g.Q}, x.options().memory_format(work_format));
  if (y.numel() > 0 && g.Cg == 0) {  // an empty reduction: y = act(bias)
    y.zero_();
    if (bias.defined()) y.add_(bias.view({1, g.K, 1, 1}));
    if (relu) y.clamp_min_(0);
  } else if (y.numel() > 0 && tc) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "conv2d_fwd_cuda_tc", [&] {
      igemm::FwdTc<scalar_t> op{};
      op.x = x.const_data_ptr<scalar_t>(), op.w = w.const_data_ptr<scalar_t>();
      op.bias = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
      op.y = y.mutable_data_ptr<scalar_t>();
      op.p = make_tc_params(g);
      op.M = static_cast<int>(g.N * g.P * g.Q), op.Nc = static_cast<int>(g.Kg), op.Kr = static_cast<int>(g.crs());
      op.relu = relu;
      op.vec_a = g.Cg % 8 == 0 && aligned16(op.x);
      op.vec_b = g.Cg % 8 == 0 && aligned16(op.w);
      launch_igemm_wmma(op, static_cast<int>(g.G), x);
    });
  } else if (y.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv2d_fwd_cuda", [&] {
      using Acc = at::opmath_type<scalar_t>;
      FwdGemm<scalar_t, Acc> op{x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                                y.mutable_data_ptr<scalar_t>(), make_params(g), relu};
      launch_gemm<Acc>(op, g.N * g.P * g.Q, g.Kg, g.crs(), g.G);
    });
  }
  return in_memory_format(y, out_format);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_bwd_cuda(const at::Tensor& dy_, const at::Tensor& x_,
                                                               const at::Tensor& w_, at::IntArrayRef stride,
                                                               at::IntArrayRef padding, at::IntArrayRef dilation,
                                                               int64_t groups, std::array<bool, 3> mask) {
  const BelowAutograd below_autograd;
  const auto g = check_conv2d_args("conv2d_bwd", x_, w_, stride, padding, dilation, groups);
  check_conv2d_grad_out("conv2d_bwd", g, x_, dy_);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::MemoryFormat out_format = conv_memory_format(x_, w_, stride, padding, dilation, groups);
  const bool tc = use_tensor_cores(x_, g);
  const at::MemoryFormat work_format = tc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_.contiguous(work_format), w = w_.contiguous(work_format), dy = dy_.contiguous(work_format);
  const auto opts = x.options();
  const auto work_opts = opts.memory_format(work_format);
  at::Tensor dx = mask[0] ? new_output(x.sizes(), work_opts) : at::empty({0}, opts);
  at::Tensor dw = mask[1] ? new_output(w.sizes(), work_opts) : at::empty({0}, opts);
  at::Tensor db = mask[2] ? new_output({g.K}, opts) : at::empty({0}, opts);
  const int64_t npq = g.N * g.P * g.Q;
  if (mask[0] && dx.numel() > 0 && (g.Cg == 0 || npq == 0)) dx.zero_();
  if (mask[1] && dw.numel() > 0 && npq == 0) dw.zero_();
  const bool run_dgrad = mask[0] && dx.numel() > 0 && g.Cg > 0 && npq > 0;
  const bool run_wgrad = mask[1] && dw.numel() > 0 && npq > 0;
  if (tc) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "conv2d_bwd_cuda_tc", [&] {
      const igemm::TcParams p = make_tc_params(g);
      if (run_dgrad) {
        igemm::DgradTc<scalar_t> op{};
        op.dy = dy.const_data_ptr<scalar_t>(), op.w = w.const_data_ptr<scalar_t>();
        op.dx = dx.mutable_data_ptr<scalar_t>(), op.p = p;
        op.M = static_cast<int>(g.N * g.H * g.W), op.Nc = static_cast<int>(g.Cg);
        op.Kr = static_cast<int>(g.Kg * g.R * g.S);
        op.vec_a = g.Kg % 8 == 0 && aligned16(op.dy);
        op.vec_b = g.Cg % 8 == 0 && aligned16(op.w);
        launch_igemm_wmma(op, static_cast<int>(g.G), x);
      }
      if (run_wgrad) {
        igemm::WgradTc<scalar_t> op{};
        op.dy = dy.const_data_ptr<scalar_t>(), op.x = x.const_data_ptr<scalar_t>();
        op.dw = dw.mutable_data_ptr<scalar_t>(), op.p = p;
        op.M = static_cast<int>(g.Kg), op.Nc = static_cast<int>(g.crs()), op.Kr = static_cast<int>(npq);
        op.vec_a = g.Kg % 8 == 0 && aligned16(op.dy);
        op.vec_b = g.Cg % 8 == 0 && aligned16(op.x);
        launch_igemm_wmma(op, static_cast<int>(g.G), x);
      }
      if (mask[2]) launch_bias_grad_nhwc<scalar_t>(dy, db, npq, g.K);
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv2d_bwd_cuda", [&] {
      using Acc = at::opmath_type<scalar_t>;
      const ConvParams p = make_params(g);
      if (run_dgrad) {
        DgradGemm<scalar_t, Acc> op{dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                    dx.mutable_data_ptr<scalar_t>(), p};
        launch_gemm<Acc>(op, g.N * g.H * g.W, g.Cg, g.Kg * g.R * g.S, g.G);
      }
      if (run_wgrad) {
        WgradGemm<scalar_t, Acc> op{dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                    dw.mutable_data_ptr<scalar_t>(), p};
        launch_gemm<Acc>(op, g.Kg, g.crs(), npq, g.G);
      }
      if (mask[2]) {
        conv2d_bias_grad_reduce_kernel<scalar_t, Acc><<<static_cast<unsigned>(g.K), kThreads, 0,
                                                        at::cuda::getCurrentCUDAStream()>>>(
            dy.const_data_ptr<scalar_t>(), db.mutable_data_ptr<scalar_t>(), g.N, g.K, g.P * g.Q);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  if (mask[0]) dx = in_memory_format(dx, out_format);
  if (mask[1]) dw = in_memory_format(dw, out_format);
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("conv2d_fwd", &conv2d_fwd_cuda);
  m.impl("conv2d_bwd", &conv2d_bwd_cuda);
}

}  // namespace fastops
