// Host-function declarations and the shared input checks of the fastops extension.
//
// Every registered op validates its arguments here, once, before any kernel runs, so that a bad
// call raises a c10::Error (a Python RuntimeError / ValueError) naming the argument, and no kernel
// ever indexes out of bounds. Checks that need the data (class indices in range) live in the
// kernels, which report through an error flag instead of reading past the end.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/native/ConvUtils.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>
#include <c10/util/strides.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <limits>
#include <optional>
#include <type_traits>
#include <string>
#include <vector>

namespace fastops {

// Error messages are built here, not by c10::str. c10::str formats numbers through an
// std::ostringstream instantiated in this library, and on the lent H100 (torch 2.11, the image's
// /opt/gcc) every such message crashed the process (SIGSEGV) where the same check without a number,
// or with numbers through std::to_string, raised cleanly: each TORCH_CHECK here gets one finished
// std::string, which c10::str passes through untouched. The text is c10::str's: integers in
// decimal, doubles as ostream's default (printf's %g), ArrayRef as [a, b], dtypes and devices by name.
namespace detail {
inline void msg_append(std::string& out, const char* v) { out += v; }
inline void msg_append(std::string& out, const std::string& v) { out += v; }
inline void msg_append(std::string& out, char v) { out += v; }
inline void msg_append(std::string& out, double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  out += buf;
}
template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, char>, int> = 0>
inline void msg_append(std::string& out, T v) {
  out += std::to_string(v);
}
inline void msg_append(std::string& out, at::IntArrayRef v) {
  out += '[';
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  out += ']';
}
// c10::str prints a std::vector as "2 0 7", an ArrayRef as "[2, 0, 7]": pass shape_str(v) or an
// IntArrayRef instead, so no message depends on which one a vector would have converted to.
inline void msg_append(std::string& out, const std::vector<int64_t>& v) = delete;
inline void msg_append(std::string& out, c10::ScalarType v) { out += c10::toString(v); }
inline void msg_append(std::string& out, const c10::Device& v) { out += v.str(); }
}  // namespace detail

template <typename... Args>
inline std::string msg(const Args&... args) {
  std::string out;
  (detail::msg_append(out, args), ...);
  return out;
}

}  // namespace fastops

#define FASTOPS_CHECK(cond, ...) TORCH_CHECK(cond, ::fastops::msg(__VA_ARGS__))
#define FASTOPS_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::fastops::msg(__VA_ARGS__))
#define FASTOPS_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, ::fastops::msg(__VA_ARGS__))
#define FASTOPS_CHECK_INDEX(cond, ...) TORCH_CHECK_INDEX(cond, ::fastops::msg(__VA_ARGS__))

