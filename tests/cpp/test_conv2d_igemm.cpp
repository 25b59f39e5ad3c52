// Host test of the conv2d tensor-core implicit GEMM (csrc/cuda/conv2d_igemm.cuh) without a GPU.
//
// conv2d_implicit_gemm_wmma_kernel (csrc/cuda/conv2d.cu) is: per block, per reduction step, every thread
// calls TcStage::load and TcStage::store; each warp multiplies WMMA fragments loaded from the
// staged tiles at TcStage::a_off / b_off with ldm kLda / kLdb and the kARowMajor / kBRowMajor
// layouts; the accumulators go through store_acc, then (split-K) reduce_splits. This program runs
// that same walk on the host with the same functions, replacing only the fragment loads and
// mma_sync by the documented WMMA element mapping (row_major: element (i, j) at ptr[i ld + j];
// col_major: at ptr[i + j ld]) and a float multiply-add. Staged tiles start as NaN each step, so
// an element a fragment reads but no thread wrote poisons the result.
//
// Checked against ATen in float64 (at::convolution and at::convolution_backward on the same
// float16 / bfloat16 values) for forward (+ bias, + ReLU), dgrad and wgrad, over strides,
// dilations, asymmetric padding, groups, depthwise, 1x1 and 7x7, partial tiles, the vector and the
// per-element gathers, and split-K plans from 1 to many splits.
//
// Exit status 0 when every check passes, 1 otherwise (one line per failure).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda/conv2d_igemm.cuh"

namespace {

using namespace fastops::igemm;

int g_failures = 0;
int g_split_runs = 0;  // emulations whose plan split the reduction (the split-K path must be exercised)

// Runs the kernel's grid on the host. sms steers plan_splits as the device's SM count would.
template <typename Op>
void emulate(const Op& op, int G, int sms) {
  using T = typename Op::T;
  using Stage = TcStage<Op>;
  const SplitPlan plan = plan_splits(op.M, op.Nc, op.Kr, G, sms);
  if (plan.splits > 1) ++g_split_runs;
  std::vector<float> ws;
  if (plan.splits > 1) ws.assign(size_t(plan.splits) * G * op.M * op.Nc, std::numeric_limits<float>::quiet_NaN());
  float* wsp = plan.splits > 1 ? ws.data() : nullptr;
  const int gx = (op.M + kTcM - 1) / kTcM, gy = (op.Nc + kTcN - 1) / kTcN, gz = G * plan.splits;
  std::vector<T> As(Stage::kASize), Bs(Stage::kBSize);
  std::vector<float> acc(size_t(kTcM) * kTcN);
  for (int bz = 0; bz < gz; ++bz) {
    const int g = bz / plan.splits, split = bz % plan.splits;
    int kbeg, kend;
    split_range(op.Kr, plan.chunk, split, kbeg, kend);
    for (int bx = 0; bx < gx; ++bx) {
      for (int by = 0; by < gy; ++by) {
        const int m0 = bx * kTcM, n0 = by * kTcN;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int k0 = kbeg; k0 < kend; k0 += kTcK) {
          std::fill(As.begin(), As.end(), T(std::numeric_limits<float>::quiet_NaN()));
          std::fill(Bs.begin(), Bs.end(), T(std::numeric_limits<float>::quiet_NaN()));
          for (int tid = 0; tid < kTcThreads; ++tid) {
            typename Stage::Regs r;
            Stage::load(op, tid, m0, n0, k0, kend, g, r);
            Stage::store(r, tid, As.data(), Bs.data());
          }
          for (int warp = 0; warp < kTcWarps; ++warp) {
            const int wm = warp_m(warp), wn = warp_n(warp);
            for (int kk = 0; kk < kTcK; kk += kFrag) {
              for (int a = 0; a < kWarpM / kFrag; ++a) {
                const T* pa = As.data() + Stage::a_off(wm + kFrag * a, kk);
                for (int b = 0; b < kWarpN / kFrag; ++b) {
                  const T* pb = Bs.data() + Stage::b_off(kk, wn + kFrag * b);
                  for (int i = 0; i < kFrag; ++i) {
                    for (int j = 0; j < kFrag; ++j) {
                      float s = acc[size_t(wm + kFrag * a + i) * kTcN + wn + kFrag * b + j];
                      for (int k = 0; k < kFrag; ++k) {
                        const float av = static_cast<float>(Stage::kARowMajor ? pa[i * Stage::kLda + k]
                                                                               : pa[i + k * Stage::kLda]);
                        const float bv = static_cast<float>(Stage::kBRowMajor ? pb[k * Stage::kLdb + j]
                                                                               : pb[k + j * Stage::kLdb]);
                        s += av * bv;
                      }
                      acc[size_t(wm + kFrag * a + i) * kTcN + wn + kFrag * b + j] = s;
                    }
                  }
                }
              }
            }
          }
        }
        for (int i = 0; i < kTcM; ++i) {
          for (int j = 0; j < kTcN; ++j) store_acc(op, wsp, split, g, G, m0 + i, n0 + j, acc[size_t(i) * kTcN + j]);
        }
      }
    }
  }
  if (plan.splits > 1) {
    for (int64_t e = 0; e < int64_t(G) * op.M * op.Nc; ++e) reduce_splits(op, wsp, plan.splits, G, e);
  }
}

