// Fused linear + ReLU, C++ kernels for CPU tensors (float16, bfloat16, float32, float64).
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
//                      Then dA = mm(D, B) and dB = mm(D^T, A) read D (no second masking pass),
//                      each only where output_mask wants it: a first layer's x and a frozen weight
//                      have no gradient, and torch's linear backward skips those products too
//                      (without the mask a first layer's backward ran 3 products against torch's 2).
//   bfloat16:          the products are ATen's bfloat16 mm (oneDNN: AVX512-BF16 dot products where
//                      the CPU has them, float32 accumulation); forward is addmm with the bias (so
//                      the bias is added to the float32 accumulator) and then an in-place ReLU pass;
//                      the ReLU and backward's mask work on the 16-bit patterns (x <= 0: +0, or
//                      sign set and not NaN), exact, with no float32 round trip; db widens D by a
//                      shift.
//   float16:           the operands are widened to float32 and the products run in float32 BLAS
//                      (ATen's float16 mm is a scalar loop on CPUs without AVX512-FP16 / AMX-FP16);
//                      the epilogue reads the float32 product and writes float16, and backward writes
//                      D in float32 for the two products.
//
// Traffic (s = bytes per element; products not counted, they are the same BLAS calls as torch's):
//   ours,  forward:  GEMM writes C; epilogue reads+writes C in place              -> 2*M*N*s
//          backward: read G, C, write D                                          -> 3*M*N*s
//   torch, forward:  addmm first copies b into C (M*N*s), GEMM reads+writes it; relu reads C and
//                    writes a new tensor                                         -> 3*M*N*s
//          backward: threshold_backward reads G, C, writes D; db = D.sum(0) reads D -> 4*M*N*s
//   so 5*M*N*s instead of 7*M*N*s of elementwise traffic, and one M x N allocation less per pass.
//   bfloat16 forward is torch's addmm (bias copied into C, GEMM read+write) plus the ReLU in place:
//   the same traffic as torch's minus the new ReLU output tensor. float16 adds the widening copies
//   of A and B and a float32 C (4*M*N bytes written and read) against torch's scalar-loop GEMM.
//
// Numerics. Products accumulate as the BLAS does in the input dtype (float32 for bfloat16 through
// oneDNN, which rounds each output once; float32 for float16, rounded once when stored). bfloat16
// forward: round(acc + b) then ReLU, exactly torch's F.relu(F.linear(...)) (addmm rounds once and
// ReLU commutes with rounding). float16 forward: max(acc + b, 0) in float32, rounded once. D is
// exact in every dtype (G's elements or zero). db is summed in three levels
// (blocks of kRowBlock rows, then across blocks within a thread's band, then across bands) so its
// error grows with about kRowBlock + M / kRowBlock instead of M, in float32 for float16 /
// bfloat16 (rounded once). ReLU keeps NaN (max(NaN, 0) is NaN, as
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
#include <array>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/reduced_float.h"
#include "fastops.h"

namespace fastops {
namespace {

using at::vec::Vectorized;
using cpu::compute_t;
using cpu::convert_n;
using cpu::load_wide;
using cpu::store_narrow;

// Rows summed in SIMD lanes before folding into the outer db accumulator.
constexpr int64_t kRowBlock = 64;

// out[m, :] = max(in[m, :] + b, 0) for the M rows of N, in compute_t<S> and rounded to S once.
// in may be out itself (the in-place float32 / float64 epilogue, and bfloat16's ReLU-only pass).
template <typename In, typename S>
void bias_relu_rows(const In* in, const compute_t<S>* b, S* out, int64_t M, int64_t N) {
  using V = Vectorized<compute_t<S>>;
  const V zero(0);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(N, 1));
  at::parallel_for(0, M, grain, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const In* src = in + m * N;
      S* dst = out + m * N;
      int64_t n = 0;
      for (; n + V::size() <= N; n += V::size()) {
        V v = load_wide(src + n);
        if (b) v = v + V::loadu(b + n);
        store_narrow(at::vec::maximum(v, zero), dst + n);
      }
      if (n < N) {
        const int64_t r = N - n;
        V v = load_wide(src + n, r);
        if (b) v = v + V::loadu(b + n, r);
        store_narrow(at::vec::maximum(v, zero), dst + n, r);
      }
    }
  });
}

// bfloat16 C <= 0 on the bits: +0, or the sign set and not NaN (-0, negatives, -inf). NaN is not <= 0.
inline bool bf16_at_most_zero(uint16_t c) { return c == 0 || ((c & 0x8000) && (c & 0x7fff) <= 0x7f80); }

