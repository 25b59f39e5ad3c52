// Adam / AdamW step, C++ kernel for CPU tensors (float32, float64, float16, bfloat16).
//
// Math (torch.optim.Adam/AdamW, _single_tensor_adam), per element, t = step count after this step:
//   g  = grad / grad_scale                        (when a GradScaler hands over its scale)
//   g  = -g                                       (maximize)
//   p  = p * (1 - lr*wd)                          (AdamW: decoupled weight decay)
//   g  = g + wd * p                               (Adam: L2 weight decay)
//   m  = lerp(m, g, 1 - beta1)                    (torch's lerp: m + w (g - m), or g - (g - m)(1 - w) for w >= 1/2)
//   v  = v * beta2 + (1 - beta2) * g * g
//   vm = max(vm, v)                               (amsgrad; then vm replaces v below)
//   p  = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),   step_size = lr / (1 - beta1^t)
// There is no gradient: an optimizer step is not differentiated. The per-tensor scalars
// (step_size, sqrt(1 - beta2^t)) are computed in double on the host from the float32 step count,
// then rounded to the math type, exactly where torch rounds them.
//
// Decomposition. Every tensor of the call is cut into chunks of kChunk elements and the chunks of
// all tensors form one work list; at::parallel_for splits that list over the threads. A model's
// parameter list is many small tensors (biases, norms) and a few large ones: parallelising per
// tensor would run each small tensor on one thread with a fork/join per tensor, and leave threads
// idle; the flat list keeps both cores busy with one fork/join per step. A chunk is swept with
// at::vec (8 floats per AVX2 vector; fp16/bf16 loaded 16 at a time and widened to two float vectors).
//
// Traffic per parameter and step (s = bytes per element): read p, g, m, v and write p, m, v once:
// 7s (28 bytes in float32); amsgrad adds a read and a write of vm: 9s. Unfused torch
// (_single_tensor_adam, foreach=False) runs ~9 elementwise ops per tensor, each a full read/write
// pass: about 24s per parameter; foreach=True fuses launches, not passes (about the same traffic).
// The benchmark's GB/s uses 7s (9s with amsgrad).
//
// Numerics. Math in float32 for fp16/bf16/fp32 (one rounding to the storage type per stored value;
// torch's own fp16/bf16 single-tensor step rounds after every op) and in float64 for fp64. NaN/inf in
// a gradient propagate into p, m, v as in torch. found_inf != 0 writes nothing (and the step count
// is not advanced), so a GradScaler overflow step leaves params and state bit-identical.
//
// Preconditions (check_adam_args): equal-length lists; per parameter, grad/m/v/vm of p's shape,
// dtype and device; one device and one dtype per call; one-element float32 steps on that device.
// A tensor whose p, g, m, v (vm) are not all non-overlapping and dense with identical strides
// (e.g. a strided view as a parameter) is updated through contiguous copies that are copied back.
//
// References. D. Kingma, J. Ba, "Adam" (arXiv:1412.6980); I. Loshchilov, F. Hutter, "Decoupled
// weight decay regularization" (AdamW, arXiv:1711.05101); S. Reddi et al. (AMSGrad, ICLR 2018);
// torch/optim/adam.py and aten/src/ATen/native/cpu/FusedAdamKernel.cpp for the semantics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fastops.h"

// No multiply-add contraction in this file: GCC's default (-ffp-contract=fast) fuses a * b + c into
// one FMA where the code's shape lets it, and it chose differently for the fixed-flag and the
// runtime-flag instantiations of the same update (float32 AdamW differed in the last bit). Each
// product and sum rounded on its own, as written, gives every path the same bits; the sweep is
// memory-bound, so the unfused instructions cost nothing measurable.
#pragma GCC optimize("fp-contract=off")