struct Case {
  int N, C, H, W, K, R, S, sh, sw, ph, pw, dh, dw, G;
  bool bias, relu;
};

TcParams params_of(const Case& c, int P, int Q) {
  return {c.N, c.C, c.H, c.W, c.K, P, Q, c.R, c.S, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, c.C / c.G, c.K / c.G, c.G};
}

// |got - ref| <= eps |ref| + tiny + 1e-5 scale elementwise: eps |ref| and tiny (the dtype's subnormal
// spacing: a float16 result below 6.1e-5 is rounded on a fixed 2^-24 grid) bound the one rounding
// to the output dtype; 1e-5 scale (scale = the summed magnitudes) bounds the float accumulation.
void expect_close(const std::string& what, const at::Tensor& got, const at::Tensor& ref, const at::Tensor& scale,
                  double eps) {
  const at::Tensor g = got.to(at::kDouble), diff = (g - ref).abs();
  const double tiny = got.scalar_type() == at::kHalf ? std::ldexp(1.0, -24) : std::ldexp(1.0, -133);
  const at::Tensor bound = ref.abs() * eps + scale * 1e-5 + tiny;
  const bool finite = g.isfinite().all().item<bool>();
  const bool ok = finite && (diff <= bound).all().item<bool>();
  if (!ok) {
    ++g_failures;
    const int64_t worst = (diff - bound).flatten().argmax().item<int64_t>();
    std::printf("FAIL %s: finite=%d, worst element %lld: got %.6g, expected %.6g (bound %.3g)\n", what.c_str(),
                int(finite), static_cast<long long>(worst), g.flatten()[worst].item<double>(),
                ref.flatten()[worst].item<double>(), bound.flatten()[worst].item<double>());
  }
}

