// Conv2d on CPU, float32, 3x3 stride 1: Winograd F(2x2, 3x3) forward, grad-input and grad-weight.
//
// Math (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). x (N, C, H, W),
// w (K, C, 3, 3), padding (ph, pw) <= 2, y (N, K, P, Q) with P = H + 2 ph - 2. The outputs are cut
// into 2x2 tiles (TH x TW per image, a partial last row / column computed and not stored); tile
// (ty, tx) reads the 4x4 input patch d at rows 2 ty - ph .. + 3, columns 2 tx - pw .. + 3 (zero
// outside the image). With
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1]:
//   V[xi][c][tile] = (B^T d_c B)[xi],  U[xi][k][c] = (G w[k][c] G^T)[xi]   (xi = 4 a + b, 16 of them)
//   M[xi] (K x tiles) = U[xi] (K x C) V[xi] (C x tiles)      -- 16 GEMMs
//   y tile = A^T M A (2x2 from the 4x4 M of each tile and k)
// 16 multiplies per 4 outputs per (k, c) instead of 36: 2.25x fewer GEMM flops than the direct
// sum. dgrad is the same forward from dy (K channels), zero-padded by 2 - p, with w rotated by 180
// degrees and k <-> c (the GEMMs take U[xi] transposed). wgrad is the derivative of the forward in
// U: dU[xi] (K x C) = sum over tiles of dM[xi] (K x tiles) V[xi]^T, dM = A dY A^T of each 2x2 dy
// tile (A = (A^T)^T), then dw = G^T dU G.
//
// Decomposition. The global tile rows r = n TH + ty are cut into blocks of whole tile rows (about
// 2^18 / (16 (C + K)) tiles, at least 64, so one block's V and M (16 (C + K) floats per tile) stay in
// L2; at least one block per thread); blocks are split over threads (at::parallel_for), each thread
// transforming its block's input into its own V, running the 16 GEMMs as batched BLAS calls
// (at::bmm / baddbmm_ on views of the scratch, one per 64-deep slice of the reduction: MKL sgemm
// here), and transforming M straight into y's rows with the bias / ReLU epilogue. wgrad: each thread chunk (a contiguous run of blocks of about twice that
// size, at least 128 tiles) sums its blocks' dU; the chunks' sums are added in chunk order and
// G^T . G runs once per (k, c) (deterministic for a given thread count).
// Transforms run on at::vec vectors along the tiles of a tile row: the input rows a block reads
// are split once into even / odd columns, so a tile's columns 2t .. 2t + 3 are E[t], O[t], E[t + 1],
// O[t + 1] of its rows, contiguous in t. Images narrower than a vector of tiles (TW < 16 on AVX-512)
// gather each tile's patch by index instead (one masked AVX-512 gather per patch entry and 16 tiles;
// elsewhere a flat copy of the patches), so the vectors run across tile rows and images. The output
// transform computes both rows' even and odd columns for all of a block's tiles, then interleaves.
//
// Traffic (float32, per pass): x (or dy) read once (the split rows are L1-resident), V written and
// read once from L2 (4x the input's bytes), U read per block (16 K C floats, L2 for K C <= 128^2),
// M written and read once from L2 (4x the output's bytes), y written once; wgrad reads x and dy once.
// The direct kernels read the input R S = 9 times from L2; this reads the transformed input once.
//
// Numerics. U is computed in float64 and rounded once. V, M and dM are float32; each GEMM's
// reduction (over C, over K for dgrad, over a block's tiles for wgrad) runs in float32 chunks of at
// most 64, each chunk's product added to the sum of the previous ones (one BLAS reduction over 256
// channels was 2.4x torch's error); wgrad sums a chunk's blocks in float64 when it has several, and
// G^T dU G runs in float64 with one rounding. Measured against the float64 reference on unit-scale
// data (32-256 channels, 14-56 px, 3-6 seeds): the worst element of y, dx, dw at 0.42-0.75 of the
// float32 tolerance (rtol 2e-5, atol 2e-6), torch's own at 0.45-0.69 (y, dx) and 1.03-5.7 (dw).
// Winograd mixes a patch's values before multiplying, so an inf anywhere in a tile makes NaN of
// outputs the direct sum leaves inf, and a transformed intermediate (|V| <= 4 max|x|, |U| <= 9/4
// max|w|) can overflow where the direct sum does not: each pass tracks max|x| (dy) as it transforms
// and returns false, for the caller to run the direct kernels, when an operand is not finite or
// 4 max|in| 9/4 max|w| C 9 (wgrad: 16 max|x| max|dy| tiles-per-block 9) reaches 1e37.
//
// Preconditions (conv2d_winograd_applies, checked by the caller with the dtype): float32, contiguous
// NCHW x / dy and KCRS w, groups 1, 3x3, stride 1, dilation 1, padding <= 2, C and K >= 16, at least
// K C / 512 tiles (the weight transform's cost); wgrad: >= 64 channels each side and 28 x 28
// outputs, below which its transforms cost more than they save (measurements at the constants).
// Scratch (conv2d_scratch.h: kept between calls up to 16 MiB per buffer): per thread, V and M of one
// block and a few rows; on the calling thread, U (16 K C floats) and wgrad's per-chunk dU (float32,
// and float64 with several blocks per chunk).
#include "cpu/conv2d_winograd.h"
#include "cpu/conv2d_scratch.h"

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace fastops::cpu {
namespace {

constexpr int64_t kMinChannels = 16;
// A pass pays for its weight transform (16 K C values) only over enough tiles: measured per pass,
// batch 8, Winograd vs the tiled GEMM kernel (ms; 2-core Intel Xeon, AVX-512): C = K = 512 at 2x2
// (8 tiles) 8.6 / 1.3 fwd and 8.1 / 1.8 dgrad; 256 at 4x4 (32 tiles) 1.8 / 1.1; 512 at 7x7 (128)
// 12.1 / 10.0; 256 at 7x7 (128) level; 128 at 8x8 (128) 0.82 / 1.04 and 64 at 8x8 0.24 / 0.34, won.
// So at least K C / 512 tiles (no minimum beyond it: small channel counts won at every size measured).
constexpr int64_t kChannelProductPerTile = 512;
// The weight gradient's transforms (x and dy both, then dU summed per chunk and G^T dU G per (k, c))
// pay only on large images with many channels: measured wgrad, Winograd vs the better of the direct
// and tiled kernels: 64 at 28x28 2.6 / 2.9, 128 at 28x28 8.2 / 10.9, 256 at 28x28 30 / 37 won; 64 at
// 56x56 level; but 32 at 28x28 1.32 / 0.92, 128 at 14x14 4.6 / 2.9, 256 at 14x14 level, 64 at 16x16
// 1.23 / 0.96, 512 at 7x7 19.1 / 12.6 lost. So at least 64 channels each side and 28 x 28 outputs.
constexpr int64_t kMinWgradChannels = 64, kMinWgradPixels = 28 * 28;
// Floats of one block's transformed input and GEMM output (16 (Ci + Co) per tile): 1 MiB, half a
// core's L2, so the GEMMs read what the transforms just wrote from cache.
constexpr int64_t kBlockFloats = int64_t(1) << 18;
constexpr int64_t kMinTiles = 64, kMinWgradTiles = 128;
// The GEMMs' reductions run in float32 chunks of at most this many channels (forward, dgrad) or tiles
// (wgrad), each chunk's product added to the sum of the previous ones (see batched_gemm).
constexpr int64_t kReduceChunk = 64;
// A bound on what may be summed in float32 without overflow, with margin below FLT_MAX (3.4e38).
constexpr double kSafe = 1e37;

// One Winograd pass: an input image (N, Ci, Hi, Wi) correlated with a 3x3 kernel, stride 1, padding
// (ph, pw), into (N, Co, Ho, Wo); output tiles of 2x2, TH x TW per image, the global tile row
// r = n TH + ty.
struct Pass {
  int64_t N, Ci, Hi, Wi, ph, pw, Co, Ho, Wo, TH, TW;
  Pass(int64_t N_, int64_t Ci_, int64_t Hi_, int64_t Wi_, int64_t ph_, int64_t pw_, int64_t Co_)
      : N(N_), Ci(Ci_), Hi(Hi_), Wi(Wi_), ph(ph_), pw(pw_), Co(Co_), Ho(Hi_ + 2 * ph_ - 2), Wo(Wi_ + 2 * pw_ - 2),
        TH((Ho + 1) / 2), TW((Wo + 1) / 2) {}
  int64_t rows() const { return N * TH; }
  // Floats of per-thread work space the transforms of a block of rb tile rows need.
  int64_t work_floats(int64_t rb) const { return 16 * rb * TW + (2 * rb + 4) * 2 * (TW + 1); }
  // Whole tile rows per block: about kBlockFloats / (16 (Ci + Co)) tiles, and at least as many
  // blocks as threads.
  int64_t block_rows(int64_t min_tiles, int64_t scale = 1) const {
    const int64_t tiles = std::clamp<int64_t>(scale * kBlockFloats / (16 * (Ci + Co)), min_tiles, 1024);
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t fair = (rows() + threads - 1) / threads;
    return std::clamp<int64_t>((tiles + TW / 2) / TW, 1, std::max<int64_t>(fair, 1));
  }
};

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVec = Vec::size();
// Vector loads and stores of cnt <= kVec lanes (the tail of a row: lanes past cnt neither read nor written).
inline Vec load(const float* p, int64_t cnt) { return cnt == kVec ? Vec::loadu(p) : Vec::loadu(p, cnt); }
inline void vstore(const Vec& v, float* p, int64_t cnt) {
  if (cnt == kVec) {
    v.store(p);
  } else {
    v.store(p, static_cast<int>(cnt));
  }
}

// The largest |v| as float bits (the order of non-negative floats is their bits' order; inf and NaN
// compare above every finite value).
inline uint32_t abs_bits_max(const float* p, int64_t n, uint32_t m) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, p + i, sizeof b);
    b &= 0x7fffffffu;
    m = b > m ? b : m;
  }
  return m;
}
inline double bits_to_abs(uint32_t b) {
  if (b >= 0x7f800000u) return INFINITY;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// even[t] = src[2t], odd[t] = src[2t + 1] for t in [0, n).
inline void deinterleave(const float* __restrict src, int64_t n, float* __restrict even, float* __restrict odd) {
  int64_t t = 0;
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (; t + 16 <= n; t += 16) {
    const __m512 a = _mm512_loadu_ps(src + 2 * t), b = _mm512_loadu_ps(src + 2 * t + 16);
    _mm512_storeu_ps(even + t, _mm512_permutex2var_ps(a, ie, b));
    _mm512_storeu_ps(odd + t, _mm512_permutex2var_ps(a, io, b));
  }
#endif
  for (; t < n; ++t) {
    even[t] = src[2 * t];
    odd[t] = src[2 * t + 1];
  }
}

// out[2t] = even[t], out[2t + 1] = odd[t] for t in [0, n).
inline void interleave(const float* __restrict even, const float* __restrict odd, int64_t n, float* __restrict out) {
  int64_t t = 0;
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (; t + 16 <= n; t += 16) {
    const __m512 a = _mm512_loadu_ps(even + t), b = _mm512_loadu_ps(odd + t);
    _mm512_storeu_ps(out + 2 * t, _mm512_permutex2var_ps(a, lo, b));
    _mm512_storeu_ps(out + 2 * t + 16, _mm512_permutex2var_ps(a, hi, b));
  }
#endif
  for (; t < n; ++t) {
    out[2 * t] = even[t];
    out[2 * t + 1] = odd[t];
  }
}

// The 4x4 transform of one vector of tiles: d[4 i + j] holds row i, column j of each lane's patch;
// out + xi vs receives (B^T d B)[xi].
inline void transform_patch(const Vec (&d)[16], float* out, int64_t vs, int64_t cnt) {
  Vec e[4][4];  // e[a][j] = (B^T d)[a][j]
  for (int64_t j = 0; j < 4; ++j) {
    e[0][j] = d[j] - d[8 + j];
    e[1][j] = d[4 + j] + d[8 + j];
    e[2][j] = d[8 + j] - d[4 + j];
    e[3][j] = d[4 + j] - d[12 + j];
  }
  for (int64_t a = 0; a < 4; ++a) {  // . B
    float* va = out + 4 * a * vs;
    vstore(e[a][0] - e[a][2], va, cnt);
    vstore(e[a][1] + e[a][2], va + vs, cnt);
    vstore(e[a][2] - e[a][1], va + 2 * vs, cnt);
    vstore(e[a][1] - e[a][3], va + 3 * vs, cnt);
  }
}

// input_transform for images narrower than a vector of tiles (TW < kVec): per channel, the 16 patch
// entries of every tile of the block are first laid out flat (F[4 i + j][tile]: the even / odd split
// of padded row i, and the same shifted by one pair for columns 2 and 3), so that the transform runs
// on full vectors across tile rows and images.
uint32_t input_transform_narrow(const float* in, const Pass& p, int64_t r0, int64_t r1, int64_t nb, float* V,
                                float* work) {
  const int64_t TW = p.TW, Wp = 2 * (TW + 1), vs = p.Ci * nb;
#if defined(CPU_CAPABILITY_AVX512)
  // AVX-512: each patch entry of 16 tiles is one masked gather from the channel's planes, through an
  // index table made once per block (offsets from the block's first image, -1 outside the images).
  if (p.Hi * p.Wi * p.Ci * (r1 - r0 + p.TH - 1) / p.TH < (int64_t(1) << 31)) {
    int32_t* const idx = reinterpret_cast<int32_t*>(work);  // [16][nb]
    const int64_t n0 = r0 / p.TH;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.TH, ty = r % p.TH, j0 = (r - r0) * TW;
      for (int64_t i = 0; i < 4; ++i) {
        const int64_t h = 2 * ty - p.ph + i;
        for (int64_t jj = 0; jj < 4; ++jj) {
          for (int64_t t = 0; t < TW; ++t) {
            const int64_t col = 2 * t - p.pw + jj;
            const bool in_image = h >= 0 && h < p.Hi && col >= 0 && col < p.Wi;
            idx[(4 * i + jj) * nb + j0 + t] =
                in_image ? static_cast<int32_t>((n - n0) * p.Ci * p.Hi * p.Wi + h * p.Wi + col) : -1;
          }
        }
      }
    }
    const __m512i sign = _mm512_set1_epi32(0x7fffffff);
    __m512i mx = _mm512_setzero_si512();
    for (int64_t c = 0; c < p.Ci; ++c) {
      const float* base = in + (n0 * p.Ci + c) * p.Hi * p.Wi;
      for (int64_t j = 0; j < nb; j += kVec) {
        const int64_t cnt = std::min<int64_t>(kVec, nb - j);
        const __mmask16 lanes = static_cast<__mmask16>((1u << cnt) - 1u);
        Vec d[16];
        for (int64_t e = 0; e < 16; ++e) {
          const __m512i ix = _mm512_maskz_loadu_epi32(lanes, idx + e * nb + j);
          const __mmask16 ok = _mm512_mask_cmpge_epi32_mask(lanes, ix, _mm512_setzero_si512());
          const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), ok, ix, base, 4);
          mx = _mm512_max_epu32(mx, _mm512_and_si512(_mm512_castps_si512(v), sign));
          d[e] = Vec(v);
        }
        transform_patch(d, V + c * nb + j, vs, cnt);
      }
    }
    return _mm512_reduce_max_epu32(mx);
  }
