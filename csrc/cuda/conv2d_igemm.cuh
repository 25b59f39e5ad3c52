// Conv2d tensor-core implicit GEMM (float16 / bfloat16, NHWC): the operand gathers, the tile staging
// and the split-K bookkeeping, written once as host-and-device code.
//
// Why a separate header: everything here except the WMMA calls is plain index arithmetic, so it is
// compiled both into the CUDA kernel (csrc/cuda/conv2d.cu) and into a host program
// (tests/cpp/test_conv2d_igemm.cpp) that runs the kernel's exact tile walk with a scalar stand-in
// for the WMMA fragments and checks the result against ATen's conv2d. The gathers, the vector fast
// paths, the shared-memory layouts and fragment addressing, split-K ranges and the epilogue are
// therefore tested on any machine, GPU or not.
//
// Layouts (NHWC is the fast layout: the GEMM reduction runs along channels, which are contiguous):
//   x  (N, C, H, W) channels_last  = memory [N][H][W][C]
//   w  (K, Cg, R, S) channels_last = memory [K][R][S][Cg]      (Cg = C / G, Kg = K / G, group g)
//   y  (N, K, P, Q) channels_last  = memory [N][P][Q][K]
// The three passes, per group, as C (M x Nc) = A (M x Kr) B (Kr x Nc):
//   forward  m = (n, p, q)  n' = k            kr = (r, s, c)   A = x gathered,  B[kr][k] = w[k][kr]
//   dgrad    m = (n, h, w)  n' = c            kr = (r, s, k)   A = dy gathered, B[kr][c] = w[k][r][s][c]
//   wgrad    m = k          n' = (r, s, c)    kr = (n, p, q)   A[k][t] = dy[t][k], B = x gathered
// hi = p sh - ph + r dh, wi = q sw - pw + s dw; in dgrad p = (h + ph - r dh) / sh when that divides
// exactly and lands in [0, P) (likewise q), otherwise the A element is zero.
//
// Vectors: every operand has one direction along which 8 neighbours are 8 consecutive memory
// elements (one 16-byte load) when the channel counts are multiples of 8: A along kr (forward,
// dgrad) or m (wgrad); B along kr (forward) or n' (dgrad, wgrad). With Cg (resp. Kg) % 8 == 0 and
// a vector starting at a multiple of 8, its 8 elements share one pixel and one (r, s), so the image
// bounds test is one test per vector. Other shapes (the RGB stem, depthwise) take the per-element
// path of the same kernel.
//
// Block tile kTcM x kTcN, reduction step kTcK, kTcThreads threads = 4 warps in 2 x 2, each warp
// 64 x 32 = 4 x 2 WMMA 16x16x16 fragments with float accumulators. Shared memory holds each
// operand with its vector direction contiguous, rows padded by 8 elements (16 bytes) so that
// fragment loads of consecutive rows start in different banks; all fragment pointers are 32-byte
// aligned as load_matrix_sync requires (checked by static_asserts below).
//
// Split-K: blockIdx.z = g * splits + split; split s reduces kr in [s chunk, min(Kr, (s+1) chunk))
// (chunk a multiple of kTcK) and writes float partials to a workspace [splits][G][M][Nc]; a second
// kernel sums the splits in order (deterministic) and applies the epilogue. With splits == 1 the
// epilogue is applied directly.
//
// Index types: GEMM coordinates and image coordinates are int (the host takes this path only when
// every extent fits in int with room for a tile), memory offsets are int64.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define FASTOPS_HD __host__ __device__ __forceinline__
#else
#define FASTOPS_HD inline
#endif