template <typename T>
void run_case(const Case& c, int sms, bool allow_vec, at::ScalarType dtype, const char* dname) {
  const double eps = dtype == at::kHalf ? std::ldexp(1.0, -10) : std::ldexp(1.0, -7);
  const int Cg = c.C / c.G, Kg = c.K / c.G;
  const auto o16 = at::TensorOptions().dtype(dtype);
  const at::Tensor x = at::randn({c.N, c.C, c.H, c.W}).to(dtype).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = at::randn({c.K, Cg, c.R, c.S}).to(dtype).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor b = at::randn({c.K}).to(dtype);
  const std::vector<int64_t> st{c.sh, c.sw}, pad{c.ph, c.pw}, dil{c.dh, c.dw};
  const at::Tensor x64 = x.to(at::kDouble), w64 = w.to(at::kDouble), b64 = b.to(at::kDouble);
  at::Tensor ref = at::convolution(x64, w64, c.bias ? b64 : at::Tensor(), st, pad, dil, false, {0, 0}, c.G);
  const at::Tensor scale = at::convolution(x64.abs(), w64.abs(), c.bias ? b64.abs() : at::Tensor(), st, pad, dil,
                                           false, {0, 0}, c.G);
  if (c.relu) ref = ref.clamp_min(0);
  const int P = static_cast<int>(ref.size(2)), Q = static_cast<int>(ref.size(3));
  const TcParams p = params_of(c, P, Q);
  char tag[200];
  std::snprintf(tag, sizeof tag, "%s N%d C%d %dx%d K%d %dx%d s%d,%d p%d,%d d%d,%d G%d bias%d relu%d sms%d vec%d",
                dname, c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, c.G, int(c.bias),
                int(c.relu), sms, int(allow_vec));
  const auto nan = std::numeric_limits<double>::quiet_NaN();

  {  // forward
    at::Tensor y = at::full({c.N, c.K, P, Q}, nan, o16).contiguous(at::MemoryFormat::ChannelsLast);
    FwdTc<T> op{};
    op.x = x.const_data_ptr<T>(), op.w = w.const_data_ptr<T>(), op.bias = c.bias ? b.const_data_ptr<T>() : nullptr;
    op.y = y.mutable_data_ptr<T>(), op.p = p, op.relu = c.relu;
    op.M = c.N * P * Q, op.Nc = Kg, op.Kr = Cg * c.R * c.S;
    op.vec_a = op.vec_b = allow_vec && Cg % 8 == 0;
    emulate(op, c.G, sms);
    expect_close(std::string("forward ") + tag, y, ref, scale, eps);
  }
  // backward, against at::convolution_backward on the same 16-bit values
  const at::Tensor dy = at::randn({c.N, c.K, P, Q}).to(dtype).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor dy64 = dy.to(at::kDouble);
  const auto grads = at::convolution_backward(dy64, x64, w64, std::nullopt, st, pad, dil, false, {0, 0}, c.G,
                                              {true, true, false});
  const auto gscale = at::convolution_backward(dy64.abs(), x64.abs(), w64.abs(), std::nullopt, st, pad, dil, false,
                                               {0, 0}, c.G, {true, true, false});
  {  // dgrad
    at::Tensor dx = at::full({c.N, c.C, c.H, c.W}, nan, o16).contiguous(at::MemoryFormat::ChannelsLast);
    DgradTc<T> op{};
    op.dy = dy.const_data_ptr<T>(), op.w = w.const_data_ptr<T>(), op.dx = dx.mutable_data_ptr<T>(), op.p = p;
    op.M = c.N * c.H * c.W, op.Nc = Cg, op.Kr = Kg * c.R * c.S;
    op.vec_a = allow_vec && Kg % 8 == 0;
    op.vec_b = allow_vec && Cg % 8 == 0;
    emulate(op, c.G, sms);
    expect_close(std::string("dgrad ") + tag, dx, std::get<0>(grads), std::get<0>(gscale), eps);
  }
  {  // wgrad
    at::Tensor dw = at::full({c.K, Cg, c.R, c.S}, nan, o16).contiguous(at::MemoryFormat::ChannelsLast);
    WgradTc<T> op{};
    op.dy = dy.const_data_ptr<T>(), op.x = x.const_data_ptr<T>(), op.dw = dw.mutable_data_ptr<T>(), op.p = p;
    op.M = Kg, op.Nc = Cg * c.R * c.S, op.Kr = c.N * P * Q;
    op.vec_a = allow_vec && Kg % 8 == 0;
    op.vec_b = allow_vec && Cg % 8 == 0;
    emulate(op, c.G, sms);
    expect_close(std::string("wgrad ") + tag, dw, std::get<1>(grads), std::get<1>(gscale), eps);
  }
}

