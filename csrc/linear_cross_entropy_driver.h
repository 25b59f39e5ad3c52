// Fused linear + cross-entropy: the chunk sweep shared by the CPU and CUDA kernels.
//
// Math. x (N, H), weight W (V, H), bias b (V,), logits l = x W^T + b, z = softcap * tanh(l / softcap)
// (z = l without a cap), per row r with target y, class weights w (1 when absent), W_sum = sum_c w_c,
// label smoothing e, z-loss coefficient k, m = max_c z_c, ls = log sum_c exp(z_c - m), lse = m + ls,
// p_c = exp((z_c - m) - ls):
//   loss_r  = (1-e) w_y (lse - z_y) + e/V sum_c w_c (lse - z_c) + k lse^2            (0 if y == ignore)
//   dloss_r/dz_c = p_c ((1-e) w_y + e W_sum / V + 2 k lse) - (1-e) w_y [c == y] - e/V w_c
//   dz/dl = 1 - (z / softcap)^2
// "mean" divides the summed loss by D = sum of w_y over the non-ignored rows (NaN when D == 0, as
// torch's 0/0); "sum" by nothing. With the row's upstream gradient g_r (1/D or 1, or grad_loss[r] for
// "none") and G = g_r dloss_r/dl (N, V):
//   grad_x = G W (N, H),   grad_W = G^T x (V, H),   grad_b = sum_r G_r (V,)
//
// Decomposition. Rows are swept in chunks of R rows (linear_cross_entropy_chunk_rows). Per chunk:
//   1. Z = x_c W^T (+ b): one BLAS / cuBLAS GEMM into a reused (R, V) buffer of the compute dtype
//      (float32, or float64 for float64 inputs; a float16 / bfloat16 GEMM writes a reused buffer of
//      the input dtype first, widened into the float32 one);
//   2. the device's row kernel (the template argument): caps Z in place, finds each row's m and ls,
//      writes the row loss and stats, and, when gradients are wanted, overwrites Z with G;
//   3. grad_x[c] = G W, grad_W += G^T x_c, grad_b += colsum(G): two more GEMMs and a reduction,
//      accumulated in the compute dtype across chunks and rounded once at the end.
// So the forward with gradients costs the 3 GEMMs of eager (6 N H V FLOPs) in one sweep; the _bwd op
// (reduction "none", or a double backward) recomputes Z, one GEMM more, and reuses the saved stats.
//
// Memory: besides the outputs (loss, stats, grad_x, grad_weight, grad_bias) the sweep holds one
// (R, V) compute-dtype chunk (plus one input-dtype chunk for float16 / bfloat16, and float32
// accumulators for their grad_weight / grad_bias); eager holds (N, V) logits, their log-softmax and
// its gradient. Measured on CPU float32, N = 4096, H = 1024 (forward + backward, beyond the returned
// gradients, torch.profiler): V = 32000 31 MiB vs eager's 1359 MiB; V = 128256 125 MiB vs 5495 MiB.
// Caveat for float16 / bfloat16: the float32 grad_weight accumulator is V H 4 bytes (2 GiB for
// V = 128256, H = 4096), about a third of eager's (N, V) tensors at N = 8192: the accumulation
// precision the interface asks for costs more than the chunks do.
//
// The row kernel is called as kernel(ChunkView<T>, RowParams<T>) on the chunk's device; every pointer
// in the view lives there. Target values are checked (IndexError) before any GEMM runs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "fastops.h"