#endif
  float* const F = work;  // [16][nb]
  float* const row = F + 16 * nb;
  uint32_t m = 0;
  for (int64_t c = 0; c < p.Ci; ++c) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.TH, ty = r % p.TH, j0 = (r - r0) * TW;
      const float* plane = in + (n * p.Ci + c) * p.Hi * p.Wi;
      for (int64_t i = 0; i < 4; ++i) {
        float* f = F + 4 * i * nb + j0;
        const int64_t h = 2 * ty - p.ph + i;
        if (h < 0 || h >= p.Hi) {
          for (int64_t j = 0; j < 4; ++j) std::fill(f + j * nb, f + j * nb + TW, 0.f);
          continue;
        }
        const float* src = plane + h * p.Wi;
        std::fill(row, row + p.pw, 0.f);
        std::memcpy(row + p.pw, src, sizeof(float) * p.Wi);
        std::fill(row + p.pw + p.Wi, row + Wp, 0.f);
        m = abs_bits_max(src, p.Wi, m);
        deinterleave(row, TW, f, f + nb);
        deinterleave(row + 2, TW, f + 2 * nb, f + 3 * nb);
      }
    }
    for (int64_t j = 0; j < nb; j += kVec) {
      const int64_t cnt = std::min<int64_t>(kVec, nb - j);
      Vec d[16];
      for (int64_t e = 0; e < 16; ++e) d[e] = load(F + e * nb + j, cnt);
      transform_patch(d, V + c * nb + j, vs, cnt);
    }
  }
  return m;
}