namespace fastops {

// Test hook: with FASTOPS_POISON=1 every output a kernel must fully overwrite starts as NaN (0xFF..
// for integers), so an element a kernel forgot to write shows in the tests instead of reading back
// a stale, plausible value from the caching allocator.
inline bool poison_outputs() {
  static const bool on = [] {
    const char* v = std::getenv("FASTOPS_POISON");
    return v != nullptr && v[0] == '1';
  }();
  return on;
}

// A large CPU output is fresh memory from mmap: first touch costs one page fault per 4 KiB page,
// which for an N x C gradient costs more than the kernel itself (65 MB: ~30 ms of faults against
// ~10 ms of compute on the 2-core CI machine). Asking for transparent huge pages on the untouched
// buffer turns 16k faults into 32. It is advice only: nothing changes where THP is off.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!t.is_cpu() || t.nbytes() < 2 * kHuge) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + t.nbytes()) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

// Entered first by every kernel entry point: the ATen calls a kernel makes (mm_out, sum, empty) run
// below autograd, as inside ATen's own kernels. Without it a raw op called on an input that requires
// grad fails deep inside ("mm(): functions with out=... arguments don't support automatic
// differentiation") or records a graph nobody asked for; the registered autograd formula is the
// op's only derivative.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

inline at::Tensor new_output(at::IntArrayRef shape, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(shape, opts);
  advise_huge_pages(t);
  if (poison_outputs()) {
    if (at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<double>::quiet_NaN());
    else t.fill_(-1);
  }
  return t;
}

// True when two elements of t may share memory: stride 0 on a dimension of size > 1 (expand), or an
// as_strided layout whose windows interleave. ATen answers Yes / No when it can; for the rest
// (TooHard) the sufficient condition for no overlap is checked: over the dims sorted by stride, each
// stride exceeds the span of the smaller ones. A layout that fails it is treated as overlapping, so
// an in-place kernel refuses it instead of returning an element-order-dependent result.
inline bool may_overlap(const at::Tensor& t) {
  const at::MemOverlap o = at::has_internal_overlap(t);
  if (o != at::MemOverlap::TooHard) return o == at::MemOverlap::Yes;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of dims of size > 1
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1) dims.emplace_back(std::abs(t.stride(d)), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t span = 0;  // max offset reachable with the smaller-stride dims
  for (const auto& [stride, size] : dims) {
    if (stride <= span) return true;
    span += stride * (size - 1);
  }
  return false;
}

// ---- softmax cross-entropy --------------------------------------------------------------------

// logits seen as (B, C, D): B = batch (1 when unbatched), C = classes, D = product of the spatial
// dims (1 for (N, C) and (C,)). Row r = b * D + d holds the C logits at stride D.
struct CrossEntropyGeometry {
  int64_t B = 0, C = 0, D = 1;
  bool probs = false;                // target holds class probabilities (logits' shape, float)
  std::vector<int64_t> row_shape;    // logits' shape without the class dim
  int64_t rows() const { return B * D; }
};

inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

// Accumulation dtype: float32 for fp16/bf16/fp32, float64 for fp64.
inline at::ScalarType cross_entropy_acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline CrossEntropyGeometry check_cross_entropy_args(
    const char* op, const at::Tensor& logits, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, double label_smoothing) {
  CrossEntropyGeometry g;
  FASTOPS_CHECK_VALUE(logits.dim() >= 1, op, ": logits must have shape (C,), (N, C) or (N, C, d1, ...), got ",
                      shape_str(logits.sizes()));
  FASTOPS_CHECK_TYPE(at::isFloatingType(logits.scalar_type()), op,
                     ": logits must be a floating tensor, got ", logits.scalar_type());
  const int64_t cdim = logits.dim() == 1 ? 0 : 1;
  g.C = logits.size(cdim);
  FASTOPS_CHECK_VALUE(g.C >= 1, op, ": logits must have at least one class, got shape ", shape_str(logits.sizes()));
  g.B = logits.dim() == 1 ? 1 : logits.size(0);
  for (int64_t i = 0; i < logits.dim(); ++i) {
    if (i == cdim) continue;
    g.row_shape.push_back(logits.size(i));
    if (i >= 2) g.D *= logits.size(i);
  }
  FASTOPS_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
                      ": label_smoothing must be between 0.0 and 1.0, got ", label_smoothing);
  FASTOPS_CHECK_VALUE(target.device() == logits.device(), op, ": target is on ", target.device(),
                      " but logits are on ", logits.device());
  g.probs = at::isFloatingType(target.scalar_type());
  if (g.probs) {
    FASTOPS_CHECK_VALUE(target.sizes() == logits.sizes(), op,
                        ": class-probability target must have logits' shape ", shape_str(logits.sizes()),
                        ", got ", shape_str(target.sizes()));
    FASTOPS_CHECK_TYPE(target.scalar_type() == logits.scalar_type(), op,
                       ": class-probability target must have logits' dtype ", logits.scalar_type(), ", got ",
                       target.scalar_type());
  } else {
    FASTOPS_CHECK_TYPE(target.scalar_type() == at::kLong, op,
                       ": class-index target must be int64 (or float class probabilities), got ",
                       target.scalar_type());
    FASTOPS_CHECK_VALUE(target.sizes() == at::IntArrayRef(g.row_shape), op, ": class-index target must have shape ",
                        shape_str(g.row_shape), " for logits of shape ", shape_str(logits.sizes()), ", got ",
                        shape_str(target.sizes()));
  }
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    FASTOPS_CHECK_VALUE(w.dim() == 1 && w.size(0) == g.C, op, ": weight must have shape (", g.C,
                        ",) (one per class), got ", shape_str(w.sizes()));
    FASTOPS_CHECK_TYPE(w.scalar_type() == logits.scalar_type(), op, ": weight must have logits' dtype ",
                       logits.scalar_type(), ", got ", w.scalar_type());
    FASTOPS_CHECK_VALUE(w.device() == logits.device(), op, ": weight is on ", w.device(), " but logits are on ",
                        logits.device());
  }
  return g;
}