namespace fastops::lce {

// One chunk of rows as the row kernel sees it. z: n x V contiguous, the logits on entry; on return the
// capped logits, or dloss/dlogit scaled by g when write_grad.
template <typename T>
struct ChunkView {
  T* z;
  int64_t n;
  const int64_t* y;    // targets (n,)
  const T* g;          // per-row upstream gradient (n,) (the reduction's scale folded in), or null
  T* loss;             // per-row loss (n,), or null (backward)
  T* m;                // stats[0] of these rows: written by the forward, read by the backward
  T* ls;               // stats[1]
  bool have_stats;     // backward: m, ls are the forward's; only the gradient pass runs
  bool write_grad;
};

template <typename T>
struct RowParams {
  int64_t V;
  int64_t ignore_index;
  T eps;        // label smoothing
  T softcap;    // 0: none
  T z_loss;
  const T* w;   // class weights (V,) in T, or null
  T wsum;       // sum of w (V without weights)
};

inline at::ScalarType lce_acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// IndexError for a target outside [0, V) that is not ignore_index (one reduction; a sync on CUDA).
inline void check_targets(const char* op, const at::Tensor& target, int64_t V, int64_t ignore_index) {
  if (target.numel() == 0) return;
  const at::Tensor bad = target.ne(ignore_index).logical_and_(target.lt(0).logical_or_(target.ge(V)));
  if (!bad.any().item<bool>()) return;
  const int64_t r = bad.nonzero().select(1, 0)[0].item<int64_t>();
  const int64_t v = target[r].item<int64_t>();
  FASTOPS_CHECK_INDEX(false, op, ": target[", r, "] = ", v, " is out of bounds for ", V, " classes (expected 0 <= target < ",
                      V, ", or target == ignore_index ", ignore_index, ")");
}

// What "mean" divides by, as a 0-d tensor of dtype acc: the summed class weight of the non-ignored
// targets (their count without weights).
inline at::Tensor mean_denominator(const at::Tensor& target, const at::Tensor& w_acc, int64_t ignore_index,
                                   at::ScalarType acc) {
  const at::Tensor valid = target.ne(ignore_index);
  if (!w_acc.defined()) return valid.sum(acc);
  const at::Tensor y = at::where(valid, target, at::zeros({}, target.options()));
  return w_acc.index_select(0, y).mul_(valid.to(acc)).sum();
}

struct Sweep {
  // inputs
  at::Tensor x, weight, target, w_acc;  // x contiguous (N, H); w_acc: class weights in acc dtype or undefined
  std::optional<at::Tensor> bias;
  int64_t ignore_index;
  double eps, softcap, z_loss;
  int64_t rows;  // per chunk
  // outputs (undefined when not wanted)
  at::Tensor loss_rows, stats;  // (N,), (2, N) acc
  at::Tensor g_rows;            // (N,) acc: per-row upstream gradient, or undefined (no gradient)
  at::Tensor grad_x, grad_w_acc, grad_b_acc;
};

template <typename Kernel>
void run_sweep(Sweep& s, Kernel&& kernel) {
  const int64_t N = s.x.size(0), V = s.weight.size(0);
  const at::ScalarType dt = s.x.scalar_type(), acc = lce_acc_dtype(dt);
  const bool reduced = dt != acc;
  const bool grad = s.g_rows.defined();
  const bool have_stats = !s.loss_rows.defined();
  const int64_t R = std::min(s.rows, N);
  if (N == 0) return;
  at::Tensor zbuf = at::empty({R, V}, s.x.options().dtype(acc));
  at::Tensor lpbuf = reduced ? at::empty({R, V}, s.x.options()) : at::Tensor();
  const at::Tensor wt = s.weight.t();
  AT_DISPATCH_FLOATING_TYPES(acc, "linear_cross_entropy_sweep", [&] {
    using T = scalar_t;
    RowParams<T> p{V,
                   s.ignore_index,
                   static_cast<T>(s.eps),
                   static_cast<T>(s.softcap),
                   static_cast<T>(s.z_loss),
                   s.w_acc.defined() ? s.w_acc.const_data_ptr<T>() : nullptr,
                   s.w_acc.defined() ? s.w_acc.sum().item<T>() : static_cast<T>(V)};
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t n = std::min(R, N - r0);
      const at::Tensor xc = s.x.narrow(0, r0, n);
      at::Tensor z = zbuf.narrow(0, 0, n);
      at::Tensor zl = reduced ? lpbuf.narrow(0, 0, n) : z;
      if (s.bias.has_value()) {
        at::addmm_out(zl, *s.bias, xc, wt);
      } else {
        at::mm_out(zl, xc, wt);
      }
      if (reduced) z.copy_(zl);
      T* st = s.stats.data_ptr<T>();
      ChunkView<T> cv{z.data_ptr<T>(),
                      n,
                      s.target.const_data_ptr<int64_t>() + r0,
                      grad ? s.g_rows.const_data_ptr<T>() + r0 : nullptr,
                      have_stats ? nullptr : s.loss_rows.data_ptr<T>() + r0,
                      st + r0,
                      st + N + r0,
                      have_stats,
                      grad};
      kernel(cv, p);
      if (!grad) continue;
      // G (n, V) in T. grad_x rows of this chunk: G W in the input dtype.
      at::Tensor gx = s.grad_x.narrow(0, r0, n);
      if (reduced) {
        zl.copy_(z);
        at::mm_out(gx, zl, s.weight);
      } else {
        at::mm_out(gx, z, s.weight);
      }
      const at::Tensor xa = reduced ? xc.to(acc) : xc;
      if (r0 == 0) {
        at::mm_out(s.grad_w_acc, z.t(), xa);
        if (s.grad_b_acc.defined()) at::sum_out(s.grad_b_acc, z, {0});
      } else {
        s.grad_w_acc.addmm_(z.t(), xa);
        if (s.grad_b_acc.defined()) s.grad_b_acc.add_(z.sum(0));
      }
    }
  });
}

