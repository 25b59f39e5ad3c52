// Fused linear + ReLU, C++ kernels for CPU tensors (float32, float64).
//
// Math. x seen as A (M, K) (M = product of x's leading dims), weight B (N, K), bias b (N,).
//   forward:  C = relu(A B^T + b),  C (M, N)
//   backward: with G = dL/dC and the mask D = G (.) [C > 0]   (C > 0 <=> pre-activation > 0)
//             dA = D B  (M, K),   dB = D^T A  (N, K),   db = sum_m D[m, :]  (N,)
// Only A, B and C are saved for backward: the sign of the activated output is the mask, so the
// pre-activation is never kept.
// FLOPs: forward 2*M*N*K (+2*M*N epilogue); backward 4*M*N*K (+3*M*N masking and db).
//
// Decomposition. The two matrix products of each pass run in ATen's BLAS-backed mm (MKL /
// OpenBLAS, already blocked and threaded); what is ours is everything around them:
//   forward epilogue:  one in-place sweep over the GEMM's output, C = max(C + b, 0), rows split
//                      over threads by at::parallel_for, each row swept with at::vec.
//   backward masking:  one sweep over G and C that writes D and, in the same pass, sums D's
//                      columns into db. Threads take column tiles of kTile elements and walk all M
//                      rows of their tile, so each thread owns its slice of db (no atomics, no
//                      cross-thread reduction) and reads rows as contiguous kTile-element runs.
//                      Then dA = mm(D, B) and dB = mm(D^T, A) read D (no second masking pass).
//
// Traffic (s = bytes per element; products not counted, they are the same BLAS calls as torch's):
//   ours,  forward:  GEMM writes C; epilogue reads+writes C in place              -> 2*M*N*s
//          backward: read G, C, write D                                          -> 3*M*N*s
//   torch, forward:  addmm first copies b into C (M*N*s), GEMM reads+writes it; relu reads C and
//                    writes a new tensor                                         -> 3*M*N*s
//          backward: threshold_backward reads G, C, writes D; db = D.sum(0) reads D -> 4*M*N*s
//   so 5*M*N*s instead of 7*M*N*s of elementwise traffic, and one M x N allocation less per pass.
//
// Numerics. Products accumulate as the BLAS does in the input dtype. db is summed in two levels
// (blocks of kRowBlock rows in SIMD lanes, then across blocks) so its error grows with
// kRowBlock + M / kRowBlock instead of M. ReLU keeps NaN (max(NaN, 0) is NaN, as torch.relu); the
// mask [C > 0] is false for NaN and for exact zeros, as torch's threshold_backward.
//
// Preconditions (check_linear_relu_args): x (*, K), weight (N, K), bias (N,), one floating dtype,
// all on the CPU; grad_out and out of shape (*, N). Any strides: x is flattened with reshape (a
// copy only when its layout demands one), weight goes to the BLAS as a strided view.
//
// References. torch.nn.functional.linear / relu and their derivatives (tools/autograd/derivatives.yaml);
// the cuBLASLt RELU_AUX_BIAS / DRELU_BGRAD epilogues (the same forward/backward split);
// csrc/cpu/cross_entropy.cpp for the at::vec / at::parallel_for pattern.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "fastops.h"

namespace fastops {
namespace {

using at::vec::Vectorized;

// Columns per backward tile: 1 KiB of float32 per row of G, C and D, so a thread's three row
// slices stay in L1 while its kTile / VecSize accumulators live in registers and L1.
constexpr int64_t kTile = 256;
// Rows summed in SIMD lanes before folding into the outer db accumulator.
constexpr int64_t kRowBlock = 64;

template <typename T>
void bias_relu_rows(T* c, const T* b, int64_t M, int64_t N) {
  using V = Vectorized<T>;
  const V zero(T(0));
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(N, 1));
  at::parallel_for(0, M, grain, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      T* row = c + m * N;
      int64_t n = 0;
      for (; n + V::size() <= N; n += V::size()) {
        V v = V::loadu(row + n);
        if (b) v = v + V::loadu(b + n);
        at::vec::maximum(v, zero).store(row + n);
      }
      if (n < N) {
        const int64_t r = N - n;
        V v = V::loadu(row + n, r);
        if (b) v = v + V::loadu(b + n, r);
        at::vec::maximum(v, zero).store(row + n, r);
      }
    }
  });
}