// The forward's saved row statistics: stats (2, *row_shape) in the accumulation dtype, stats[0] = the
// row max m, stats[1] = log sum_c exp(x_c - m). Two numbers, not lse = m + log sum: x - lse loses
// ulp(m) / 2 when lse is rounded (3.9e-3 in exp's argument for float32 logits near 1e5), while
// (x - m) is exact for every x near the max and log sum is small.
inline std::vector<int64_t> cross_entropy_stats_shape(const CrossEntropyGeometry& g) {
  std::vector<int64_t> s{2};
  s.insert(s.end(), g.row_shape.begin(), g.row_shape.end());
  return s;
}

inline void check_cross_entropy_bwd_args(const char* op, const CrossEntropyGeometry& g, const at::Tensor& logits,
                                         const at::Tensor& grad_loss, const at::Tensor& stats) {
  const auto acc = cross_entropy_acc_dtype(logits.scalar_type());
  const std::vector<int64_t> stats_shape = cross_entropy_stats_shape(g);
  for (const auto& [name, t, shape] :
       {std::tuple<const char*, const at::Tensor&, const std::vector<int64_t>&>{"grad_loss", grad_loss, g.row_shape},
        {"stats", stats, stats_shape}}) {
    FASTOPS_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ", shape_str(shape),
                        ", got ", shape_str(t.sizes()));
    FASTOPS_CHECK_TYPE(t.scalar_type() == acc, op, ": ", name, " must be ", acc, " for ", logits.scalar_type(),
                       " logits, got ", t.scalar_type());
    FASTOPS_CHECK_VALUE(t.device() == logits.device(), op, ": ", name, " is on ", t.device(), " but logits are on ",
                        logits.device());
  }
}

// The two public forms of cross_entropy_bwd, the same on every device: a new gradient, or the gradient
// written over logits. `Into` is the device's pass (op name for messages, ..., the output to fill); it
// checks every argument itself, so no device guard is taken here: logits may not even be on the
// backend's device yet, and contiguous() and the allocation follow logits' own device.
using CrossEntropyBwdInto = void (*)(const char* op, const at::Tensor& grad_loss, const at::Tensor& logits,
                                     const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                     const at::Tensor& stats, int64_t ignore_index, double label_smoothing,
                                     at::Tensor& out);

template <CrossEntropyBwdInto Into>
at::Tensor cross_entropy_bwd_entry(const at::Tensor& grad_loss, const at::Tensor& logits_, const at::Tensor& target,
                                   const std::optional<at::Tensor>& weight, const at::Tensor& stats,
                                   int64_t ignore_index, double label_smoothing) {
  const BelowAutograd below_autograd;
  const at::Tensor logits = logits_.contiguous();
  at::Tensor out = new_output(logits.sizes(), logits.options());
  Into("cross_entropy_bwd", grad_loss, logits, target, weight, stats, ignore_index, label_smoothing, out);
  return out;
}

template <CrossEntropyBwdInto Into>
void cross_entropy_bwd_inplace_entry(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                                     const std::optional<at::Tensor>& weight, const at::Tensor& stats,
                                     int64_t ignore_index, double label_smoothing) {
  const BelowAutograd below_autograd;
  FASTOPS_CHECK_VALUE(logits.is_contiguous(), "cross_entropy_bwd_: logits must be contiguous to be overwritten");
  at::Tensor out = logits;
  Into("cross_entropy_bwd_", grad_loss, logits, target, weight, stats, ignore_index, label_smoothing, out);
}

// ---- conv2d -----------------------------------------------------------------------------------