// V[xi][c][j] (leading dimension nb) = (B^T d B)[xi] for the 4x4 input patch d of each tile j of
// the block's tile rows [r0, r1), channel c; xi = 4 a + b.
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
// Per channel and image, the padded input rows the block's tiles read are split once into even and
// odd columns (E, O: row i's column 2t is E[i][t], 2t + 1 is O[i][t]); a tile's columns 2t .. 2t + 3
// are then E[t], O[t], E[t + 1], O[t + 1] of its four rows, so one loop over t computes all 16
// outputs of a tile row from contiguous vectors. Returns the largest |x| read, as bits.
uint32_t input_transform(const float* in, const Pass& p, int64_t r0, int64_t r1, int64_t nb, float* V, float* work) {
  const int64_t TW = p.TW, T1 = TW + 1, Wp = 2 * T1, vs = p.Ci * nb;
  uint32_t m = 0;
  if (TW < kVec) return input_transform_narrow(in, p, r0, r1, nb, V, work);
  for (int64_t c = 0; c < p.Ci; ++c) {
    for (int64_t ra = r0; ra < r1;) {
      const int64_t n = ra / p.TH, ty0 = ra % p.TH, rb = std::min(r1, (n + 1) * p.TH), ty1 = ty0 + (rb - ra);
      const float* plane = in + (n * p.Ci + c) * p.Hi * p.Wi;
      // padded rows 2 ty0 .. 2 ty1 + 1, each split into E and O ([rows][2][T1]), then a padded row buffer
      const int64_t rows = 2 * (ty1 - ty0) + 2;
      float* const split = work;
      float* const row = split + rows * 2 * T1;
      for (int64_t i = 0; i < rows; ++i) {
        float* E = split + i * 2 * T1;
        const int64_t h = 2 * ty0 - p.ph + i;
        if (h < 0 || h >= p.Hi) {
          std::fill(E, E + 2 * T1, 0.f);
          continue;
        }
        const float* src = plane + h * p.Wi;
        std::fill(row, row + p.pw, 0.f);
        std::memcpy(row + p.pw, src, sizeof(float) * p.Wi);  // pw + Wi <= Wp: Wo = Wi + 2 pw - 2 <= 2 TW
        std::fill(row + p.pw + p.Wi, row + Wp, 0.f);
        m = abs_bits_max(src, p.Wi, m);
        deinterleave(row, T1, E, E + T1);
      }
      for (int64_t ty = ty0; ty < ty1; ++ty) {
        const float* rows_base = split + 2 * (ty - ty0) * 2 * T1;  // rows i = 0..3 at + i 2 T1
        float* __restrict v = V + c * nb + (n * p.TH + ty - r0) * TW;
        for (int64_t t = 0; t < TW; t += kVec) {
          const int64_t cnt = std::min<int64_t>(kVec, TW - t);
          Vec d[16];  // d[4 i + j]: row i, column j of each tile's patch
          for (int64_t i = 0; i < 4; ++i) {
            const float* Ei = rows_base + i * 2 * T1 + t;
            d[4 * i + 0] = load(Ei, cnt);
            d[4 * i + 1] = load(Ei + T1, cnt);
            d[4 * i + 2] = load(Ei + 1, cnt);
            d[4 * i + 3] = load(Ei + T1 + 1, cnt);
          }
          transform_patch(d, v + t, vs, cnt);
        }
      }
      ra = rb;
    }
  }
  return m;
}