namespace fastops {
namespace igemm {

constexpr int kTcM = 128, kTcN = 64, kTcK = 32, kTcThreads = 128, kTcWarps = kTcThreads / 32;
constexpr int kVec = 8;     // elements per 16-byte vector of a 16-bit type
constexpr int kPad = 8;     // row padding of the shared-memory tiles, in elements
constexpr int kFrag = 16;   // WMMA m = n = k
constexpr int kWarpM = 64, kWarpN = 32;  // one warp's share of the block tile
static_assert(kTcWarps == (kTcM / kWarpM) * (kTcN / kWarpN), "warps must cover the block tile");

// int is enough for every GEMM / image coordinate on this path (the host checks); offsets are int64.
struct TcParams {
  int N, C, H, W, K, P, Q, R, S, sh, sw, ph, pw, dh, dw, Cg, Kg, G;
};

template <typename T>
struct alignas(16) Vec8 {
  T v[kVec];
};

template <typename T>
FASTOPS_HD Vec8<T> zero_vec() {
  Vec8<T> z;
#pragma unroll
  for (int i = 0; i < kVec; ++i) z.v[i] = T(0.f);
  return z;
}

template <typename T>
FASTOPS_HD Vec8<T> load_vec(const T* p) {
  return *reinterpret_cast<const Vec8<T>*>(p);
}

// ---- the three GEMMs ---------------------------------------------------------------------------
// Each op gives: M, Nc, Kr; kAContigM / kBContigN (the vector direction of A / B); vec_a / vec_b
// (the vector fast path is valid: channel counts % 8 == 0 and 16-byte-aligned bases);
// a(m, kr, g) and b(kr, n, g) single elements (0 outside the image); a_vec / b_vec: the address of
// the 8 consecutive elements starting there, or nullptr when they are all padding zeros (only
// called when vec_a / vec_b hold and the whole vector is inside M / Nc / Kr); store(m, n, g, v):
// the epilogue.

template <typename T_>
struct FwdTc {
  using T = T_;
  static constexpr bool kAContigM = false;  // A[m][kr]: kr = (r, s, c), c contiguous
  static constexpr bool kBContigN = false;  // B[kr][k] = w[k][kr]: kr contiguous
  const T* x;
  const T* w;
  const T* bias;  // (K,) or null
  T* y;
  TcParams p;
  int M, Nc, Kr;
  bool relu, vec_a, vec_b;

  FASTOPS_HD int64_t pixel(int m, int r, int s, bool& inside) const {
    const int q = m % p.Q, t = m / p.Q, pp = t % p.P, n = t / p.P;
    const int hi = pp * p.sh - p.ph + r * p.dh, wi = q * p.sw - p.pw + s * p.dw;
    inside = hi >= 0 && hi < p.H && wi >= 0 && wi < p.W;
    return ((int64_t(n) * p.H + hi) * p.W + wi) * p.C;
  }
  FASTOPS_HD T a(int m, int kr, int g) const {
    const int c = kr % p.Cg, rs = kr / p.Cg, s = rs % p.S, r = rs / p.S;
    bool inside;
    const int64_t off = pixel(m, r, s, inside);
    return inside ? x[off + g * p.Cg + c] : T(0.f);
  }
  FASTOPS_HD const T* a_vec(int m, int kr, int g) const {
    const int c = kr % p.Cg, rs = kr / p.Cg, s = rs % p.S, r = rs / p.S;
    bool inside;
    const int64_t off = pixel(m, r, s, inside);
    return inside ? x + off + g * p.Cg + c : nullptr;
  }
  FASTOPS_HD T b(int kr, int k, int g) const { return w[int64_t(g * p.Kg + k) * Kr + kr]; }
  FASTOPS_HD const T* b_vec(int kr, int k, int g) const { return w + int64_t(g * p.Kg + k) * Kr + kr; }
  FASTOPS_HD void store(int m, int k, int g, float v) const {
    const int kk = g * p.Kg + k;
    if (bias != nullptr) v += static_cast<float>(bias[kk]);
    if (relu) v = v <= 0.f ? 0.f : v;  // NaN stays NaN, as torch.relu
    y[int64_t(m) * p.K + kk] = static_cast<T>(v);
  }
};

template <typename T_>
struct DgradTc {
  using T = T_;
  static constexpr bool kAContigM = false;  // A[m][kr]: kr = (r, s, k), k contiguous in dy
  static constexpr bool kBContigN = true;   // B[kr][c] = w[k][r][s][c]: c contiguous
  const T* dy;
  const T* w;
  T* dx;
  TcParams p;
  int M, Nc, Kr;
  bool vec_a, vec_b;