// Implicit-GEMM view of one conv2d (design.md letters): input (N, C, H, W), weight (K, Cg, R, S),
// output (N, K, P, Q); per group, GEMM_M = N P Q, GEMM_N = Kg, GEMM_K = Cg R S.
struct Conv2dGeometry {
  int64_t N = 0, C = 0, H = 0, W = 0, K = 0, R = 0, S = 0, P = 0, Q = 0;
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, G = 1, Cg = 0, Kg = 0;
  int64_t crs() const { return Cg * R * S; }
  int64_t pq() const { return P * Q; }
  int64_t hw() const { return H * W; }
  // 1x1, stride 1, no padding: the input itself is the GEMM operand, no gather needed.
  bool pointwise() const { return R == 1 && S == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

inline Conv2dGeometry check_conv2d_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups) {
  FASTOPS_CHECK_VALUE(x.dim() == 4, op, ": input must have shape (N, C, H, W), got ", shape_str(x.sizes()));
  FASTOPS_CHECK_VALUE(weight.dim() == 4, op, ": weight must have shape (K, C/groups, R, S), got ",
                      shape_str(weight.sizes()));
  FASTOPS_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": input must be a floating tensor, got ",
                     x.scalar_type());
  FASTOPS_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight must have input's dtype ",
                     x.scalar_type(), ", got ", weight.scalar_type());
  FASTOPS_CHECK_VALUE(weight.device() == x.device(), op, ": weight is on ", weight.device(), " but input is on ",
                      x.device());
  FASTOPS_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
                      ": stride, padding and dilation must have 2 elements each");
  FASTOPS_CHECK_VALUE(stride[0] > 0 && stride[1] > 0, op, ": stride must be positive, got ", stride);
  FASTOPS_CHECK_VALUE(dilation[0] > 0 && dilation[1] > 0, op, ": dilation must be positive, got ", dilation);
  FASTOPS_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be non-negative, got ", padding);
  FASTOPS_CHECK_VALUE(groups > 0, op, ": groups must be positive, got ", groups);
  Conv2dGeometry g;
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.K = weight.size(0), g.R = weight.size(2), g.S = weight.size(3);
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1], g.dh = dilation[0], g.dw = dilation[1];
  g.G = groups;
  FASTOPS_CHECK_VALUE(g.C % groups == 0, op, ": groups=", groups, " must divide the input channels C=", g.C);
  FASTOPS_CHECK_VALUE(g.K % groups == 0, op, ": groups=", groups, " must divide the output channels K=", g.K,
                      " (weight.size(0))");
  g.Cg = g.C / groups, g.Kg = g.K / groups;
  FASTOPS_CHECK_VALUE(weight.size(1) == g.Cg, op, ": weight must have shape (", g.K, ", ", g.Cg, ", R, S) for ",
                      g.C, " input channels and groups=", groups, ", got ", shape_str(weight.sizes()));
  FASTOPS_CHECK_VALUE(g.R > 0 && g.S > 0 && g.K > 0, op, ": weight must be non-empty, got ",
                      shape_str(weight.sizes()));
  // Overflow-checked: padding or dilation near 2^62 must be an error naming them, not signed
  // overflow (undefined behaviour) and a message with wrapped numbers.
  int64_t eff_h = 0, eff_w = 0, hp = 0, wp = 0;
  const bool overflow = c10::mul_overflows(g.dh, g.R - 1, &eff_h) || c10::add_overflows(eff_h, int64_t(1), &eff_h) ||
                        c10::mul_overflows(g.dw, g.S - 1, &eff_w) || c10::add_overflows(eff_w, int64_t(1), &eff_w) ||
                        c10::mul_overflows(g.ph, int64_t(2), &hp) || c10::add_overflows(hp, g.H, &hp) ||
                        c10::mul_overflows(g.pw, int64_t(2), &wp) || c10::add_overflows(wp, g.W, &wp);
  FASTOPS_CHECK_VALUE(!overflow, op, ": padding ", padding, " or dilation ", dilation,
                      " is too large: the padded input or the dilated kernel exceeds 2^63 - 1 elements per side");
  FASTOPS_CHECK_VALUE(hp >= eff_h && wp >= eff_w, op, ": output size would be <= 0: padded input ", hp, "x", wp,
                      " is smaller than the dilated kernel ", eff_h, "x", eff_w);
  g.P = (hp - eff_h) / g.sh + 1;
  g.Q = (wp - eff_w) / g.sw + 1;
  int64_t numel = g.N;
  FASTOPS_CHECK_VALUE(!c10::mul_overflows(numel, g.K, &numel) && !c10::mul_overflows(numel, g.P, &numel) &&
                        !c10::mul_overflows(numel, g.Q, &numel),
                      op, ": padding ", padding, " or stride ", stride, " gives an output of shape (", g.N, ", ", g.K,
                      ", ", g.P, ", ", g.Q, "), more than 2^63 - 1 elements");
  return g;
}