// dM[xi][k][j] (leading dimension nb) = (A dY A^T)[xi] for the 2x2 output-gradient tile dY of each
// tile j of the block, channel k (zero beyond the output's edge); A = [1 0; 1 1; 1 -1; 0 -1]. Per
// channel, the block's dy rows are split even / odd into flat arrays over its tiles, then one loop
// over the tiles computes the 16 outputs on full vectors.
uint32_t grad_transform(const float* dy, const Pass& p, int64_t r0, int64_t r1, int64_t nb, float* dM, float* work) {
  const int64_t TW = p.TW, ms = p.Co * nb;
  float* const D = work;  // [row 0 even, row 0 odd, row 1 even, row 1 odd][nb]
  float* const row = D + 4 * nb;
  uint32_t m = 0;
  for (int64_t k = 0; k < p.Co; ++k) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.TH, ty = r % p.TH, j0 = (r - r0) * TW;
      for (int64_t i = 0; i < 2; ++i) {
        const int64_t h = 2 * ty + i;
        float* e = D + 2 * i * nb + j0;
        if (h < p.Ho) {
          const float* src = dy + ((n * p.Co + k) * p.Ho + h) * p.Wo;
          std::memcpy(row, src, sizeof(float) * p.Wo);
          std::fill(row + p.Wo, row + 2 * TW, 0.f);
          m = abs_bits_max(src, p.Wo, m);
          deinterleave(row, TW, e, e + nb);
        } else {  // the zero row below an odd-height output
          std::fill(e, e + TW, 0.f);
          std::fill(e + nb, e + nb + TW, 0.f);
        }
      }
    }
    float* const out = dM + k * nb;
    for (int64_t t = 0; t < nb; t += kVec) {
      const int64_t cnt = std::min<int64_t>(kVec, nb - t);
      const Vec e0 = load(D + t, cnt), o0 = load(D + nb + t, cnt), e1 = load(D + 2 * nb + t, cnt),
                o1 = load(D + 3 * nb + t, cnt);
      const Vec z0[4] = {e0, e0 + o0, e0 - o0, Vec(0.f) - o0};  // dY A^T, row 0
      const Vec z1[4] = {e1, e1 + o1, e1 - o1, Vec(0.f) - o1};  // row 1
      for (int64_t b = 0; b < 4; ++b) {  // A .
        vstore(z0[b], out + b * ms + t, cnt);
        vstore(z0[b] + z1[b], out + (4 + b) * ms + t, cnt);
        vstore(z0[b] - z1[b], out + (8 + b) * ms + t, cnt);
        vstore(Vec(0.f) - z1[b], out + (12 + b) * ms + t, cnt);
      }
    }
  }
  return m;
}