  // Offset of dy's pixel (n, p, q) feeding input pixel m = (n, h, w) through tap (r, s), or -1.
  FASTOPS_HD int64_t source(int m, int r, int s) const {
    const int wq = m % p.W, t = m / p.W, h = t % p.H, n = t / p.H;
    const int hn = h + p.ph - r * p.dh, wn = wq + p.pw - s * p.dw;
    if (hn < 0 || wn < 0 || hn % p.sh != 0 || wn % p.sw != 0) return -1;
    const int pp = hn / p.sh, q = wn / p.sw;
    if (pp >= p.P || q >= p.Q) return -1;
    return ((int64_t(n) * p.P + pp) * p.Q + q) * p.K;
  }
  FASTOPS_HD T a(int m, int kr, int g) const {
    const int k = kr % p.Kg, rs = kr / p.Kg;
    const int64_t off = source(m, rs / p.S, rs % p.S);
    return off >= 0 ? dy[off + g * p.Kg + k] : T(0.f);
  }
  FASTOPS_HD const T* a_vec(int m, int kr, int g) const {
    const int k = kr % p.Kg, rs = kr / p.Kg;
    const int64_t off = source(m, rs / p.S, rs % p.S);
    return off >= 0 ? dy + off + g * p.Kg + k : nullptr;
  }
  FASTOPS_HD int64_t w_off(int kr, int c, int g) const {
    const int k = kr % p.Kg, rs = kr / p.Kg;
    return (int64_t(g * p.Kg + k) * (p.R * p.S) + rs) * p.Cg + c;
  }
  FASTOPS_HD T b(int kr, int c, int g) const { return w[w_off(kr, c, g)]; }
  FASTOPS_HD const T* b_vec(int kr, int c, int g) const { return w + w_off(kr, c, g); }
  FASTOPS_HD void store(int m, int c, int g, float v) const {
    dx[int64_t(m) * p.C + g * p.Cg + c] = static_cast<T>(v);
  }
};

template <typename T_>
struct WgradTc {
  using T = T_;
  static constexpr bool kAContigM = true;   // A[k][t] = dy[t][k]: k contiguous
  static constexpr bool kBContigN = true;   // B[t][j]: j = (r, s, c), c contiguous in x
  const T* dy;
  const T* x;
  T* dw;
  TcParams p;
  int M, Nc, Kr;
  bool vec_a, vec_b;

  FASTOPS_HD T a(int k, int t, int g) const { return dy[int64_t(t) * p.K + g * p.Kg + k]; }
  FASTOPS_HD const T* a_vec(int k, int t, int g) const { return dy + int64_t(t) * p.K + g * p.Kg + k; }
  FASTOPS_HD int64_t pixel(int t, int j, bool& inside) const {
    const int q = t % p.Q, u = t / p.Q, pp = u % p.P, n = u / p.P;
    const int rs = j / p.Cg, s = rs % p.S, r = rs / p.S;
    const int hi = pp * p.sh - p.ph + r * p.dh, wi = q * p.sw - p.pw + s * p.dw;
    inside = hi >= 0 && hi < p.H && wi >= 0 && wi < p.W;
    return ((int64_t(n) * p.H + hi) * p.W + wi) * p.C;
  }
  FASTOPS_HD T b(int t, int j, int g) const {
    bool inside;
    const int64_t off = pixel(t, j, inside);
    return inside ? x[off + g * p.Cg + j % p.Cg] : T(0.f);
  }
  FASTOPS_HD const T* b_vec(int t, int j, int g) const {
    bool inside;
    const int64_t off = pixel(t, j, inside);
    return inside ? x + off + g * p.Cg + j % p.Cg : nullptr;
  }
  FASTOPS_HD void store(int k, int j, int g, float v) const {
    dw[int64_t(g * p.Kg + k) * Nc + j] = static_cast<T>(v);
  }
};

// ---- staging: global -> registers -> shared memory ---------------------------------------------
// Thread tid stages vectors v = tid + i kTcThreads of each operand's tile. Shared layouts:
//   A: kAContigM ? [kTcK][kTcM + kPad] (m contiguous) : [kTcM][kTcK + kPad] (kr contiguous)
//   B: kBContigN ? [kTcK][kTcN + kPad] (n contiguous) : [kTcN][kTcK + kPad] (kr contiguous)
// As WMMA fragments: A is row_major (element (m, k) at ptr[m ld + k]) when kr is contiguous and
// col_major (ptr[m + k ld]) when m is; B is row_major (ptr[k ld + n]) when n is contiguous and
// col_major (ptr[k + n ld]) when kr is.

template <typename Op>
struct TcStage {
  using T = typename Op::T;
  static constexpr bool kARowMajor = !Op::kAContigM;
  static constexpr bool kBRowMajor = Op::kBContigN;
  static constexpr int kLda = Op::kAContigM ? kTcM + kPad : kTcK + kPad;
  static constexpr int kLdb = Op::kBContigN ? kTcN + kPad : kTcK + kPad;
  static constexpr int kASize = Op::kAContigM ? kTcK * kLda : kTcM * kLda;
  static constexpr int kBSize = Op::kBContigN ? kTcK * kLdb : kTcN * kLdb;
  static constexpr int kAVecs = kTcM * kTcK / kVec / kTcThreads;  // per thread
  static constexpr int kBVecs = kTcN * kTcK / kVec / kTcThreads;
  static_assert(kAVecs * kVec * kTcThreads == kTcM * kTcK && kBVecs * kVec * kTcThreads == kTcN * kTcK,
                "tiles must split evenly into one vector per thread per pass");
  // 32-byte aligned fragment pointers: row strides times 16 rows, fragment column offsets of 16
  // elements, and the second buffer's offset all multiples of 32 bytes (16-bit elements).
  static_assert((kLda * kFrag * 2) % 32 == 0 && (kLdb * kFrag * 2) % 32 == 0, "fragment rows misaligned");
  static_assert((kASize * 2) % 32 == 0 && (kBSize * 2) % 32 == 0, "buffers misaligned");
  static_assert(kLda % 8 == 0 && kLdb % 8 == 0, "WMMA ldm must be a multiple of 8 for 16-bit types");