// torch's layout for conv outputs (y, grad_x, grad_weight), asked of torch itself: the backend
// F.conv2d would pick for these operands and that backend's memory format. It is not one rule:
// channels_last follows a channels_last x or w on CPU and through cuDNN, but cuDNN keeps float64
// contiguous and CUDA's own depthwise kernel is always contiguous (seen on an H100, torch 2.11,
// where the former rule here gave channels_last). The choice does not depend on grad mode in server
// builds (only mobile's XNNPACK path does); no_grad pins it all the same, so the fake kernels
// (fastops/ops/conv2d.py: memory_format) and these kernels agree. Operands torch's conv would
// refuse (an empty reduction, C = 0) keep the rule both share there: channels_last when x or w is.
inline at::MemoryFormat conv_memory_format(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  if (x.size(1) > 0) {
    const c10::AutoGradMode no_grad(false);
    const int64_t zero[2] = {0, 0};
    const auto backend = at::native::select_conv_backend(
        x, w, std::nullopt, c10::fromIntArrayRefSlow(stride), c10::fromIntArrayRefSlow(padding),
        c10::fromIntArrayRefSlow(dilation), false, c10::fromIntArrayRefSlow(zero), c10::SymInt(groups), std::nullopt);
    return at::native::_determine_backend_memory_format(x, w, backend);
  }
  auto cl = [](const at::Tensor& t) {
    return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
  };
  return cl(x) || cl(w) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// t in memory format fmt with the strides torch gives a new tensor of that format. t.contiguous(fmt)
// keeps t as it is when t already counts as contiguous in fmt, whatever the strides of its size-1
// dims: a (2, 8, 1, 1) output computed channels_last has strides (8, 1, 8, 8), torch's (8, 1, 1, 1).
// Those strides address the same elements, so the canonical ones are a view of t.
inline at::Tensor in_memory_format(const at::Tensor& t, at::MemoryFormat fmt) {
  at::Tensor r = t.contiguous(fmt);
  if (r.dim() != 4 || r.numel() == 0) return r;
  std::vector<int64_t> canon;
  if (fmt == at::MemoryFormat::ChannelsLast) {
    canon = c10::get_channels_last_strides_2d(r.sizes());
  } else {
    const auto d = c10::contiguous_strides(r.sizes());
    canon.assign(d.begin(), d.end());
  }
  return r.strides() == at::IntArrayRef(canon) ? r : r.as_strided(r.sizes(), canon, r.storage_offset());
}

inline void check_conv2d_bias(const char* op, const Conv2dGeometry& g, const at::Tensor& x,
                              const std::optional<at::Tensor>& bias) {
  if (!bias.has_value()) return;
  const at::Tensor& b = *bias;
  FASTOPS_CHECK_VALUE(b.dim() == 1 && b.size(0) == g.K, op, ": bias must have shape (", g.K,
                      ",) (one per output channel), got ", shape_str(b.sizes()));
  FASTOPS_CHECK_TYPE(b.scalar_type() == x.scalar_type(), op, ": bias must have input's dtype ", x.scalar_type(),
                     ", got ", b.scalar_type());
  FASTOPS_CHECK_VALUE(b.device() == x.device(), op, ": bias is on ", b.device(), " but input is on ", x.device());
}

inline void check_conv2d_grad_out(const char* op, const Conv2dGeometry& g, const at::Tensor& x,
                                  const at::Tensor& grad_out) {
  const std::vector<int64_t> expected{g.N, g.K, g.P, g.Q};
  FASTOPS_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(expected), op, ": grad_out must have shape ",
                      shape_str(expected), ", got ", shape_str(grad_out.sizes()));
  FASTOPS_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out must have input's dtype ",
                     x.scalar_type(), ", got ", grad_out.scalar_type());
  FASTOPS_CHECK_VALUE(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(),
                      " but input is on ", x.device());
}

// ---- fused linear + ReLU --------------------------------------------------------------------------

// GEMM letters (design.md): A = x seen as (M, K), B = weight (N, K), C = out (M, N).
struct LinearReluGeometry {
  int64_t M = 0, K = 0, N = 0;
  std::vector<int64_t> out_shape;  // x's shape with the last dim K replaced by N
};

