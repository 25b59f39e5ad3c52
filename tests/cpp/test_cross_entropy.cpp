// C++ test of the fastops cross-entropy ops, called through the dispatcher (as torch.ops.fastops
// calls them) on random CPU tensors and checked against ATen run in float64 on the same inputs:
//   fastops::cross_entropy_fwd  -> (loss, stats)  vs  at::cross_entropy_loss(reduction=None), at::amax and
//                                  at::logsumexp (stats[0] is the row max, stats[0] + stats[1] the lse)
//   fastops::cross_entropy_bwd  -> d loss/d logits  vs  autograd of at::cross_entropy_loss
//   fastops::cross_entropy_bwd_ -> the same, written over the logits
// over (C,), (N, C) and (N, C, d1..dk) logits, float32 and float64, with/without class weights and
// label smoothing, class-index targets (some rows ignored) and class-probability targets.
//
// Run by ctest with FASTOPS_POISON=1 (outputs start as NaN, so an unwritten element fails).
// Fresh random inputs each run; FASTOPS_SEED=<n> replays a run (the seed is printed).
// Exit status: 0 when every check passes, 1 otherwise, with one line per failed check.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/Reduction.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

using FwdFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                 const std::optional<at::Tensor>&, int64_t, double);
using BwdFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                         const at::Tensor&, int64_t, double);
using BwdInplaceFn = void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                          const at::Tensor&, int64_t, double);

int g_failures = 0;
int g_checks = 0;
double g_worst_f32 = 0, g_worst_f64 = 0;  // max |error| / tolerance among passing checks

void fail(const std::string& what) {
  ++g_failures;
  std::fprintf(stderr, "FAIL %s\n", what.c_str());
}

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// Tolerance: |got - want| <= rtol |want| + atol elementwise, and NaN where (only where) want is NaN.
struct Tol {
  double rtol, atol;
};

// Unit roundoff of the kernel's dtype.
double unit(at::ScalarType t) { return t == at::kDouble ? 0x1p-53 : 0x1p-24; }

// The inputs' own rounding bounds the achievable accuracy: loss = lse - x_y and p = exp(x - lse)
// cancel terms of size max|x| (~100 here), so the absolute floor is a few ulps of max|x| times the
// factor the result carries (weights, upstream gradient), widened for long class sums (the rounding
// of a sum over C terms grows with C; 16 ulps hold up to C = 16). The relative part is 16 ulps.
Tol tol_for(at::ScalarType t, double term_scale, int64_t classes = 1) {
  const double sum_growth = std::max(1.0, std::log2(static_cast<double>(classes)) / 4);
  return Tol{16 * unit(t), 16 * unit(t) * term_scale * sum_growth};
}

// "" when `got` matches `want`, else what differs (shape, dtype, or the first bad element).
std::string mismatch(const at::Tensor& got, const at::Tensor& want, at::ScalarType dtype, Tol tol) {
  if (got.sizes() != want.sizes()) return "shape " + shape_str(got.sizes()) + " != " + shape_str(want.sizes());
  if (got.scalar_type() != dtype) return std::string("dtype ") + c10::toString(got.scalar_type()) + " != " + c10::toString(dtype);
  if (got.numel() == 0) return "";
  const at::Tensor g = got.detach().to(at::kDouble).reshape(-1), w = want.detach().to(at::kDouble).reshape(-1);
  const at::Tensor bad = ((g - w).abs() > tol.rtol * w.abs() + tol.atol) | (g.isnan() != w.isnan());
  const int64_t nbad = bad.sum().item<int64_t>();
  if (nbad == 0) return "";
  const int64_t i = bad.to(at::kInt).argmax().item<int64_t>();
  std::ostringstream o;
  o.precision(10);
  o << nbad << " of " << g.numel() << " elements differ; first at flat index " << i << ": got " << g[i].item<double>()
    << ", want " << w[i].item<double>() << " (rtol " << tol.rtol << ", atol " << tol.atol << ")";
  return o.str();
}