// Output rows of the block from M[xi][o][j] (leading dimension nb): Y = A^T M A per tile,
//   A^T = [1 1 1 0; 0 1 -1 -1];
// one loop over a tile row's tiles computes both output rows' even and odd columns, interleaved after.
// store(n, o, h, row) takes output row h of channel o as Wo floats (row holds 2 TW).
template <typename Store>
void output_transform(const float* M, const Pass& p, int64_t r0, int64_t r1, int64_t nb, float* work,
                      const Store& store) {
  const int64_t TW = p.TW, ms = p.Co * nb;
  float* const y = work;  // [row 0 even, row 0 odd, row 1 even, row 1 odd][nb]
  float* const row = y + 4 * nb;
  for (int64_t o = 0; o < p.Co; ++o) {
    const float* mm = M + o * nb;
    for (int64_t t = 0; t < nb; t += kVec) {  // across the block's tiles: full vectors on small images too
      const int64_t cnt = std::min<int64_t>(kVec, nb - t);
      Vec sv[4], uv[4];  // rows 0 and 1 of A^T M
      for (int64_t b = 0; b < 4; ++b) {
        const Vec m0 = load(mm + b * ms + t, cnt), m1 = load(mm + (4 + b) * ms + t, cnt),
                  m2 = load(mm + (8 + b) * ms + t, cnt), m3 = load(mm + (12 + b) * ms + t, cnt);
        sv[b] = m0 + m1 + m2;
        uv[b] = m1 - m2 - m3;
      }
      vstore(sv[0] + sv[1] + sv[2], y + t, cnt);
      vstore(sv[1] - sv[2] - sv[3], y + nb + t, cnt);
      vstore(uv[0] + uv[1] + uv[2], y + 2 * nb + t, cnt);
      vstore(uv[1] - uv[2] - uv[3], y + 3 * nb + t, cnt);
    }
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.TH, ty = r % p.TH, j0 = (r - r0) * TW;
      for (int64_t i = 0; i < 2 && 2 * ty + i < p.Ho; ++i) {
        interleave(y + 2 * i * nb + j0, y + (2 * i + 1) * nb + j0, TW, row);
        store(n, o, 2 * ty + i, row);
      }
    }
  }
}

