// Adam / AdamW step, CUDA multi-tensor kernel (float32, float64, float16, bfloat16).
//
// Math (as csrc/cpu/adam.cpp; torch.optim.Adam's _single_tensor_adam), t = step count after this step:
//   g = grad / grad_scale; g = -g (maximize); p *= 1 - lr*wd (AdamW) | g += wd*p (Adam L2)
//   m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2; vm = max(vm, v) (amsgrad; replaces v)
//   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// The step counts, lr (tensor form), grad_scale and found_inf are read on the device by every block
// (a few cached loads and two double-precision pow per block): no host synchronisation anywhere.
//
// Grid. A table passed by value as the kernel argument (< 4 KB: pointers, sizes, step pointers of
// up to kMaxTensors tensors, and for each of up to kMaxBlocks blocks its tensor slot and chunk
// index) describes one launch; every tensor is cut into chunks of kChunk elements and each block
// updates one chunk. The host fills tables and launches when one is full, so a 161-tensor ResNet-50
// list is 4-5 launches instead of 161, and a 100M-element tensor is ~1500 blocks over a few launches.
// A tensor whose chunks do not fit in the current table continues in slot 0 of the next one.
//
// Tiling. A block of 512 threads sweeps its chunk with a grid-stride loop; each thread handles
// kVec = 4 consecutive elements per iteration: one 16-byte load/store per array in float32 (8 bytes
// in fp16/bf16) when all of the tensor's arrays are aligned to 4 elements (chunk starts are multiples
// of kChunk, so that is decided by the base pointers), else scalar accesses. Nothing is reused, so
// nothing goes to shared memory; values live in registers for one update.
//
// Traffic per parameter and step (s = bytes per element): read p, g, m, v, write p, m, v: 7s (28
// bytes in float32); 9s with amsgrad. Unfused torch (foreach=False) makes ~9 elementwise passes,
// about 24s; torch's foreach path fuses launches, not passes. The benchmark's GB/s uses 7s (9s).
//
// Numerics. Math in float32 for fp16/bf16/fp32 and float64 for fp64 (at::opmath_type), one rounding
// per stored value; the per-tensor scalars in double, then rounded to the math type, as torch's host
// arithmetic. NaN/inf in grads propagate as in torch. found_inf != 0: every block returns before
// touching memory, and the steps are advanced by 1 - found_inf (an on-device foreach add).
//
// Preconditions (check_adam_args): per parameter, grad/m/v/vm of p's shape, dtype and device; one
// device and one dtype per call; one-element float32 steps on that device. Indexing is int64
// (numel and offsets); chunk indices are int (2^31 chunks of 64k elements). Tensors that are not all
// non-overlapping-and-dense with identical strides go through contiguous copies, copied back.
//
// References. Kingma & Ba, "Adam" (arXiv:1412.6980); Loshchilov & Hutter, AdamW
// (arXiv:1711.05101); the multi-tensor-apply idea of NVIDIA Apex and ATen's
// MultiTensorApply.cuh, and llm.c dev/cuda/adamw.cu (read for the design, not copied).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "fastops.h"