inline LinearReluGeometry check_linear_relu_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                                 const std::optional<at::Tensor>& bias) {
  LinearReluGeometry g;
  FASTOPS_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating tensor, got ", x.scalar_type());
  FASTOPS_CHECK_VALUE(x.dim() >= 1, op, ": x must have shape (*, K), got a 0-d tensor");
  FASTOPS_CHECK_VALUE(weight.dim() == 2, op, ": weight must have shape (N, K), got ", shape_str(weight.sizes()));
  FASTOPS_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ", x.scalar_type(),
                     ", got ", weight.scalar_type());
  FASTOPS_CHECK_VALUE(weight.device() == x.device(), op, ": weight is on ", weight.device(), " but x is on ",
                      x.device());
  g.K = x.size(-1);
  g.N = weight.size(0);
  FASTOPS_CHECK_VALUE(weight.size(1) == g.K, op, ": weight must have shape (N, ", g.K, ") for x of shape ",
                      shape_str(x.sizes()), " (K = x.shape[-1] = ", g.K, "), got ", shape_str(weight.sizes()));
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    FASTOPS_CHECK_VALUE(b.dim() == 1 && b.size(0) == g.N, op, ": bias must have shape (", g.N,
                        ",) (one per output feature), got ", shape_str(b.sizes()));
    FASTOPS_CHECK_TYPE(b.scalar_type() == x.scalar_type(), op, ": bias must have x's dtype ", x.scalar_type(),
                       ", got ", b.scalar_type());
    FASTOPS_CHECK_VALUE(b.device() == x.device(), op, ": bias is on ", b.device(), " but x is on ", x.device());
  }
  g.M = 1;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) {
    g.M *= x.size(i);
    g.out_shape.push_back(x.size(i));
  }
  g.out_shape.push_back(g.N);
  return g;
}

inline void check_linear_relu_bwd_args(const char* op, const LinearReluGeometry& g, const at::Tensor& x,
                                       const at::Tensor& grad_out, const at::Tensor& out) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_out", grad_out}, {"out", out}}) {
    FASTOPS_CHECK_VALUE(t.sizes() == at::IntArrayRef(g.out_shape), op, ": ", name, " must have shape ",
                        shape_str(g.out_shape), ", got ", shape_str(t.sizes()));
    FASTOPS_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                       ", got ", t.scalar_type());
    FASTOPS_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  }
}

// ---- fused linear + cross-entropy ---------------------------------------------------------------

// x (N, H), weight (V, H), bias (V,) or None, target (N,) int64, class_weight (V,) or None.
struct LinearCrossEntropyGeometry {
  int64_t N = 0, H = 0, V = 0;
};

// The one argument contract of linear_cross_entropy_fwd / _bwd (fastops/ops/linear_cross_entropy.py check_op_args
// mirrors it message for message). Target values are checked by the chunk driver (IndexError).
inline LinearCrossEntropyGeometry check_linear_cross_entropy_args(
    const char* op, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& class_weight, double label_smoothing, double softcap,
    double z_loss, int64_t reduction, int64_t chunk_rows) {
  LinearCrossEntropyGeometry g;
  FASTOPS_CHECK_VALUE(x.dim() == 2, op, ": x must have shape (N, H), got ", shape_str(x.sizes()));
  FASTOPS_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating tensor, got ", x.scalar_type());
  FASTOPS_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == x.size(1), op, ": weight must have shape (V, ", x.size(1),
                      ") for x of shape ", shape_str(x.sizes()), ", got ", shape_str(weight.sizes()));
  FASTOPS_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ", x.scalar_type(),
                     ", got ", weight.scalar_type());
  FASTOPS_CHECK_VALUE(weight.device() == x.device(), op, ": weight is on ", weight.device(), " but x is on ",
                      x.device());
  g.N = x.size(0), g.H = x.size(1), g.V = weight.size(0);
  FASTOPS_CHECK_VALUE(g.V >= 1, op, ": weight must have at least one class (row), got shape ",
                      shape_str(weight.sizes()));
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    FASTOPS_CHECK_VALUE(b.dim() == 1 && b.size(0) == g.V, op, ": bias must have shape (", g.V, ",), got ",
                        shape_str(b.sizes()));
    FASTOPS_CHECK_TYPE(b.scalar_type() == x.scalar_type(), op, ": bias must have x's dtype ", x.scalar_type(),
                       ", got ", b.scalar_type());
    FASTOPS_CHECK_VALUE(b.device() == x.device(), op, ": bias is on ", b.device(), " but x is on ", x.device());
  }
  FASTOPS_CHECK_VALUE(target.dim() == 1 && target.size(0) == g.N, op, ": target must have shape (", g.N,
                      ",) for x of shape ", shape_str(x.sizes()), ", got ", shape_str(target.sizes()));
  FASTOPS_CHECK_TYPE(target.scalar_type() == at::kLong, op, ": target must be int64 class indices, got ",
                     target.scalar_type());
  FASTOPS_CHECK_VALUE(target.device() == x.device(), op, ": target is on ", target.device(), " but x is on ",
                      x.device());
  if (class_weight.has_value()) {
    const at::Tensor& w = *class_weight;
    FASTOPS_CHECK_VALUE(w.dim() == 1 && w.size(0) == g.V, op, ": class_weight must have shape (", g.V, ",), got ",
                        shape_str(w.sizes()));
    FASTOPS_CHECK_TYPE(at::isFloatingType(w.scalar_type()), op, ": class_weight must be floating, got ",
                       w.scalar_type());
    FASTOPS_CHECK_VALUE(w.device() == x.device(), op, ": class_weight is on ", w.device(), " but x is on ",
                        x.device());
  }
  FASTOPS_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
                      ": label_smoothing must be between 0.0 and 1.0, got ", label_smoothing);
  FASTOPS_CHECK_VALUE(softcap >= 0.0 && std::isfinite(softcap), op, ": softcap must be >= 0 and finite, got ",
                      softcap);
  FASTOPS_CHECK_VALUE(z_loss >= 0.0 && std::isfinite(z_loss), op, ": z_loss must be >= 0 and finite, got ", z_loss);
  FASTOPS_CHECK_VALUE(reduction >= 0 && reduction <= 2, op, ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
                      reduction);
  FASTOPS_CHECK_VALUE(chunk_rows >= 0, op, ": chunk_rows must be >= 0, got ", chunk_rows);
  return g;
}