void expect_close(const std::string& what, const at::Tensor& got, const at::Tensor& want, at::ScalarType dtype,
                  double term_scale, int64_t classes) {
  ++g_checks;
  const Tol tol = tol_for(dtype, term_scale, classes);
  const std::string m = mismatch(got, want, dtype, tol);
  if (!m.empty()) {
    fail(what + ": " + m);
  } else if (got.numel() > 0) {  // how close to the tolerance the passing results come, per dtype
    const at::Tensor w = want.detach().to(at::kDouble);
    const double r = ((got.detach().to(at::kDouble) - w).abs() / (tol.rtol * w.abs() + tol.atol))
                         .nan_to_num(0.0, 0.0, 0.0).max().item<double>();
    double& worst = dtype == at::kDouble ? g_worst_f64 : g_worst_f32;
    worst = std::max(worst, r);
  }
}

struct Case {
  std::vector<int64_t> shape;  // logits
  at::ScalarType dtype;
  bool weight;
  double label_smoothing;
  bool probs;                  // class-probability target instead of class indices
  int64_t ignore_index;

  std::string name() const {
    std::ostringstream o;
    o << "logits " << shape_str(shape) << " " << c10::toString(dtype) << (weight ? " weight" : "")
      << " label_smoothing=" << label_smoothing << (probs ? " prob-target" : " index-target")
      << " ignore_index=" << ignore_index;
    return o.str();
  }
};

struct Ops {
  c10::TypedOperatorHandle<FwdFn> fwd;
  c10::TypedOperatorHandle<BwdFn> bwd;
  c10::TypedOperatorHandle<BwdInplaceFn> bwd_inplace;
};

Ops find_ops() {
  auto& d = c10::Dispatcher::singleton();
  return Ops{d.findSchemaOrThrow("fastops::cross_entropy_fwd", "").typed<FwdFn>(),
             d.findSchemaOrThrow("fastops::cross_entropy_bwd", "").typed<BwdFn>(),
             d.findSchemaOrThrow("fastops::cross_entropy_bwd_", "").typed<BwdInplaceFn>()};
}