namespace fastops {
namespace {

constexpr int kMaxTensors = 36;
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 65536;
constexpr int kThreads = 512;
constexpr int kVec = 4;

struct AdamTable {
  void* p[kMaxTensors];
  const void* g[kMaxTensors];
  void* m[kMaxTensors];
  void* v[kMaxTensors];
  void* vm[kMaxTensors];
  const float* step[kMaxTensors];
  int64_t numel[kMaxTensors];
  unsigned char block_tensor[kMaxBlocks];
  int block_chunk[kMaxBlocks];
};
static_assert(sizeof(AdamTable) <= 4096, "the table is a kernel argument: keep it within 4 KB");

struct AdamHyper {
  double lr, beta1, beta2, weight_decay, eps;
  const double* lr_tensor;    // nullptr: use lr
  const double* grad_scale;   // nullptr: no unscaling
  const float* found_inf;     // nullptr: never skip
  bool amsgrad, maximize, decoupled;
};

template <typename T>
struct Scalars {
  T inv_scale, decay, wd, w, one_minus_w, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step_size;
  bool scale, l2, decoupled, lerp_low;
};

template <typename T>
__device__ __forceinline__ void adam_math(const Scalars<T>& s, bool maximize, T& p, T g, T& m, T& v, T* vm) {
  if (s.scale) g = g * s.inv_scale;
  if (maximize) g = -g;
  if (s.decoupled) p = p * s.decay;
  if (s.l2) g = g + s.wd * p;
  m = s.lerp_low ? m + s.w * (g - m) : g - (g - m) * s.one_minus_w;
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  T vv = v;
  if (vm != nullptr) {
    *vm = (*vm != *vm || v != v) ? *vm + v : (*vm > v ? *vm : v);  // NaN-propagating max
    vv = *vm;
  }
  const T denom = sqrt(vv) / s.bc2_sqrt + s.eps;
  p = p + s.neg_step_size * m / denom;
}

template <typename scalar_t>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t x[kVec];
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) adam_multi_tensor_kernel(const __grid_constant__ AdamTable tab,
                                                                     const AdamHyper h) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (h.found_inf != nullptr && *h.found_inf != 0.f) return;
  const int ti = tab.block_tensor[blockIdx.x];
  const int64_t n = tab.numel[ti];
  const int64_t begin = static_cast<int64_t>(tab.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = n < begin + kChunk ? n : begin + kChunk;

  const double lr = h.lr_tensor != nullptr ? *h.lr_tensor : h.lr;
  const double t = static_cast<double>(*tab.step[ti]) + 1.0;
  Scalars<opmath_t> s;
  s.scale = h.grad_scale != nullptr;
  s.inv_scale = static_cast<opmath_t>(s.scale ? 1.0 / *h.grad_scale : 1.0);
  s.decoupled = h.decoupled && h.weight_decay != 0.0;
  s.l2 = !h.decoupled && h.weight_decay != 0.0;
  s.decay = static_cast<opmath_t>(1.0 - lr * h.weight_decay);
  s.wd = static_cast<opmath_t>(h.weight_decay);
  s.lerp_low = (1.0 - h.beta1) < 0.5;
  s.w = static_cast<opmath_t>(1.0 - h.beta1);
  s.one_minus_w = opmath_t(1) - s.w;
  s.beta2 = static_cast<opmath_t>(h.beta2);
  s.one_minus_beta2 = static_cast<opmath_t>(1.0 - h.beta2);
  s.bc2_sqrt = static_cast<opmath_t>(::sqrt(1.0 - ::pow(h.beta2, t)));
  s.eps = static_cast<opmath_t>(h.eps);
  s.neg_step_size = static_cast<opmath_t>(-lr / (1.0 - ::pow(h.beta1, t)));

  auto* p = static_cast<scalar_t*>(tab.p[ti]);
  const auto* g = static_cast<const scalar_t*>(tab.g[ti]);
  auto* m = static_cast<scalar_t*>(tab.m[ti]);
  auto* v = static_cast<scalar_t*>(tab.v[ti]);
  auto* vm = static_cast<scalar_t*>(tab.vm[ti]);

  constexpr uintptr_t kAlign = sizeof(scalar_t) * kVec;
  const bool aligned = (reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g) |
                        reinterpret_cast<uintptr_t>(m) | reinterpret_cast<uintptr_t>(v) |
                        (h.amsgrad ? reinterpret_cast<uintptr_t>(vm) : 0)) % kAlign == 0;
  int64_t i0 = begin;
  if (aligned) {
    const int64_t vec_end = begin + ((end - begin) / kVec) * kVec;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < vec_end;
         i += static_cast<int64_t>(blockDim.x) * kVec) {
      Pack<scalar_t> P = *reinterpret_cast<const Pack<scalar_t>*>(p + i);
      const Pack<scalar_t> G = *reinterpret_cast<const Pack<scalar_t>*>(g + i);
      Pack<scalar_t> M = *reinterpret_cast<const Pack<scalar_t>*>(m + i);
      Pack<scalar_t> V = *reinterpret_cast<const Pack<scalar_t>*>(v + i);
      Pack<scalar_t> VM;
      if (h.amsgrad) VM = *reinterpret_cast<const Pack<scalar_t>*>(vm + i);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        opmath_t pp = P.x[k], mm = M.x[k], vv = V.x[k], qq = h.amsgrad ? opmath_t(VM.x[k]) : opmath_t(0);
        adam_math<opmath_t>(s, h.maximize, pp, opmath_t(G.x[k]), mm, vv, h.amsgrad ? &qq : nullptr);
        P.x[k] = static_cast<scalar_t>(pp);
        M.x[k] = static_cast<scalar_t>(mm);
        V.x[k] = static_cast<scalar_t>(vv);
        if (h.amsgrad) VM.x[k] = static_cast<scalar_t>(qq);
      }
      *reinterpret_cast<Pack<scalar_t>*>(p + i) = P;
      *reinterpret_cast<Pack<scalar_t>*>(m + i) = M;
      *reinterpret_cast<Pack<scalar_t>*>(v + i) = V;
      if (h.amsgrad) *reinterpret_cast<Pack<scalar_t>*>(vm + i) = VM;
    }
    i0 = vec_end;
  }
  for (int64_t i = i0 + threadIdx.x; i < end; i += blockDim.x) {
    opmath_t pp = p[i], mm = m[i], vv = v[i], qq = h.amsgrad ? opmath_t(vm[i]) : opmath_t(0);
    adam_math<opmath_t>(s, h.maximize, pp, opmath_t(g[i]), mm, vv, h.amsgrad ? &qq : nullptr);
    p[i] = static_cast<scalar_t>(pp);
    m[i] = static_cast<scalar_t>(mm);
    v[i] = static_cast<scalar_t>(vv);
    if (h.amsgrad) vm[i] = static_cast<scalar_t>(qq);
  }
}

