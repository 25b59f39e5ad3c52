// Conv2d, CUDA kernels: implicit-GEMM forward (bias + optional ReLU epilogue), dgrad and wgrad,
// SIMT with shared-memory tiling, for float16 / bfloat16 / float32 / float64.
//
// Math (x (N, C, H, W), w (K, Cg, R, S), y (N, K, P, Q), Cg = C / G, Kg = K / G, group g; hi = p sh -
// ph + r dh, wi = q sw - pw + s dw, x = 0 outside the image):
//   forward  y[n, k, p, q]  = act(b[k] + sum_{c, r, s} w[k, c, r, s] x[n, g Cg + c, hi, wi])
//   dgrad    dx[n, c', h, w] = sum_{k, r, s} w[k, c, r, s] dy[n, k, p, q]  over p = (h + ph - r dh) / sh,
//            q = (w + pw - s dw) / sw integral and in range
//   wgrad    dw[k, c, r, s] = sum_{n, p, q} dy[n, k, p, q] x[n, g Cg + c, hi, wi];   db[k] = sum dy[:, k]
// Each pass is one GEMM C (M x N) = A (M x Kr) B (Kr x N) per group with an operand gathered on
// the fly from the NCHW tensors (no im2col tensor is ever written):
//   forward  M = N P Q (pixel n,p,q)   N = Kg (k)        Kr = Cg R S (c,r,s)  A = gather(x), B = w
//   dgrad    M = N H W (pixel n,h,w)   N = Cg (c)        Kr = Kg R S (k,r,s)  A = gather(dy), B = w
//   wgrad    M = Kg (k)                N = Cg R S        Kr = N P Q           A = dy, B = gather(x)
// FLOPs: 2 N K P Q Cg R S per pass (dgrad multiplies (sh sw - 1)/(sh sw) of its A entries by
// masked zeros when strided: simple and correct for every stride / dilation, not the fastest).
//
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
// to the output dtype after bias and ReLU. The ReLU is written `v <= 0 ? 0 : v` so that NaN stays
// NaN, as torch.relu does (fmax would drop it).
//
// Preconditions (check_conv2d_args, csrc/fastops.h): 4-D operands of the same dtype and device,
// valid groups / shapes, P, Q >= 1; operands are made contiguous here. All offsets are int64; a
// load happens only under its bounds mask, so no thread reads or writes out of bounds.
//
// References: NVIDIA CUTLASS, "Implicit GEMM Convolution" (media/docs/implicit_gemm_convolution.md);
// Vasudevan et al. / Chetlur et al., "cuDNN: Efficient Primitives for Deep Learning" (2014).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

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
  Acc acc[4][4] = {};
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
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gm = m0 + ty + 16 * i, gn = n0 + tx + 16 * j;
      if (gm < M && gn < Ncols) op.store(gm, gn, g, acc[i][j]);
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
  TORCH_CHECK(gx <= std::numeric_limits<int32_t>::max() && gy <= 65535 && G <= 65535,
              "conv2d: problem too large for one launch (grid ", gx, " x ", gy, " x ", G, ")");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(G));
  conv2d_implicit_gemm_simt_kernel<Acc, Op>
      <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(op, M, Ncols, Kr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor conv2d_fwd_cuda(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& bias_,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           bool relu) {
  const auto g = check_conv2d_args("conv2d_fwd", x_, w_, stride, padding, dilation, groups);
  check_conv2d_bias("conv2d_fwd", g, x_, bias_);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), w = w_.contiguous();
  const at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  at::Tensor y = new_output({g.N, g.K, g.P, g.Q}, x.options());
  if (y.numel() == 0) return y;
  if (g.Cg == 0) {  // an empty reduction: y = act(bias)
    y.zero_();
    if (bias.defined()) y.add_(bias.view({1, g.K, 1, 1}));
    if (relu) y.clamp_min_(0);
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv2d_fwd_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
    FwdGemm<scalar_t, Acc> op{x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                              bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                              y.mutable_data_ptr<scalar_t>(), make_params(g), relu};
    launch_gemm<Acc>(op, g.N * g.P * g.Q, g.Kg, g.crs(), g.G);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_bwd_cuda(const at::Tensor& dy_, const at::Tensor& x_,
                                                               const at::Tensor& w_, at::IntArrayRef stride,
                                                               at::IntArrayRef padding, at::IntArrayRef dilation,
                                                               int64_t groups, std::array<bool, 3> mask) {
  const auto g = check_conv2d_args("conv2d_bwd", x_, w_, stride, padding, dilation, groups);
  check_conv2d_grad_out("conv2d_bwd", g, x_, dy_);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), w = w_.contiguous(), dy = dy_.contiguous();
  const auto opts = x.options();
  at::Tensor dx = mask[0] ? new_output(x.sizes(), opts) : at::empty({0}, opts);
  at::Tensor dw = mask[1] ? new_output(w.sizes(), opts) : at::empty({0}, opts);
  at::Tensor db = mask[2] ? new_output({g.K}, opts) : at::empty({0}, opts);
  const int64_t npq = g.N * g.P * g.Q;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv2d_bwd_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const ConvParams p = make_params(g);
    if (mask[0] && dx.numel() > 0) {
      if (g.Cg == 0 || npq == 0) {
        dx.zero_();
      } else {
        DgradGemm<scalar_t, Acc> op{dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                    dx.mutable_data_ptr<scalar_t>(), p};
        launch_gemm<Acc>(op, g.N * g.H * g.W, g.Cg, g.Kg * g.R * g.S, g.G);
      }
    }
    if (mask[1] && dw.numel() > 0) {
      if (npq == 0) {
        dw.zero_();
      } else {
        WgradGemm<scalar_t, Acc> op{dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                    dw.mutable_data_ptr<scalar_t>(), p};
        launch_gemm<Acc>(op, g.Kg, g.crs(), npq, g.G);
      }
    }
    if (mask[2]) {
      conv2d_bias_grad_reduce_kernel<scalar_t, Acc><<<static_cast<unsigned>(g.K), kThreads, 0,
                                                      at::cuda::getCurrentCUDAStream()>>>(
          dy.const_data_ptr<scalar_t>(), db.mutable_data_ptr<scalar_t>(), g.N, g.K, g.P * g.Q);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("conv2d_fwd", &conv2d_fwd_cuda);
  m.impl("conv2d_bwd", &conv2d_bwd_cuda);
}

}  // namespace fastops