namespace fastops {
namespace {

using at::vec::Vectorized;

// 16k elements: large enough that the fork/join and chunk bookkeeping vanish against ~0.1 ms of
// streaming, small enough that a 10M-parameter list makes hundreds of chunks to balance.
constexpr int64_t kChunk = 16384;

// Scalars of one tensor's update, in the math type T.
template <typename T>
struct AdamScalars {
  T inv_scale, decay_factor, wd, lerp_w, one_minus_lerp_w, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step_size;
  bool has_scale, maximize, decoupled, l2, lerp_low, amsgrad;
};

template <typename T>
inline T op_sqrt(T x) {
  return std::sqrt(x);
}
template <typename T>
inline Vectorized<T> op_sqrt(const Vectorized<T>& x) {
  return x.sqrt();
}
template <typename T>
inline T op_max(T a, T b) {
  return (a != a || b != b) ? a + b : std::max(a, b);  // NaN-propagating, as torch.maximum
}
template <typename T>
inline Vectorized<T> op_max(const Vectorized<T>& a, const Vectorized<T>& b) {
  return at::vec::maximum(a, b);  // propagates NaN
}

// Where the update's switches come from. Runtime: the AdamScalars (any combination). Fixed: the
// common case known at compile time (no grad scale, no maximize, no amsgrad, beta1 > 0.5 so the
// lerp's low form), with the weight-decay form as template arguments: the sweep has no per-vector
// branches. Same operations in the same order either way (and no FMA contraction, below), so the
// results are bit-identical (tests/test_adam.py checks it through maximize on a negated gradient).
// Measured on a 2-core AMD EPYC (AVX2), interleaved with torch's fused Adam, float32: one 1M-element
// tensor (its state in the last-level cache) 0.77x torch's with the runtime switches only, 1.01-1.05x
// with the fixed path; 1.02-1.10x on the benchmark's other lists (DRAM-bound ones at parity: both
// move the same 28 bytes per parameter).
struct RuntimeFlags {
  static constexpr bool fixed = false, decoupled = false, l2 = false;
};
template <bool Decoupled, bool L2>
struct FixedFlags {
  static constexpr bool fixed = true, decoupled = Decoupled, l2 = L2;
};

// One update on values (scalars or vectors) of the math type; V is T or Vectorized<T>.
template <typename T, typename V, typename F = RuntimeFlags>
inline void adam_update(const AdamScalars<T>& s, V& p, V g, V& m, V& v, V* vm) {
  if (!F::fixed && s.has_scale) g = g * V(s.inv_scale);
  if (!F::fixed && s.maximize) g = V(T(0)) - g;
  if (F::fixed ? F::decoupled : s.decoupled) p = p * V(s.decay_factor);
  if (F::fixed ? F::l2 : s.l2) g = g + V(s.wd) * p;
  m = (F::fixed || s.lerp_low) ? m + V(s.lerp_w) * (g - m) : g - (g - m) * V(s.one_minus_lerp_w);
  v = v * V(s.beta2) + V(s.one_minus_beta2) * g * g;
  V vv = v;
  if (vm != nullptr) {
    *vm = op_max(*vm, v);
    vv = *vm;
  }
  const V denom = op_sqrt(vv) / V(s.bc2_sqrt) + V(s.eps);
  p = p + V(s.neg_step_size) * m / denom;
}

struct WorkItem {
  int64_t tensor, begin, end;
};

// Contiguous (or dense, identically strided) buffers of one parameter.
template <typename scalar_t>
struct AdamBuffers {
  scalar_t *p, *m, *v, *vm;
  const scalar_t* g;
};

// float32/float64: the math type is the storage type. s by value: a local the stores through b's
// pointers cannot alias, so its members stay in registers across the sweep.
template <typename scalar_t, typename F>
void adam_chunk(const AdamScalars<scalar_t> s, const AdamBuffers<scalar_t>& b, int64_t begin, int64_t end) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t W = Vec::size();
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    Vec p = Vec::loadu(b.p + i), g = Vec::loadu(b.g + i), m = Vec::loadu(b.m + i), v = Vec::loadu(b.v + i);
    if (!F::fixed && s.amsgrad) {
      Vec vm = Vec::loadu(b.vm + i);
      adam_update<scalar_t, Vec, F>(s, p, g, m, v, &vm);
      vm.store(b.vm + i);
    } else {
      adam_update<scalar_t, Vec, F>(s, p, g, m, v, nullptr);
    }
    p.store(b.p + i);
    m.store(b.m + i);
    v.store(b.v + i);
  }
  for (; i < end; ++i) {
    scalar_t p = b.p[i], m = b.m[i], v = b.v[i], vm = s.amsgrad ? b.vm[i] : scalar_t(0);
    adam_update<scalar_t, scalar_t>(s, p, b.g[i], m, v, s.amsgrad ? &vm : nullptr);
    b.p[i] = p;
    b.m[i] = m;
    b.v[i] = v;
    if (s.amsgrad) b.vm[i] = vm;
  }
}