// Rows per chunk when chunk_rows is 0: the chunk's logits hold about max(N H, V H) / 2 elements (of
// the order of the GEMM operands, so the chunk's memory is of the order of what the inputs already
// take), never more than the (N, V) logits / 8 (the peak-memory target), at least min(N, 64) rows,
// rounded down to a multiple of 8. Why / 2 and not / 4 (lce_spec.md's first rule): each chunk's GEMMs
// re-pack the whole weight, and on CPU (2 threads, N = 4096, H = 1024, V = 32000) 256-row chunks ran
// forward + backward at 0.85x eager, 512-row chunks at 1.08x (x_c W^T alone: 0.67 s vs 0.35 s).
inline int64_t linear_cross_entropy_chunk_rows(int64_t N, int64_t H, int64_t V, int64_t chunk_rows) {
  if (N == 0) return 1;
  if (chunk_rows > 0) return std::min(chunk_rows, N);
  int64_t rows = std::max(N * H, V * H) / 2 / std::max<int64_t>(V, 1);
  rows = std::min(rows, (N + 7) / 8);
  rows = std::max(rows, std::min<int64_t>(N, 64));
  if (rows >= 8) rows -= rows % 8;
  return std::clamp<int64_t>(rows, 1, N);
}

// ---- Adam / AdamW step ------------------------------------------------------------------------