// ReLU in place on bfloat16 bits: every x <= 0 becomes +0, NaN and x > 0 stay (max(x, 0) keeping NaN,
// as torch.relu). Exact, and a 16-bit loop gcc vectorises: widening to float32 and rounding back
// cost a tenth of the GEMM (2048x1024x1024 here).
void relu_bf16_inplace(c10::BFloat16* c, int64_t n) {
  at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) c[i].x = bf16_at_most_zero(c[i].x) ? uint16_t(0) : c[i].x;
  });
}

// One row of the bfloat16 backward sweep on the bits: d = c <= 0 ? +0 : g (exact: no rounding), and
// inner += d widened to float32 (a bfloat16 is the high half of its float32).
inline void mask_row_bf16(const c10::BFloat16* g, const c10::BFloat16* c, c10::BFloat16* d, float* inner,
                          int64_t N) {
  for (int64_t n = 0; n < N; ++n) {
    const uint16_t dv = bf16_at_most_zero(c[n].x) ? uint16_t(0) : g[n].x;
    d[n].x = dv;
    inner[n] += std::bit_cast<float>(uint32_t(dv) << 16);
  }
}

// D = G (.) [not C <= 0] and db = column sums of D, in one sweep over G and C. D is written as Dt
// (S itself, or float32 for float16, whose products run in float32); db sums in compute_t<S> and
// is rounded to S once.
template <typename S, typename Dt>
void mask_grad_and_bias_grad(const S* g, const S* c, Dt* d, S* db, int64_t M, int64_t N) {
  using T = compute_t<S>;
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
          const S* gr = g + m * N;
          const S* cr = c + m * N;
          Dt* dr = d + m * N;
          if constexpr (std::is_same_v<S, c10::BFloat16> && std::is_same_v<Dt, c10::BFloat16>) {
            mask_row_bf16(gr, cr, dr, inner.data(), N);
            continue;
          }
          int64_t n = 0;
          for (; n + V::size() <= N; n += V::size()) {
            // +0 where C <= 0 (also where G is NaN or inf there), G elsewhere, NaN C included: the
            // blend selects on the comparison's all-ones lanes, as threshold_backward's select.
            // Exact in any dtype: D's elements are G's or zero.
            const V v = V::blendv(load_wide(gr + n), zero, load_wide(cr + n) <= zero);
            store_narrow(v, dr + n);
            (V::loadu(inner.data() + n) + v).store(inner.data() + n);
          }
          if (n < N) {
            const int64_t r = N - n;
            const V v = V::blendv(load_wide(gr + n, r), zero, load_wide(cr + n, r) <= zero);
            store_narrow(v, dr + n, r);
            (V::loadu(inner.data() + n, r) + v).store(inner.data() + n, r);
          }
        }
        at::vec::map2<T>([](V a, V b) { return a + b; }, outer, outer, inner.data(), N);
      }
    }
  });
  for (int64_t band = 1; band < bands; ++band) {
    at::vec::map2<T>([](V a, V b) { return a + b; }, partial.data(), partial.data(), partial.data() + band * N, N);
  }
  convert_n(partial.data(), db, N);
}

void check_cpu_dtype(const char* op, const at::Tensor& x) {
  const auto dt = x.scalar_type();
  FASTOPS_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
                     ": the CPU kernels take float16, bfloat16, float32 or float64 x, got ", dt);
}

// The products' operand dtype: float32 for float16 (ATen's CPU float16 GEMM is a scalar loop on
// CPUs without AVX512-FP16 / AMX-FP16), the input's own dtype otherwise (bfloat16 runs oneDNN's
// bfloat16 GEMM, float32 accumulation).
at::ScalarType gemm_dtype(at::ScalarType dt) { return dt == at::kHalf ? at::kFloat : dt; }

