// Fused linear + ReLU, C++ kernels for CPU tensors (float32, float64).
//
// Math. x seen as A (M, K) (M = product of x's leading dims), weight B (N, K), bias b (N,).
//   forward:  C = relu(A B^T + b),  C (M, N)
//   backward: with G = dL/dC and the mask D = G (.) [not C <= 0]   (C > 0 <=> pre-activation > 0;
//             a NaN output passes its gradient, as torch's threshold_backward)
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
//                      columns into db. Each thread takes one contiguous band of rows (streaming
//                      access; column tiles walked at a 4 KiB row stride measured 5x slower) and
//                      sums its rows into its own N-wide partial db, held in L1; the per-thread
//                      partials are added in a fixed order at the end (no atomics).
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
// Numerics. Products accumulate as the BLAS does in the input dtype. db is summed in three levels
// (blocks of kRowBlock rows, then across blocks within a thread's band, then across bands) so its
// error grows with about kRowBlock + M / kRowBlock instead of M. ReLU keeps NaN (max(NaN, 0) is NaN, as
// torch.relu). The mask is torch's threshold_backward, G where not (C <= 0): 0 at exact zeros and
// below, G where C is NaN (a NaN output passes its gradient on, it is not a clipped unit).
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
#include <vector>

#include "fastops.h"

namespace fastops {
namespace {

using at::vec::Vectorized;

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

// D = G (.) [not C <= 0] and db = column sums of D, in one sweep over G and C.
template <typename T>
void mask_grad_and_bias_grad(const T* g, const T* c, T* d, T* db, int64_t M, int64_t N) {
  using V = Vectorized<T>;
  // One contiguous band of rows per thread (streaming reads the prefetchers follow), each with its
  // own N-wide partial db; the few partials are added at the end in a fixed order.
  const int64_t bands = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), M / kRowBlock));
  std::vector<T> partial(static_cast<size_t>(bands * N), T(0));
  const V zero(T(0));
  at::parallel_for(0, bands, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> inner(static_cast<size_t>(N));
    for (int64_t band = b0; band < b1; ++band) {
      const int64_t m_begin = M * band / bands, m_end = M * (band + 1) / bands;
      T* outer = partial.data() + band * N;
      for (int64_t mb = m_begin; mb < m_end; mb += kRowBlock) {
        std::fill(inner.begin(), inner.end(), T(0));
        const int64_t me = std::min(m_end, mb + kRowBlock);
        for (int64_t m = mb; m < me; ++m) {
          const T* gr = g + m * N;
          const T* cr = c + m * N;
          T* dr = d + m * N;
          int64_t n = 0;
          for (; n + V::size() <= N; n += V::size()) {
            // +0 where C <= 0 (also where G is NaN or inf there), G elsewhere, NaN C included: the
            // blend selects on the comparison's all-ones lanes, as threshold_backward's select.
            const V v = V::blendv(V::loadu(gr + n), zero, V::loadu(cr + n) <= zero);
            v.store(dr + n);
            (V::loadu(inner.data() + n) + v).store(inner.data() + n);
          }
          if (n < N) {
            const int64_t r = N - n;
            const V v = V::blendv(V::loadu(gr + n, r), zero, V::loadu(cr + n, r) <= zero);
            v.store(dr + n, r);
            (V::loadu(inner.data() + n, r) + v).store(inner.data() + n, r);
          }
        }
        at::vec::map2<T>([](V a, V b) { return a + b; }, outer, outer, inner.data(), N);
      }
    }
  });
  std::copy(partial.begin(), partial.begin() + N, db);
  for (int64_t band = 1; band < bands; ++band) {
    at::vec::map2<T>([](V a, V b) { return a + b; }, db, db, partial.data() + band * N, N);
  }
}

at::Tensor linear_relu_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const BelowAutograd below_autograd;
  const auto g = check_linear_relu_args("linear_relu_fwd", x, weight, bias);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "linear_relu_fwd: the CPU kernels take float32 or float64 x, got ", x.scalar_type());
  const at::Tensor a = x.reshape({g.M, g.K});
  // Allocated in the output's own shape and written through a 2-D view, so the op returns a fresh
  // tensor, not a view (FSDP2 and autograd treat a returned view as aliasing an input).
  at::Tensor out = new_output(g.out_shape, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor c = out.view({g.M, g.N});
  at::mm_out(c, a, weight.t());
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_relu_fwd_cpu", [&] {
    bias_relu_rows<scalar_t>(c.data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, g.M,
                             g.N);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_relu_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const at::Tensor& weight, const at::Tensor& out) {
  const BelowAutograd below_autograd;
  const auto g = check_linear_relu_args("linear_relu_bwd", x, weight, std::nullopt);
  check_linear_relu_bwd_args("linear_relu_bwd", g, x, grad_out, out);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "linear_relu_bwd: the CPU kernels take float32 or float64 x, got ", x.scalar_type());
  const at::Tensor go = grad_out.contiguous(), c = out.contiguous();
  const at::Tensor a = x.reshape({g.M, g.K});
  at::Tensor d = at::empty({g.M, g.N}, x.options().memory_format(at::MemoryFormat::Contiguous));
  // No huge-page advice for D: it is a temporary freed when the op returns, so the next call gets
  // it back from the allocator already faulted in; the madvise would only add a syscall.
  at::Tensor db = new_output({g.N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_relu_bwd_cpu", [&] {
    mask_grad_and_bias_grad<scalar_t>(go.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                                      d.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), g.M, g.N);
  });
  at::Tensor dx = new_output(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor dw = new_output({g.N, g.K}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor dx2 = dx.view({g.M, g.K});
  at::mm_out(dx2, d, weight);
  at::mm_out(dw, d.t(), a);
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("linear_relu_fwd", &linear_relu_fwd_cpu);
  m.impl("linear_relu_bwd", &linear_relu_bwd_cpu);
}

}  // namespace fastops