// A deliberately wrong gather must fail the comparison (the check can fail).
void self_check() {
  const Case c{1, 8, 6, 6, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, false, false};
  const at::Tensor x = at::randn({1, 8, 6, 6}).to(at::kHalf).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = at::randn({8, 8, 3, 3}).to(at::kHalf).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x64 = x.to(at::kDouble), w64 = w.to(at::kDouble);
  const at::Tensor ref = at::conv2d(x64, w64, {}, {1, 1}, {1, 1});
  at::Tensor y = at::empty({1, 8, 6, 6}, at::kHalf).contiguous(at::MemoryFormat::ChannelsLast);
  FwdTc<at::Half> op{};
  op.x = x.const_data_ptr<at::Half>(), op.w = w.const_data_ptr<at::Half>(), op.y = y.mutable_data_ptr<at::Half>();
  op.p = params_of(c, 6, 6);
  op.p.pw = 0;  // wrong padding: a shifted gather
  op.M = 36, op.Nc = 8, op.Kr = 72, op.vec_a = op.vec_b = true;
  emulate(op, 1, 1);
  const int before = g_failures;
  expect_close("self-check (expected to fail)", y, ref, ref.abs(), 1e-3);
  if (g_failures == before) {
    std::printf("FAIL self-check: a wrong gather passed the comparison\n");
    ++g_failures;
  } else {
    g_failures = before;
    std::printf("self-check: a wrong gather is rejected, as it must be\n");
  }
}

}  // namespace

int main() {
  const uint64_t seed = std::random_device{}();
  at::manual_seed(seed);
  std::printf("test_conv2d_igemm: seed %llu\n", static_cast<unsigned long long>(seed));
  self_check();
  // N C H W K R S sh sw ph pw dh dw G bias relu
  const std::vector<Case> cases = {
      {2, 16, 9, 9, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false},     // 3x3 same, vector gathers
      {1, 3, 11, 11, 16, 7, 7, 2, 2, 3, 3, 1, 1, 1, true, true},     // RGB stem: per-element gathers
      {2, 32, 8, 8, 32, 3, 3, 2, 2, 1, 1, 1, 1, 2, false, true},     // groups 2, stride 2
      {2, 16, 7, 7, 16, 3, 3, 1, 1, 1, 1, 1, 1, 16, true, false},    // depthwise
      {1, 8, 10, 7, 8, 3, 5, 2, 1, 2, 1, 2, 1, 1, false, false},     // dilation, asymmetric everything
      {3, 24, 5, 5, 40, 1, 1, 1, 1, 0, 0, 1, 1, 1, true, true},      // 1x1, partial N tile
      {2, 16, 6, 6, 12, 3, 3, 1, 1, 0, 0, 1, 1, 1, false, false},    // Kg % 8 != 0 with Cg % 8 == 0
      {2, 8, 12, 12, 72, 3, 3, 1, 1, 1, 1, 1, 1, 1, true, false},    // 3 M tiles, 2 N tiles
      {1, 64, 4, 4, 16, 2, 2, 3, 3, 0, 1, 1, 2, 1, false, false},    // stride 3 > kernel: dgrad gaps
      {4, 8, 9, 9, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, false, false},      // wgrad Kr = 324: several splits
  };
  for (const Case& c : cases) {
    for (int sms : {1, 7, 64}) {
      run_case<at::Half>(c, sms, true, at::kHalf, "float16");
    }
    run_case<at::Half>(c, 7, false, at::kHalf, "float16");
    run_case<at::BFloat16>(c, 7, true, at::kBFloat16, "bfloat16");
  }
  std::printf("test_conv2d_igemm: %d GEMMs ran split-K\n", g_split_runs);
  if (g_split_runs == 0) {
    std::printf("FAIL no case exercised split-K\n");
    ++g_failures;
  }
  if (g_failures == 0) std::printf("test_conv2d_igemm: all %zu cases passed\n", cases.size());
  return g_failures == 0 ? 0 : 1;
}