// D = G (.) [C > 0] and db = column sums of D, in one sweep over G and C.
template <typename T>
void mask_grad_and_bias_grad(const T* g, const T* c, T* d, T* db, int64_t M, int64_t N) {
  using V = Vectorized<T>;
  constexpr int64_t kVecs = kTile / V::size();
  static_assert(kTile % V::size() == 0, "kTile must be a multiple of the SIMD width");
  const int64_t tiles = (N + kTile - 1) / kTile;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kTile, width = std::min(kTile, N - n0);
      const int64_t full = width / V::size(), rem = width % V::size();
      const int64_t nv = full + (rem ? 1 : 0);
      std::array<V, kVecs> outer, inner;
      outer.fill(V(T(0)));
      const V zero(T(0));
      for (int64_t mb = 0; mb < M; mb += kRowBlock) {
        inner.fill(V(T(0)));
        const int64_t me = std::min(M, mb + kRowBlock);
        for (int64_t m = mb; m < me; ++m) {
          const int64_t base = m * N + n0;
          for (int64_t j = 0; j < full; ++j) {
            const int64_t o = base + j * V::size();
            // The comparison's lanes are all-ones or all-zeros: the AND keeps G where C > 0 and
            // gives +0 elsewhere (also where G is NaN or inf, as threshold_backward).
            const V v = V::loadu(g + o) & (V::loadu(c + o) > zero);
            v.store(d + o);
            inner[j] = inner[j] + v;
          }
          if (rem) {
            const int64_t o = base + full * V::size();
            const V v = V::loadu(g + o, rem) & (V::loadu(c + o, rem) > zero);
            v.store(d + o, rem);
            inner[full] = inner[full] + v;
          }
        }
        for (int64_t j = 0; j < nv; ++j) outer[j] = outer[j] + inner[j];
      }
      for (int64_t j = 0; j < full; ++j) outer[j].store(db + n0 + j * V::size());
      if (rem) outer[full].store(db + n0 + full * V::size(), rem);
    }
  });
}

at::Tensor linear_relu_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const auto g = check_linear_relu_args("linear_relu_fwd", x, weight, bias);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "linear_relu_fwd: the CPU kernels take float32 or float64 x, got ", x.scalar_type());
  const at::Tensor a = x.reshape({g.M, g.K});
  at::Tensor c = new_output({g.M, g.N}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::mm_out(c, a, weight.t());
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_relu_fwd_cpu", [&] {
    bias_relu_rows<scalar_t>(c.data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, g.M,
                             g.N);
  });
  return c.view(g.out_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_relu_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const at::Tensor& weight, const at::Tensor& out) {
  const auto g = check_linear_relu_args("linear_relu_bwd", x, weight, std::nullopt);
  check_linear_relu_bwd_args("linear_relu_bwd", g, x, grad_out, out);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "linear_relu_bwd: the CPU kernels take float32 or float64 x, got ", x.scalar_type());
  const at::Tensor go = grad_out.contiguous(), c = out.contiguous();
  const at::Tensor a = x.reshape({g.M, g.K});
  at::Tensor d = at::empty({g.M, g.N}, x.options().memory_format(at::MemoryFormat::Contiguous));
  advise_huge_pages(d);
  at::Tensor db = new_output({g.N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_relu_bwd_cpu", [&] {
    mask_grad_and_bias_grad<scalar_t>(go.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                                      d.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), g.M, g.N);
  });
  at::Tensor dx = new_output({g.M, g.K}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor dw = new_output({g.N, g.K}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::mm_out(dx, d, weight);
  at::mm_out(dw, d.t(), a);
  return {dx.view(x.sizes()), dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("linear_relu_fwd", &linear_relu_fwd_cpu);
  m.impl("linear_relu_bwd", &linear_relu_bwd_cpu);
}

}  // namespace fastops