void run_case(const Ops& ops, const Case& c) {
  const std::string name = c.name();
  const auto opts = at::TensorOptions().dtype(c.dtype);
  const int64_t cdim = c.shape.size() == 1 ? 0 : 1;
  const int64_t C = c.shape[cdim];
  std::vector<int64_t> row_shape = c.shape;
  row_shape.erase(row_shape.begin() + cdim);

  // Logits far from 0 (an offset of 100 overflows exp in float32 without max subtraction), and a
  // spread wide enough that some rows are dominated by one class.
  const at::Tensor x = at::randn(c.shape, opts) * 4 + 100;
  at::Tensor target;
  if (c.probs) {
    target = at::softmax(at::randn(c.shape, at::kDouble) * 2, cdim).to(c.dtype);
  } else {
    target = at::randint(0, C, row_shape, at::kLong);
    target.masked_fill_(at::rand(row_shape, at::kDouble) < 0.15, c.ignore_index);
  }
  std::optional<at::Tensor> weight;
  if (c.weight) weight = at::rand({C}, opts) * 1.5 + 0.5;
  const at::Tensor grad_loss = at::randn(row_shape, opts);

  // Reference: ATen in float64 on the same values.
  const at::Tensor x64 = x.to(at::kDouble).requires_grad_(true);
  const at::Tensor target64 = c.probs ? target.to(at::kDouble) : target;
  std::optional<at::Tensor> weight64;
  if (weight) weight64 = weight->to(at::kDouble);
  const at::Tensor loss_ref = at::cross_entropy_loss(x64, target64, weight64, at::Reduction::None, c.ignore_index,
                                                     c.label_smoothing);
  const at::Tensor lse_ref = at::logsumexp(x64.detach(), {cdim});
  loss_ref.backward(grad_loss.to(at::kDouble));
  const at::Tensor grad_ref = x64.grad();

  at::Tensor loss, stats;
  try {
    std::tie(loss, stats) = ops.fwd.call(x, target, weight, c.ignore_index, c.label_smoothing);
  } catch (const c10::Error& e) {
    fail(name + ": cross_entropy_fwd threw: " + e.what_without_backtrace());
    return;
  }
  const double xmax = x.abs().max().item<double>();
  const double wmax = weight ? std::max(1.0, weight->max().item<double>()) : 1.0;
  const double gmax = grad_loss.numel() ? grad_loss.abs().max().item<double>() : 0.0;
  expect_close("cross_entropy_fwd loss, " + name, loss, loss_ref, c.dtype, xmax * wmax, C);
  // stats = (row max, log sum exp(x - max)); their sum is the log-sum-exp.
  if (stats.dim() < 1 || stats.size(0) != 2) {
    fail(name + ": cross_entropy_fwd stats must have a leading dim of 2");
    return;
  }
  expect_close("cross_entropy_fwd stats[0] (row max), " + name, stats[0], at::amax(x.detach(), {cdim}).to(at::kDouble),
               c.dtype, xmax, 1);
  expect_close("cross_entropy_fwd stats[0] + stats[1] (lse), " + name, stats[0] + stats[1], lse_ref, c.dtype, xmax,
               C);

  try {
    const at::Tensor grad = ops.bwd.call(grad_loss, x, target, weight, stats, c.ignore_index, c.label_smoothing);
    expect_close("cross_entropy_bwd, " + name, grad, grad_ref, c.dtype, xmax * wmax * gmax, C);
    at::Tensor inplace = x.clone();
    ops.bwd_inplace.call(grad_loss, inplace, target, weight, stats, c.ignore_index, c.label_smoothing);
    expect_close("cross_entropy_bwd_ (in place), " + name, inplace, grad_ref, c.dtype, xmax * wmax * gmax, C);
  } catch (const c10::Error& e) {
    fail(name + ": cross_entropy_bwd threw: " + e.what_without_backtrace());
  }
}

// A checker that cannot fail is a defect: mismatch() must reject each of these wrong results.
void check_the_checker() {
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    const at::Tensor want = at::randn({7, 33}, at::kDouble) * 3;
    const at::Tensor good = want.to(dtype);
    const double wmax = want.abs().max().item<double>();
    const Tol tol = tol_for(dtype, wmax);
    struct Wrong {
      const char* what;
      at::Tensor got;
    };
    std::vector<Wrong> wrongs;
    wrongs.push_back({"one element off by 1e-4 x max|want|", good.clone()});
    wrongs.back().got[3][5].add_(1e-4 * wmax);
    wrongs.push_back({"one element NaN (unwritten under FASTOPS_POISON)", good.clone()});
    wrongs.back().got[6][32].fill_(std::numeric_limits<double>::quiet_NaN());
    wrongs.push_back({"one element +inf", good.clone()});
    wrongs.back().got[0][0].fill_(std::numeric_limits<double>::infinity());
    wrongs.push_back({"all shifted by 1e-4 x max|want|", good + 1e-4 * wmax});
    wrongs.push_back({"rows swapped", good.flip(0)});
    wrongs.push_back({"transposed shape", good.reshape({33, 7})});
    wrongs.push_back({"wrong dtype", want.to(dtype == at::kFloat ? at::kDouble : at::kFloat)});
    ++g_checks;
    if (!mismatch(good, want, dtype, tol).empty()) fail("checker rejects a correct result");
    for (const auto& w : wrongs) {
      ++g_checks;
      if (mismatch(w.got, want, dtype, tol).empty()) {
        fail(std::string("checker accepts a wrong result (") + w.what + ", " + c10::toString(dtype) + ")");
      }
    }
  }
}