// U[xi][o][i] (16 x Co x Ci) = (G g G^T)[xi] of the 3x3 kernel g = w[o][i] (rot: rotated by 180
// degrees, the dgrad kernel, whose GEMM then takes U[xi] transposed), computed in float64 and rounded
// once, into U. Returns the largest |w|, as bits.
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
// Per output channel o, the kernels are first gathered tap-major (g[tap][i], contiguous in i), so the
// transform runs as vector loops over i.
uint32_t weight_transform(const float* w, int64_t Co, int64_t Ci, bool rot, float* U) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), Co));
  std::vector<uint32_t> maxima(static_cast<size_t>(chunks), 0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const int64_t o0 = Co * c0 / chunks, o1 = Co * c1 / chunks;
    maxima[c0] = abs_bits_max(w + o0 * Ci * 9, (o1 - o0) * Ci * 9, 0);
    std::vector<float> gt(static_cast<size_t>(9 * Ci));
    std::vector<double> t(static_cast<size_t>(12 * Ci));  // G g: [4 rows][3 columns][Ci]
    for (int64_t o = o0; o < o1; ++o) {
      for (int64_t i = 0; i < Ci; ++i) {
        for (int64_t tap = 0; tap < 9; ++tap) {
          gt[tap * Ci + i] = w[(o * Ci + i) * 9 + (rot ? 8 - tap : tap)];
        }
      }
      const float* __restrict g = gt.data();
      double* __restrict tt = t.data();
      for (int64_t col = 0; col < 3; ++col) {
        const float* g0 = g + col * Ci;
        const float* g1 = g + (3 + col) * Ci;
        const float* g2 = g + (6 + col) * Ci;
        for (int64_t i = 0; i < Ci; ++i) {
          const double a = g0[i], b = g1[i], c = g2[i];
          tt[(0 * 3 + col) * Ci + i] = a;
          tt[(1 * 3 + col) * Ci + i] = 0.5 * (a + b + c);
          tt[(2 * 3 + col) * Ci + i] = 0.5 * (a - b + c);
          tt[(3 * 3 + col) * Ci + i] = c;
        }
      }
      for (int64_t r = 0; r < 4; ++r) {
        const double* t0 = tt + (r * 3 + 0) * Ci;
        const double* t1 = tt + (r * 3 + 1) * Ci;
        const double* t2 = tt + (r * 3 + 2) * Ci;
        float* __restrict u0 = U + ((4 * r + 0) * Co + o) * Ci;
        float* __restrict u1 = U + ((4 * r + 1) * Co + o) * Ci;
        float* __restrict u2 = U + ((4 * r + 2) * Co + o) * Ci;
        float* __restrict u3 = U + ((4 * r + 3) * Co + o) * Ci;
        for (int64_t i = 0; i < Ci; ++i) {
          u0[i] = static_cast<float>(t0[i]);
          u1[i] = static_cast<float>(0.5 * (t0[i] + t1[i] + t2[i]));
          u2[i] = static_cast<float>(0.5 * (t0[i] - t1[i] + t2[i]));
          u3[i] = static_cast<float>(t2[i]);
        }
      }
    }
  });
  return *std::max_element(maxima.begin(), maxima.end());
}

// The 16 GEMMs of one block as one batched BLAS call on views of the scratch buffers (the BLAS takes
// the transposed operands as they lie):
//   kForward: C[xi] (M x N) = A[xi] (M x K) B[xi] (K x N);
//   kDgrad:   C[xi] (M x N) = A[xi]^T B[xi], A[xi] given as (K x M);
//   kWgrad:   C[xi] (M x N) = A[xi] (M x K) B[xi]^T, B[xi] given as (N x K).
enum class Gemm { kForward, kDgrad, kWgrad };
inline at::Tensor view3(const float* p, int64_t rows, int64_t cols) {
  return at::from_blob(const_cast<float*>(p), {16, rows, cols}, at::TensorOptions().dtype(at::kFloat));
}
inline void batched_gemm(Gemm kind, int64_t M, int64_t N, int64_t K, const float* a, const float* b, float* c) {
  at::Tensor C = view3(c, M, N);
  const at::Tensor A = kind == Gemm::kDgrad ? view3(a, K, M).transpose(1, 2) : view3(a, M, K);
  const at::Tensor B = kind == Gemm::kWgrad ? view3(b, N, K).transpose(1, 2) : view3(b, K, N);
  // The reduction in chunks of kReduceChunk, each a fresh float32 GEMM added to the sum of the
  // previous ones: short float32 chains (one GEMM over 256 channels was 2.4x torch's error).
  for (int64_t k0 = 0; k0 < K; k0 += kReduceChunk) {
    const int64_t len = std::min(K, k0 + kReduceChunk) - k0;
    if (k0 == 0) {
      at::bmm_out(C, A.narrow(2, k0, len), B.narrow(1, k0, len));
    } else {
      C.baddbmm_(A.narrow(2, k0, len), B.narrow(1, k0, len));
    }
  }
}