bool same_dense_layout(const at::Tensor& p, std::initializer_list<const at::Tensor*> others) {
  if (!p.is_non_overlapping_and_dense()) return false;
  for (const at::Tensor* t : others)
    if (t != nullptr && (!t->is_non_overlapping_and_dense() || t->strides() != p.strides())) return false;
  return true;
}

void adam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                    double lr, const std::optional<at::Tensor>& lr_tensor, double beta1, double beta2,
                    double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled_weight_decay,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const BelowAutograd below_autograd;
  check_adam_args("adam_step_", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, lr_tensor,
                  beta1, beta2, weight_decay, eps, amsgrad, grad_scale, found_inf);
  const int64_t n = static_cast<int64_t>(params.size());
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  // One-element scalars in the types the kernel reads (device-side conversions, no sync).
  const at::Tensor lr_d = lr_tensor.has_value() ? lr_tensor->reshape({}).to(at::kDouble).contiguous() : at::Tensor();
  const at::Tensor scale_d =
      grad_scale.has_value() ? grad_scale->reshape({}).to(at::kDouble).contiguous() : at::Tensor();
  const at::Tensor found_d = found_inf.has_value() ? found_inf->reshape({}).to(at::kFloat).contiguous() : at::Tensor();
  AdamHyper h{lr,
              beta1,
              beta2,
              weight_decay,
              eps,
              lr_d.defined() ? lr_d.data_ptr<double>() : nullptr,
              scale_d.defined() ? scale_d.data_ptr<double>() : nullptr,
              found_d.defined() ? found_d.data_ptr<float>() : nullptr,
              amsgrad,
              maximize,
              decoupled_weight_decay};

  std::vector<at::Tensor> P(n), G(n), M(n), V(n), VM(n);
  std::vector<bool> copied(n, false);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor* vm = amsgrad ? &max_exp_avg_sqs[i] : nullptr;
    copied[i] = !same_dense_layout(params[i], {&grads[i], &exp_avgs[i], &exp_avg_sqs[i], vm});
    auto take = [&](const at::Tensor& t) { return copied[i] ? t.contiguous() : t; };
    P[i] = take(params[i]), G[i] = take(grads[i]), M[i] = take(exp_avgs[i]), V[i] = take(exp_avg_sqs[i]);
    VM[i] = amsgrad ? take(*vm) : M[i];  // never touched without amsgrad
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "adam_step_cuda", [&] {
    AdamTable tab;
    int nt = 0, nb = 0;
    auto launch = [&] {
      adam_multi_tensor_kernel<scalar_t><<<nb, kThreads, 0, stream>>>(tab, h);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      nb = 0;
    };
    for (int64_t i = 0; i < n; ++i) {
      const int64_t numel = P[i].numel();
      if (numel == 0) continue;
      tab.p[nt] = P[i].data_ptr();
      tab.g[nt] = G[i].const_data_ptr();
      tab.m[nt] = M[i].data_ptr();
      tab.v[nt] = V[i].data_ptr();
      tab.vm[nt] = VM[i].data_ptr();
      tab.step[nt] = state_steps[i].const_data_ptr<float>();
      tab.numel[nt] = numel;
      const int64_t chunks = (numel + kChunk - 1) / kChunk;
      for (int64_t c = 0; c < chunks; ++c) {
        tab.block_tensor[nb] = static_cast<unsigned char>(nt);
        tab.block_chunk[nb] = static_cast<int>(c);
        ++nb;
        const bool last = c == chunks - 1;
        if (nb == kMaxBlocks || (last && nt + 1 == kMaxTensors)) {
          launch();
          if (last) {
            nt = -1;  // the next tensor starts a fresh table at slot 0
          } else {    // the rest of this tensor's chunks continue in slot 0
            tab.p[0] = tab.p[nt], tab.g[0] = tab.g[nt], tab.m[0] = tab.m[nt], tab.v[0] = tab.v[nt];
            tab.vm[0] = tab.vm[nt], tab.step[0] = tab.step[nt], tab.numel[0] = tab.numel[nt];
            nt = 0;
          }
        }
      }
      ++nt;
    }
    if (nb > 0) launch();
  });

  for (int64_t i = 0; i < n; ++i) {
    if (!copied[i]) continue;
    params[i].copy_(P[i]);
    exp_avgs[i].copy_(M[i]);
    exp_avg_sqs[i].copy_(V[i]);
    if (amsgrad) max_exp_avg_sqs[i].copy_(VM[i]);
  }
  // Steps advance after the kernels read them (each block reads its tensor's old count), by
  // 1 - found_inf so that an overflow step leaves them as they were; on-device, no sync.
  std::vector<at::Tensor> steps(state_steps.begin(), state_steps.end());
  if (found_d.defined()) {
    at::_foreach_add_(steps, 1.0 - found_d);
  } else {
    at::_foreach_add_(steps, 1.0);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) { m.impl("adam_step_", &adam_step_cuda); }

}  // namespace fastops