// Bad input must raise a c10::Error of the right kind before any kernel reads out of bounds.
template <typename E, typename F>
void expect_throws(const std::string& what, F&& f) {
  ++g_checks;
  try {
    f();
  } catch (const E&) {
    return;
  } catch (const c10::Error& e) {
    fail(what + ": threw the wrong c10::Error kind: " + e.what_without_backtrace());
    return;
  }
  fail(what + ": did not throw");
}

void check_bad_inputs(const Ops& ops) {
  const at::Tensor x = at::randn({4, 5});
  const at::Tensor y = at::tensor(std::vector<int64_t>{0, 1, 5, 2});
  expect_throws<c10::IndexError>("class index == C", [&] { ops.fwd.call(x, y, std::nullopt, -100, 0.0); });
  const at::Tensor yneg = at::tensor(std::vector<int64_t>{0, -1, 2, 3});
  expect_throws<c10::IndexError>("class index -1", [&] { ops.fwd.call(x, yneg, std::nullopt, -100, 0.0); });
  const at::Tensor yok = at::tensor(std::vector<int64_t>{0, 1, 2, 3});
  expect_throws<c10::ValueError>("weight of the wrong length",
                                 [&] { ops.fwd.call(x, yok, at::ones({4}), -100, 0.0); });
  expect_throws<c10::ValueError>("target of the wrong shape",
                                 [&] { ops.fwd.call(x, at::zeros({5}, at::kLong), std::nullopt, -100, 0.0); });
  expect_throws<c10::TypeError>("int32 target", [&] { ops.fwd.call(x, yok.to(at::kInt), std::nullopt, -100, 0.0); });
  expect_throws<c10::ValueError>("label_smoothing > 1", [&] { ops.fwd.call(x, yok, std::nullopt, -100, 1.5); });
}

}  // namespace

int main() {
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("FASTOPS_SEED")) seed = std::strtoull(s, nullptr, 10);
  at::manual_seed(seed);
  std::printf("fastops C++ cross-entropy test: seed %llu (FASTOPS_SEED=%llu replays), %d threads\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed), at::get_num_threads());

  Ops ops = [] {
    try {
      return find_ops();
    } catch (const c10::Error& e) {
      std::fprintf(stderr,
                   "FAIL the fastops ops are not registered (%s): libfastops.so must be linked with "
                   "-Wl,--no-as-needed so that its static registrars run\n",
                   e.what_without_backtrace());
      std::exit(1);
    }
  }();

  check_the_checker();
  check_bad_inputs(ops);

  // (C,); (N, C) small, one class, and C above the kernel's 2048-float L1 block; (N, C, d) with d not
  // a multiple of the SIMD width; (N, C, d1, d2).
  const std::vector<std::vector<int64_t>> shapes = {{13}, {9, 7}, {4, 1}, {37, 3001}, {6, 11, 29}, {3, 5, 4, 7}};
  int cases = 0;
  for (const auto& shape : shapes) {
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      for (const bool weight : {false, true}) {
        for (const double eps : {0.0, 0.1}) {
          for (const bool probs : {false, true}) {
            // A valid class as ignore_index too (ATen ignores those targets as well); ATen takes
            // only the default -100 with probability targets.
            const bool valid_ignore = !probs && cases % 3 == 2 && shape[shape.size() == 1 ? 0 : 1] > 1;
            const Case c{shape, dtype, weight, eps, probs, valid_ignore ? 1 : -100};
            try {
              run_case(ops, c);
            } catch (const c10::Error& e) {
              fail(c.name() + ": the ATen reference threw: " + e.what_without_backtrace());
            }
            ++cases;
          }
        }
      }
    }
  }

  if (g_failures) {
    std::fprintf(stderr, "%d of %d checks FAILED (%d op cases; seed %llu)\n", g_failures, g_checks, cases,
                 static_cast<unsigned long long>(seed));
    return 1;
  }
  std::printf("all %d checks passed (%d op cases); worst error / tolerance: float32 %.3f, float64 %.3f\n", g_checks,
              cases, g_worst_f32, g_worst_f64);
  return 0;
}