// The forward skeleton shared by the forward and dgrad: per block, transform the input, 16 GEMMs
// M[xi] (Co x nb) = U[xi] (Co x Ci) V[xi] (Ci x nb), transform the output. Returns the largest |input|
// read, as bits.
template <typename Store>
uint32_t run_forward(const Pass& p, const float* in, const float* U, Gemm kind, const Store& store) {
  const int64_t rb = p.block_rows(kMinTiles), blocks = (p.rows() + rb - 1) / rb, nbmax = rb * p.TW;
  std::vector<uint32_t> maxima(static_cast<size_t>(blocks), 0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const Scratch<float> V_buf(kWinoV, 16 * p.Ci * nbmax), M_buf(kWinoM, 16 * p.Co * nbmax),
        work_buf(kWinoWork, p.work_floats(rb));
    float* const V = V_buf.get();
    float* const M = M_buf.get();
    float* const work = work_buf.get();
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * rb, r1 = std::min(p.rows(), r0 + rb), nb = (r1 - r0) * p.TW;
      maxima[blk] = input_transform(in, p, r0, r1, nb, V, work);
      batched_gemm(kind, p.Co, nb, p.Ci, U, V, M);
      output_transform(M, p, r0, r1, nb, work, store);
    }
  });
  return *std::max_element(maxima.begin(), maxima.end());
}

// Whether a pass whose transformed operands are bounded by 4 max|in| and 9/4 max|w| (V, U), reducing
// over `terms` products and combining 9 of those sums, stays below kSafe.
inline bool in_range(double in_max, double w_max, double terms) {
  return std::isfinite(in_max) && std::isfinite(w_max) && 4.0 * in_max * 2.25 * w_max * terms * 9.0 < kSafe;
}

}  // namespace

bool conv2d_winograd_applies(const Conv2dGeometry& g) {
  if (!(g.G == 1 && g.R == 3 && g.S == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.ph <= 2 &&
        g.pw <= 2 && g.C >= kMinChannels && g.K >= kMinChannels && g.P >= 1 && g.Q >= 1)) {
    return false;
  }
  const int64_t tiles = g.N * ((g.P + 1) / 2) * ((g.Q + 1) / 2);
  return tiles >= g.K * g.C / kChannelProductPerTile;
}

bool conv2d_winograd_wgrad_applies(const Conv2dGeometry& g) {
  return conv2d_winograd_applies(g) && std::min(g.C, g.K) >= kMinWgradChannels && g.P * g.Q >= kMinWgradPixels;
}

bool conv2d_fwd_winograd(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                         bool relu, at::Tensor& y) {
  const Pass p(g.N, g.C, g.H, g.W, g.ph, g.pw, g.K);
  const Scratch<float> U_buf(kWinoU, 16 * g.K * g.C);  // the calling thread's; the workers only read it
  float* const U = U_buf.get();
  const double w_max = bits_to_abs(weight_transform(w.const_data_ptr<float>(), g.K, g.C, /*rot=*/false, U));
  if (!in_range(0.0, w_max, double(g.C))) return false;
  const float* b = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  float* const yp = y.mutable_data_ptr<float>();
  const uint32_t x_max = run_forward(p, x.const_data_ptr<float>(), U, Gemm::kForward,
                                     [&](int64_t n, int64_t k, int64_t h, const float* row) {
                                       float* dst = yp + ((n * g.K + k) * g.P + h) * g.Q;
                                       const Vec bk(b ? b[k] : 0.f);
                                       for (int64_t q = 0; q < g.Q; q += kVec) {
                                         const int64_t cnt = std::min<int64_t>(kVec, g.Q - q);
                                         Vec v = load(row + q, cnt) + bk;
                                         if (relu) v = at::vec::maximum(v, Vec(0.f));  // NaN stays NaN
                                         vstore(v, dst + q, cnt);
                                       }
                                     });
  return in_range(bits_to_abs(x_max), w_max, double(g.C));
}

bool conv2d_dgrad_winograd(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx) {
  // dx = dy, zero-padded by 2 - p on each side, correlated with w rotated by 180 degrees (k <-> c):
  // a forward pass from K to C channels whose U[xi] is the rotated kernels' transform, transposed.
  const Pass p(g.N, g.K, g.P, g.Q, 2 - g.ph, 2 - g.pw, g.C);
  const Scratch<float> U_buf(kWinoU, 16 * g.K * g.C);
  float* const U = U_buf.get();
  const double w_max = bits_to_abs(weight_transform(w.const_data_ptr<float>(), g.K, g.C, /*rot=*/true, U));
  if (!in_range(0.0, w_max, double(g.K))) return false;
  float* const dxp = dx.mutable_data_ptr<float>();
  const uint32_t dy_max = run_forward(p, dy.const_data_ptr<float>(), U, Gemm::kDgrad,
                                      [&](int64_t n, int64_t c, int64_t h, const float* row) {
                                        std::memcpy(dxp + ((n * g.C + c) * g.H + h) * g.W, row, sizeof(float) * g.W);
                                      });
  return in_range(bits_to_abs(dy_max), w_max, double(g.K));
}