  struct Regs {
    Vec8<T> a[kAVecs], b[kBVecs];
  };

  FASTOPS_HD static int a_off(int m, int k) { return Op::kAContigM ? k * kLda + m : m * kLda + k; }
  FASTOPS_HD static int b_off(int k, int n) { return Op::kBContigN ? k * kLdb + n : n * kLdb + k; }

  // Tile coordinates (row, col) of the first element of vector v.
  FASTOPS_HD static void a_coords(int v, int& ml, int& kl) {
    if (Op::kAContigM) {
      kl = v / (kTcM / kVec), ml = (v % (kTcM / kVec)) * kVec;
    } else {
      ml = v / (kTcK / kVec), kl = (v % (kTcK / kVec)) * kVec;
    }
  }
  FASTOPS_HD static void b_coords(int v, int& kl, int& nl) {
    if (Op::kBContigN) {
      kl = v / (kTcN / kVec), nl = (v % (kTcN / kVec)) * kVec;
    } else {
      nl = v / (kTcK / kVec), kl = (v % (kTcK / kVec)) * kVec;
    }
  }

  // Loads the (m0, n0, k0) tile's vectors of thread tid; kr >= kend reads as zero (the split's end).
  FASTOPS_HD static void load(const Op& op, int tid, int m0, int n0, int k0, int kend, int g, Regs& r) {
#pragma unroll
    for (int i = 0; i < kAVecs; ++i) {
      int ml, kl;
      a_coords(tid + i * kTcThreads, ml, kl);
      const int m = m0 + ml, k = k0 + kl;
      if (Op::kAContigM) {
        if (op.vec_a && m + kVec <= op.M && k < kend) {
          const T* src = op.a_vec(m, k, g);
          r.a[i] = src != nullptr ? load_vec(src) : zero_vec<T>();
        } else {
#pragma unroll
          for (int e = 0; e < kVec; ++e) r.a[i].v[e] = (m + e < op.M && k < kend) ? op.a(m + e, k, g) : T(0.f);
        }
      } else {
        if (op.vec_a && m < op.M && k + kVec <= kend) {
          const T* src = op.a_vec(m, k, g);
          r.a[i] = src != nullptr ? load_vec(src) : zero_vec<T>();
        } else {
#pragma unroll
          for (int e = 0; e < kVec; ++e) r.a[i].v[e] = (m < op.M && k + e < kend) ? op.a(m, k + e, g) : T(0.f);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kBVecs; ++i) {
      int kl, nl;
      b_coords(tid + i * kTcThreads, kl, nl);
      const int n = n0 + nl, k = k0 + kl;
      if (Op::kBContigN) {
        if (op.vec_b && n + kVec <= op.Nc && k < kend) {
          const T* src = op.b_vec(k, n, g);
          r.b[i] = src != nullptr ? load_vec(src) : zero_vec<T>();
        } else {
#pragma unroll
          for (int e = 0; e < kVec; ++e) r.b[i].v[e] = (n + e < op.Nc && k < kend) ? op.b(k, n + e, g) : T(0.f);
        }
      } else {
        if (op.vec_b && n < op.Nc && k + kVec <= kend) {
          const T* src = op.b_vec(k, n, g);
          r.b[i] = src != nullptr ? load_vec(src) : zero_vec<T>();
        } else {
#pragma unroll
          for (int e = 0; e < kVec; ++e) r.b[i].v[e] = (n < op.Nc && k + e < kend) ? op.b(k + e, n, g) : T(0.f);
        }
      }
    }
  }

  // One 16-byte shared store per vector: its 8 elements are contiguous in the tile layout too.
  FASTOPS_HD static void store(const Regs& r, int tid, T* As, T* Bs) {
#pragma unroll
    for (int i = 0; i < kAVecs; ++i) {
      int ml, kl;
      a_coords(tid + i * kTcThreads, ml, kl);
      *reinterpret_cast<Vec8<T>*>(As + a_off(ml, kl)) = r.a[i];
    }
#pragma unroll
    for (int i = 0; i < kBVecs; ++i) {
      int kl, nl;
      b_coords(tid + i * kTcThreads, kl, nl);
      *reinterpret_cast<Vec8<T>*>(Bs + b_off(kl, nl)) = r.b[i];
    }
  }
};

// ---- warp tiling and the epilogue --------------------------------------------------------------

// Warp w's (row, col) offset inside the block tile.
FASTOPS_HD int warp_m(int warp) { return (warp / (kTcN / kWarpN)) * kWarpM; }
FASTOPS_HD int warp_n(int warp) { return (warp % (kTcN / kWarpN)) * kWarpN; }

// Split-K: the reduction range of split `split`, with chunk a multiple of kTcK.
FASTOPS_HD void split_range(int Kr, int chunk, int split, int& kbeg, int& kend) {
  kbeg = split * chunk;
  kend = Kr - kbeg < chunk ? Kr : kbeg + chunk;
}

FASTOPS_HD int64_t workspace_index(int split, int g, int G, int M, int Nc, int m, int n) {
  return ((int64_t(split) * G + g) * M + m) * Nc + n;
}

// Stores one accumulator value at GEMM coordinates (m, n): into the split-K workspace, or through
// the op's epilogue. Out-of-tile coordinates are dropped.
template <typename Op>
FASTOPS_HD void store_acc(const Op& op, float* ws, int split, int g, int G, int m, int n, float v) {
  if (m >= op.M || n >= op.Nc) return;
  if (ws != nullptr) {
    ws[workspace_index(split, g, G, op.M, op.Nc, m, n)] = v;
  } else {
    op.store(m, n, g, v);
  }
}

// Element e of the split-K reduction (e < G M Nc): sums the splits in order, applies the epilogue.
template <typename Op>
FASTOPS_HD void reduce_splits(const Op& op, const float* ws, int splits, int G, int64_t e) {
  const int64_t per_group = int64_t(op.M) * op.Nc;
  const int g = static_cast<int>(e / per_group);
  const int64_t mn = e % per_group;
  const int m = static_cast<int>(mn / op.Nc), n = static_cast<int>(mn % op.Nc);
  float s = 0.f;
  for (int sp = 0; sp < splits; ++sp) s += ws[workspace_index(sp, g, G, op.M, op.Nc, m, n)];
  op.store(m, n, g, s);
}

// Host-side plan: the split count and chunk for a GEMM of M x Nc x Kr per group on `sms` SMs.
// Splits only when the tile grid leaves SMs idle (fewer than two blocks per SM), each split keeps at
// least 4 reduction steps, and no split is empty. The workspace is then < 2 * 2 sms tiles of floats.
struct SplitPlan {
  int splits, chunk;
};

inline SplitPlan plan_splits(int64_t M, int64_t Nc, int64_t Kr, int64_t G, int sms) {
  const int64_t tiles = ((M + kTcM - 1) / kTcM) * ((Nc + kTcN - 1) / kTcN) * G;
  const int64_t steps = (Kr + kTcK - 1) / kTcK;
  const int64_t target = 2 * int64_t(sms);
  int64_t splits = 1;
  if (tiles < target) splits = (target + tiles - 1) / tiles;
  splits = splits < steps / 4 ? splits : steps / 4;
  const int64_t max_z = 65535 / (G > 0 ? G : 1);
  splits = splits < max_z ? splits : max_z;
  if (splits < 1) splits = 1;
  const int64_t chunk_steps = (steps + splits - 1) / splits;
  const int64_t chunk = (chunk_steps > 0 ? chunk_steps : 1) * kTcK;
  splits = (Kr + chunk - 1) / chunk;  // drop empty trailing splits
  if (splits < 1) splits = 1;
  return {static_cast<int>(splits), static_cast<int>(chunk)};
}

}  // namespace igemm
}  // namespace fastops