// One sweep for both ops. fwd: grad_loss undefined; bwd: grad_loss and stats given.
template <typename Kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy(
    const char* op, const at::Tensor* grad_loss, const at::Tensor& x_, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias_, const at::Tensor& target_, const std::optional<at::Tensor>& class_weight,
    const at::Tensor* stats_in, int64_t ignore_index, double label_smoothing, double softcap, double z_loss,
    int64_t reduction, int64_t chunk_rows, bool compute_grad, Kernel&& kernel) {
  const BelowAutograd below_autograd;
  const auto geo = check_linear_cross_entropy_args(op, x_, weight, bias_, target_, class_weight, label_smoothing,
                                                   softcap, z_loss, reduction, chunk_rows);
  const int64_t N = geo.N, H = geo.H, V = geo.V;
  const at::ScalarType dt = x_.scalar_type(), acc = lce_acc_dtype(dt);
  const auto acc_opts = x_.options().dtype(acc);
  if (grad_loss != nullptr) {
    const std::vector<int64_t> gshape = reduction == 0 ? std::vector<int64_t>{N} : std::vector<int64_t>{};
    FASTOPS_CHECK_VALUE(grad_loss->sizes() == at::IntArrayRef(gshape), op, ": grad_loss must have shape ",
                        shape_str(gshape), ", got ", shape_str(grad_loss->sizes()));
    FASTOPS_CHECK_VALUE(stats_in->sizes() == at::IntArrayRef({2, N}), op, ": stats must have shape (2, ", N,
                        "), got ", shape_str(stats_in->sizes()));
    for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"grad_loss", grad_loss}, {"stats", stats_in}}) {
      FASTOPS_CHECK_TYPE(t->scalar_type() == acc, op, ": ", name, " must be ", acc, " for ", dt, " x, got ",
                         t->scalar_type());
      FASTOPS_CHECK_VALUE(t->device() == x_.device(), op, ": ", name, " is on ", t->device(), " but x is on ",
                          x_.device());
    }
  }
  check_targets(op, target_, V, ignore_index);

  Sweep s;
  s.x = x_.contiguous();
  s.weight = weight;
  s.target = target_.contiguous();
  s.bias = bias_;
  s.w_acc = class_weight.has_value() ? class_weight->contiguous().to(acc) : at::Tensor();
  s.ignore_index = ignore_index;
  s.eps = label_smoothing;
  s.softcap = softcap;
  s.z_loss = z_loss;
  s.rows = linear_cross_entropy_chunk_rows(N, H, V, chunk_rows);

  const bool grads = grad_loss != nullptr || (compute_grad && reduction != 0);
  at::Tensor denom;
  at::Tensor scale;  // the reduction's factor on each row's gradient
  if (reduction == 1) {
    denom = mean_denominator(s.target, s.w_acc, ignore_index, acc);
    scale = at::where(denom.eq(0), at::full({}, std::numeric_limits<double>::quiet_NaN(), acc_opts),
                      denom.reciprocal());
  }
  if (grad_loss != nullptr) {
    s.stats = stats_in->contiguous();
    at::Tensor g = grad_loss->to(acc);
    if (reduction == 1) g = g * scale;
    s.g_rows = g.expand({N}).contiguous();
  } else {
    s.loss_rows = new_output({N}, acc_opts);
    s.stats = new_output({2, N}, acc_opts);
    if (grads) s.g_rows = reduction == 1 ? scale.expand({N}).contiguous() : at::ones({N}, acc_opts);
  }
  at::Tensor grad_x = at::empty({0}, x_.options()), grad_w = at::empty({0}, weight.options());
  at::Tensor grad_b = at::empty({0}, bias_.has_value() ? bias_->options() : x_.options());
  if (grads) {
    grad_x = new_output({N, H}, x_.options());
    s.grad_x = grad_x;
    s.grad_w_acc = dt == acc ? new_output({V, H}, acc_opts) : at::empty({V, H}, acc_opts);
    if (bias_.has_value()) s.grad_b_acc = at::empty({V}, acc_opts);
    if (N == 0) {
      s.grad_w_acc.zero_();
      if (bias_.has_value()) s.grad_b_acc.zero_();
    }
  }
  run_sweep(s, kernel);
  if (grads) {
    grad_w = s.grad_w_acc.to(weight.scalar_type());
    if (bias_.has_value()) grad_b = s.grad_b_acc.to(bias_->scalar_type());
  }
  if (grad_loss != nullptr) return {at::Tensor(), at::Tensor(), grad_x, grad_w, grad_b};
  at::Tensor loss;
  if (reduction == 0) {
    loss = s.loss_rows;
  } else {
    const at::Tensor total = s.loss_rows.sum();
    loss = reduction == 2 ? total
                          : at::where(denom.eq(0), at::full({}, std::numeric_limits<double>::quiet_NaN(), acc_opts),
                                      total / denom);
  }
  return {loss, s.stats, grad_x, grad_w, grad_b};
}

}  // namespace fastops::lce