// float16/bfloat16: widened to float32 for the math, rounded once on store.
template <typename scalar_t, typename F>
void adam_chunk_reduced(const AdamScalars<float> s, const AdamBuffers<scalar_t>& b, int64_t begin, int64_t end) {
  using Vec = Vectorized<scalar_t>;
  using FVec = Vectorized<float>;
  constexpr int64_t W = Vec::size();
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    auto [p0, p1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b.p + i));
    auto [g0, g1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b.g + i));
    auto [m0, m1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b.m + i));
    auto [v0, v1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b.v + i));
    if (!F::fixed && s.amsgrad) {
      auto [q0, q1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b.vm + i));
      adam_update<float, FVec, F>(s, p0, g0, m0, v0, &q0);
      adam_update<float, FVec, F>(s, p1, g1, m1, v1, &q1);
      at::vec::convert_from_float<scalar_t>(q0, q1).store(b.vm + i);
    } else {
      adam_update<float, FVec, F>(s, p0, g0, m0, v0, nullptr);
      adam_update<float, FVec, F>(s, p1, g1, m1, v1, nullptr);
    }
    at::vec::convert_from_float<scalar_t>(p0, p1).store(b.p + i);
    at::vec::convert_from_float<scalar_t>(m0, m1).store(b.m + i);
    at::vec::convert_from_float<scalar_t>(v0, v1).store(b.v + i);
  }
  for (; i < end; ++i) {
    float p = float(b.p[i]), m = float(b.m[i]), v = float(b.v[i]), vm = s.amsgrad ? float(b.vm[i]) : 0.f;
    adam_update<float, float>(s, p, float(b.g[i]), m, v, s.amsgrad ? &vm : nullptr);
    b.p[i] = scalar_t(p);
    b.m[i] = scalar_t(m);
    b.v[i] = scalar_t(v);
    if (s.amsgrad) b.vm[i] = scalar_t(vm);
  }
}

template <typename scalar_t, typename F>
void run_chunk_as(const AdamScalars<at::opmath_type<scalar_t>>& s, const AdamBuffers<scalar_t>& b, int64_t begin,
                  int64_t end) {
  if constexpr (std::is_same_v<at::opmath_type<scalar_t>, scalar_t>) {
    adam_chunk<scalar_t, F>(s, b, begin, end);
  } else {
    adam_chunk_reduced<scalar_t, F>(s, b, begin, end);
  }
}

template <typename scalar_t>
void run_chunk(const AdamScalars<at::opmath_type<scalar_t>>& s, const AdamBuffers<scalar_t>& b, int64_t begin,
               int64_t end) {
  if (s.has_scale || s.maximize || s.amsgrad || !s.lerp_low) {
    run_chunk_as<scalar_t, RuntimeFlags>(s, b, begin, end);
  } else if (s.decoupled) {
    run_chunk_as<scalar_t, FixedFlags<true, false>>(s, b, begin, end);
  } else if (s.l2) {
    run_chunk_as<scalar_t, FixedFlags<false, true>>(s, b, begin, end);
  } else {
    run_chunk_as<scalar_t, FixedFlags<false, false>>(s, b, begin, end);
  }
}