at::Tensor linear_relu_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const BelowAutograd below_autograd;
  const auto g = check_linear_relu_args("linear_relu_fwd", x, weight, bias);
  check_cpu_dtype("linear_relu_fwd", x);
  const auto dt = x.scalar_type(), gdt = gemm_dtype(dt);
  const at::Tensor a = x.reshape({g.M, g.K}).to(gdt);
  const at::Tensor w = weight.to(gdt);
  const auto contiguous = x.options().memory_format(at::MemoryFormat::Contiguous);
  // Allocated in the output's own shape and written through a 2-D view, so the op returns a fresh
  // tensor, not a view (FSDP2 and autograd treat a returned view as aliasing an input).
  at::Tensor out = new_output(g.out_shape, contiguous);
  at::Tensor c = out.view({g.M, g.N});
  if (dt == at::kBFloat16) {
    // Bias inside the GEMM: addmm copies it into C and the GEMM adds the float32 accumulator to it
    // (beta = 1) before the one rounding, as torch's own addmm; ReLU after that rounding equals
    // ReLU before it (rounding is monotonic and keeps the sign), so the result is the epilogue on
    // the float32 accumulator.
    if (bias.has_value()) {
      at::addmm_out(c, *bias, a, w.t());
    } else {
      at::mm_out(c, a, w.t());
    }
    relu_bf16_inplace(c.data_ptr<c10::BFloat16>(), c.numel());
    return out;
  }
  // float32 / float64: the GEMM writes C and the epilogue runs in place. float16: the GEMM runs in
  // float32 into a scratch C and the epilogue rounds once into the float16 output.
  at::Tensor acc = gdt == dt ? c : at::empty({g.M, g.N}, contiguous.dtype(gdt));
  at::mm_out(acc, a, w.t());
  const at::Tensor b = bias.has_value() ? bias->contiguous().to(gdt) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, dt, "linear_relu_fwd_cpu", [&] {
    using T = compute_t<scalar_t>;
    bias_relu_rows<T, scalar_t>(acc.const_data_ptr<T>(), b.defined() ? b.const_data_ptr<T>() : nullptr,
                                c.data_ptr<scalar_t>(), g.M, g.N);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_relu_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const at::Tensor& weight, const at::Tensor& out,
                                                                   std::array<bool, 3> mask) {
  const BelowAutograd below_autograd;
  const auto g = check_linear_relu_args("linear_relu_bwd", x, weight, std::nullopt);
  check_linear_relu_bwd_args("linear_relu_bwd", g, x, grad_out, out);
  check_cpu_dtype("linear_relu_bwd", x);
  const auto dt = x.scalar_type(), gdt = gemm_dtype(dt);
  const auto contiguous = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dx_out = x.new_empty({0}), dw = x.new_empty({0}), db = x.new_empty({0});
  if (!mask[0] && !mask[1] && !mask[2]) return {dx_out, dw, db};
  const at::Tensor go = grad_out.contiguous(), c = out.contiguous();
  at::Tensor d = at::empty({g.M, g.N}, contiguous.dtype(gdt));
  // D is a temporary as large as the output. Below glibc's largest mmap threshold (32 MiB) a freed
  // D comes back from the allocator already faulted in; above it every call maps it afresh, a page
  // fault per 4 KiB: 21 ms for a 50 MB D (4096 x 3072) against 2.4 ms to write it when reused
  // (2-core AMD EPYC). Huge pages cut that to 5.7 ms; the advice costs a syscall below it.
  advise_huge_pages(d);
  // db is a by-product of the masking sweep: summed even when masked off (into a scratch N-vector).
  db = mask[2] ? new_output({g.N}, x.options()) : at::empty({g.N}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "linear_relu_bwd_cpu", [&] {
    using Dt = std::conditional_t<std::is_same_v<scalar_t, c10::Half>, float, scalar_t>;
    mask_grad_and_bias_grad<scalar_t, Dt>(go.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                                          d.data_ptr<Dt>(), db.data_ptr<scalar_t>(), g.M, g.N);
  });
  if (!mask[2]) db = x.new_empty({0});
  // Each product only when its gradient is wanted: a first layer's x (the data) and a frozen weight
  // have none, and torch's linear backward skips those products as well.
  if (mask[0]) {
    dx_out = new_output(x.sizes(), contiguous);  // not a view of a 2-D result (see forward)
    at::Tensor dx = dx_out.view({g.M, g.K});
    if (gdt == dt) {
      at::mm_out(dx, d, weight);
    } else {  // float16: a float32 product, rounded once
      dx.copy_(at::mm(d, weight.to(gdt)));
    }
  }
  if (mask[1]) {
    const at::Tensor a = x.reshape({g.M, g.K}).to(gdt);
    dw = new_output({g.N, g.K}, contiguous);
    if (gdt == dt) {
      at::mm_out(dw, d.t(), a);
    } else {
      dw.copy_(at::mm(d.t(), a));
    }
  }
  return {dx_out, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("linear_relu_fwd", &linear_relu_fwd_cpu);
  m.impl("linear_relu_bwd", &linear_relu_bwd_cpu);
}

}  // namespace fastops