// Validates one adam_step_ call: list lengths, per-parameter shape/dtype/device agreement, scalar
// ranges (torch.optim.Adam's messages), dense gradients, one-element float32 steps and scalars.
inline void check_adam_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                            double lr, const std::optional<at::Tensor>& lr_tensor, double beta1, double beta2,
                            double weight_decay, double eps, bool amsgrad, const std::optional<at::Tensor>& grad_scale,
                            const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  FASTOPS_CHECK_VALUE(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && state_steps.size() == n,
                      op, ": params, grads, exp_avgs, exp_avg_sqs and state_steps must have the same length, got ", n,
                      ", ", grads.size(), ", ", exp_avgs.size(), ", ", exp_avg_sqs.size(), ", ", state_steps.size());
  FASTOPS_CHECK_VALUE(max_exp_avg_sqs.size() == (amsgrad ? n : 0), op, ": max_exp_avg_sqs must have ",
                      amsgrad ? n : 0, " tensors (amsgrad=", amsgrad, "), got ", max_exp_avg_sqs.size());
  FASTOPS_CHECK_VALUE(lr >= 0.0, op, ": Invalid learning rate: ", lr);
  FASTOPS_CHECK_VALUE(eps >= 0.0, op, ": Invalid epsilon value: ", eps);
  FASTOPS_CHECK_VALUE(beta1 >= 0.0 && beta1 < 1.0, op, ": Invalid beta parameter at index 0: ", beta1);
  FASTOPS_CHECK_VALUE(beta2 >= 0.0 && beta2 < 1.0, op, ": Invalid beta parameter at index 1: ", beta2);
  FASTOPS_CHECK_VALUE(weight_decay >= 0.0, op, ": Invalid weight_decay value: ", weight_decay);
  if (n == 0) return;
  const at::Device dev = params[0].device();
  const at::ScalarType dt = params[0].scalar_type();
  FASTOPS_CHECK_TYPE(at::isFloatingType(dt), op, ": params must be floating, got ", dt);
  auto check_scalar = [&](const char* name, const std::optional<at::Tensor>& t) {
    if (!t.has_value()) return;
    FASTOPS_CHECK_VALUE(t->numel() == 1, op, ": ", name, " must have one element, got shape ", shape_str(t->sizes()));
    FASTOPS_CHECK_VALUE(t->device() == dev, op, ": ", name, " is on ", t->device(), " but params are on ", dev);
    FASTOPS_CHECK_TYPE(at::isFloatingType(t->scalar_type()), op, ": ", name, " must be floating, got ",
                       t->scalar_type());
  };
  check_scalar("lr_tensor", lr_tensor);
  check_scalar("grad_scale", grad_scale);
  check_scalar("found_inf", found_inf);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    FASTOPS_CHECK_VALUE(p.device() == dev, op, ": all params must be on one device; params[0] is on ", dev,
                        " but params[", i, "] is on ", p.device());
    FASTOPS_CHECK_TYPE(p.scalar_type() == dt, op, ": all params must have one dtype; params[0] is ", dt,
                       " but params[", i, "] is ", p.scalar_type());
    FASTOPS_CHECK_VALUE(!grads[i].is_sparse(), op,
                        ": Adam does not support sparse gradients, please consider SparseAdam instead (grads[", i,
                        "])");
    FASTOPS_CHECK_VALUE(p.layout() == at::kStrided, op, ": params[", i, "] must be a strided (dense) tensor");
    // Written in place: an overlapping layout would make the result depend on the element order.
    const std::pair<const char*, const at::Tensor*> written[] = {
        {"params", &p}, {"exp_avgs", &exp_avgs[i]}, {"exp_avg_sqs", &exp_avg_sqs[i]},
        {"max_exp_avg_sqs", amsgrad ? &max_exp_avg_sqs[i] : nullptr}, {"state_steps", &state_steps[i]}};
    for (const auto& [name, t] : written) {
      FASTOPS_CHECK_VALUE(t == nullptr || !may_overlap(*t), op, ": ", name, "[", i,
                          "] has elements that share memory (an expanded or overlapping as_strided view); it is "
                          "written in place, so it must not");
    }
    const std::pair<const char*, const at::Tensor*> same[] = {
        {"grads", &grads[i]}, {"exp_avgs", &exp_avgs[i]}, {"exp_avg_sqs", &exp_avg_sqs[i]},
        {"max_exp_avg_sqs", amsgrad ? &max_exp_avg_sqs[i] : nullptr}};
    for (const auto& [name, t] : same) {
      if (t == nullptr) continue;
      FASTOPS_CHECK_VALUE(t->sizes() == p.sizes(), op, ": ", name, "[", i, "] must have params[", i, "]'s shape ",
                          shape_str(p.sizes()), ", got ", shape_str(t->sizes()));
      FASTOPS_CHECK_TYPE(t->scalar_type() == dt, op, ": ", name, "[", i, "] must have the params' dtype ", dt,
                         ", got ", t->scalar_type());
      FASTOPS_CHECK_VALUE(t->device() == dev, op, ": ", name, "[", i, "] is on ", t->device(),
                          " but params are on ", dev);
    }
    const at::Tensor& s = state_steps[i];
    FASTOPS_CHECK_VALUE(s.numel() == 1 && s.scalar_type() == at::kFloat && s.device() == dev, op, ": state_steps[",
                        i, "] must be a one-element float32 tensor on ", dev, ", got ", s.scalar_type(), " of shape ",
                        shape_str(s.sizes()), " on ", s.device());
  }
}

}  // namespace fastops