bool conv2d_wgrad_winograd(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw) {
  const Pass p(g.N, g.C, g.H, g.W, g.ph, g.pw, g.K);
  const int64_t rb = p.block_rows(kMinWgradTiles, 2), blocks = (p.rows() + rb - 1) / rb, nbmax = rb * p.TW;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(blocks, at::get_num_threads()));
  const int64_t part_size = 16 * g.K * g.C;
  // Per chunk: the float32 dU of its latest block and, when a chunk has several blocks, their sum in
  // float64 (a float32 running sum over thousands of tiles lost more than torch's own wgrad). Both the
  // calling thread's scratch, written by the workers.
  const bool several = blocks > chunks;
  const Scratch<float> part_buf(kWinoPart, chunks * part_size);
  const Scratch<double> part64_buf(kWinoPart64, several ? chunks * part_size : 0);
  float* const part = part_buf.get();
  double* const part64 = several ? part64_buf.get() : nullptr;
  std::vector<uint32_t> x_maxima(static_cast<size_t>(chunks), 0), dy_maxima(static_cast<size_t>(chunks), 0);
  const float* xp = x.const_data_ptr<float>();
  const float* dyp = dy.const_data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const Scratch<float> V_buf(kWinoV, 16 * p.Ci * nbmax), dM_buf(kWinoM, 16 * p.Co * nbmax),
        work_buf(kWinoWork, p.work_floats(rb));
    float* const V = V_buf.get();
    float* const dM = dM_buf.get();
    float* const work = work_buf.get();
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      float* const out = part + chunk * part_size;
      double* const sum = several ? part64 + chunk * part_size : nullptr;
      const int64_t b0 = blocks * chunk / chunks, b1 = blocks * (chunk + 1) / chunks;
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * rb, r1 = std::min(p.rows(), r0 + rb), nb = (r1 - r0) * p.TW;
        x_maxima[chunk] = std::max(x_maxima[chunk], input_transform(xp, p, r0, r1, nb, V, work));
        dy_maxima[chunk] = std::max(dy_maxima[chunk], grad_transform(dyp, p, r0, r1, nb, dM, work));
        // dU[xi] (K x C) = dM[xi] (K x nb) V[xi]^T (nb x C)
        batched_gemm(Gemm::kWgrad, g.K, g.C, nb, dM, V, out);
        if (sum != nullptr) {
          for (int64_t i = 0; i < part_size; ++i) sum[i] = (blk == b0 ? 0.0 : sum[i]) + double(out[i]);
        }
      }
    }
  });
  const double x_max = bits_to_abs(*std::max_element(x_maxima.begin(), x_maxima.end()));
  const double dy_max = bits_to_abs(*std::max_element(dy_maxima.begin(), dy_maxima.end()));
  // V <= 4 max|x|, dM <= 4 max|dy| (A's rows sum two entries of magnitude one, each way), summed over
  // one block's tiles in float32, then G^T . G sums 9 of those with weights at most 1.
  if (!(std::isfinite(x_max) && std::isfinite(dy_max) && 16.0 * x_max * dy_max * double(nbmax) * 9.0 < kSafe)) {
    return false;
  }
  // dw = G^T dU G per (k, c), in float64, rounded once.
  //   G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1]
  float* const dwp = dw.mutable_data_ptr<float>();
  at::parallel_for(0, g.K, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t c = 0; c < g.C; ++c) {
        double u[4][4];  // dU summed over the chunks in order
        for (int64_t xi = 0; xi < 16; ++xi) {
          const int64_t i = (xi * g.K + k) * g.C + c;
          double v = 0.0;
          for (int64_t ch = 0; ch < chunks; ++ch) v += several ? part64[ch * part_size + i] : part[ch * part_size + i];
          u[xi / 4][xi % 4] = v;
        }
        double s[3][4];
        for (int64_t b = 0; b < 4; ++b) {
          s[0][b] = u[0][b] + 0.5 * (u[1][b] + u[2][b]);
          s[1][b] = 0.5 * (u[1][b] - u[2][b]);
          s[2][b] = 0.5 * (u[1][b] + u[2][b]) + u[3][b];
        }
        for (int64_t r = 0; r < 3; ++r) {
          float* out = dwp + (k * g.C + c) * 9 + r * 3;
          out[0] = static_cast<float>(s[r][0] + 0.5 * (s[r][1] + s[r][2]));
          out[1] = static_cast<float>(0.5 * (s[r][1] - s[r][2]));
          out[2] = static_cast<float>(0.5 * (s[r][1] + s[r][2]) + s[r][3]);
        }
      }
    }
  });
  return true;
}

}  // namespace fastops::cpu