bool same_dense_layout(const at::Tensor& p, std::initializer_list<const at::Tensor*> others) {
  if (!p.is_non_overlapping_and_dense()) return false;
  for (const at::Tensor* t : others)
    if (t != nullptr && (!t->is_non_overlapping_and_dense() || t->strides() != p.strides())) return false;
  return true;
}

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList max_exp_avg_sqs, at::TensorList state_steps, double lr,
                   const std::optional<at::Tensor>& lr_tensor, double beta1, double beta2, double weight_decay,
                   double eps, bool amsgrad, bool maximize, bool decoupled_weight_decay,
                   const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const BelowAutograd below_autograd;
  check_adam_args("adam_step_", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, lr_tensor,
                  beta1, beta2, weight_decay, eps, amsgrad, grad_scale, found_inf);
  const int64_t n = static_cast<int64_t>(params.size());
  if (n == 0) return;
  // On the CPU reading these is free (no device to synchronise with).
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;
  if (lr_tensor.has_value()) {
    lr = lr_tensor->item<double>();
    FASTOPS_CHECK_VALUE(lr >= 0.0, "adam_step_: Invalid learning rate: ", lr);
  }
  const double inv_scale = grad_scale.has_value() ? 1.0 / grad_scale->item<double>() : 1.0;

  // Tensors that are not dense with p's strides go through contiguous copies, copied back at the end.
  std::vector<at::Tensor> P(n), G(n), M(n), V(n), VM(amsgrad ? n : 0);
  std::vector<bool> copied(n, false);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor* vm = amsgrad ? &max_exp_avg_sqs[i] : nullptr;
    if (same_dense_layout(params[i], {&grads[i], &exp_avgs[i], &exp_avg_sqs[i], vm})) {
      P[i] = params[i], G[i] = grads[i], M[i] = exp_avgs[i], V[i] = exp_avg_sqs[i];
      if (amsgrad) VM[i] = *vm;
    } else {
      copied[i] = true;
      P[i] = params[i].contiguous(), G[i] = grads[i].contiguous(), M[i] = exp_avgs[i].contiguous();
      V[i] = exp_avg_sqs[i].contiguous();
      if (amsgrad) VM[i] = vm->contiguous();
    }
  }

  // Per-tensor scalars from the step count after this step (torch: step_t += 1, then Python floats).
  std::vector<double> step_size(n), bc2_sqrt(n);
  for (int64_t i = 0; i < n; ++i) {
    float* sp = state_steps[i].data_ptr<float>();
    const float t = *sp + 1.0f;
    *sp = t;
    step_size[i] = lr / (1.0 - std::pow(beta1, double(t)));
    bc2_sqrt[i] = std::sqrt(1.0 - std::pow(beta2, double(t)));
  }

  std::vector<WorkItem> work;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < P[i].numel(); b += kChunk) work.push_back({i, b, std::min(P[i].numel(), b + kChunk)});

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "adam_step_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    auto scalars = [&](int64_t i) {
      AdamScalars<opmath_t> s;
      const double w = 1.0 - beta1;
      s.has_scale = grad_scale.has_value();
      s.inv_scale = opmath_t(inv_scale);
      s.maximize = maximize;
      s.decoupled = decoupled_weight_decay && weight_decay != 0.0;
      s.l2 = !decoupled_weight_decay && weight_decay != 0.0;
      s.decay_factor = opmath_t(1.0 - lr * weight_decay);
      s.wd = opmath_t(weight_decay);
      s.lerp_low = std::abs(w) < 0.5;
      s.lerp_w = opmath_t(w);
      s.one_minus_lerp_w = opmath_t(1) - opmath_t(w);
      s.beta2 = opmath_t(beta2);
      s.one_minus_beta2 = opmath_t(1.0 - beta2);
      s.bc2_sqrt = opmath_t(bc2_sqrt[i]);
      s.eps = opmath_t(eps);
      s.neg_step_size = opmath_t(-step_size[i]);
      s.amsgrad = amsgrad;
      return s;
    };
    at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t lo, int64_t hi) {
      for (int64_t w = lo; w < hi; ++w) {
        const WorkItem& it = work[w];
        const int64_t i = it.tensor;
        AdamBuffers<scalar_t> b{P[i].data_ptr<scalar_t>(), M[i].data_ptr<scalar_t>(), V[i].data_ptr<scalar_t>(),
                                amsgrad ? VM[i].data_ptr<scalar_t>() : nullptr, G[i].const_data_ptr<scalar_t>()};
        run_chunk<scalar_t>(scalars(i), b, it.begin, it.end);
      }
    });
  });

  for (int64_t i = 0; i < n; ++i) {
    if (!copied[i]) continue;
    params[i].copy_(P[i]);
    exp_avgs[i].copy_(M[i]);
    exp_avg_sqs[i].copy_(V[i]);
    if (amsgrad) max_exp_avg_sqs[i].copy_(VM[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("adam_step_", &adam_step_cpu); }

}  // namespace fastops
