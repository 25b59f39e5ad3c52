// Conv2d on CPU for depthwise and few-channel groups: direct row kernels vectorised along the output
// width (NCHW), no im2col and no GEMM, for float32 and float64 (float16 / bfloat16 computed in float32).
//
// Math (x (N, C, H, W), w (K, Cg, R, S), Cg = C / G, Kg = K / G, y (N, K, P, Q); output channel
// k = gi Kg + m reads input channels gi Cg + c; hi = p sh - ph + r dh, wi = q sw - pw + s dw):
//   y[n, k, p, q]   = b[k] + sum_{c, r, s} w[k, c, r, s] x[n, gi Cg + c, hi, wi]   (then ReLU if asked)
//   dx[n, gi Cg + c, h, w] = sum_{m, r, s} w[gi Kg + m, c, r, s] dy[n, gi Kg + m, p, q] over the (p, q)
//                    with p sh - ph + r dh = h, q sw - pw + s dw = w
//   dw[k, c, r, s]  = sum_{n, p, q} dy[n, k, p, q] x[n, gi Cg + c, hi, wi];   db[k] = sum_{n, p, q} dy[n, k, p, q]
// FLOPs: 2 N K P Q Cg R S per pass. Depthwise (Cg = 1) does R S multiply-adds per output: as a GEMM
// per group that is a (Kg x R S) x (R S x P Q) product whose reduction (9 for 3x3) is too short for
// BLAS, and the im2col gather costs as much as the arithmetic. Here every pass is a sum of shifted
// rows, one fused multiply-add per tap per vector of outputs.
//
// Row kernels. A source image (one sample, one group: Cg planes of x for the forward / wgrad, Kg
// planes of dy for dgrad) is copied once into a zero-bordered grid, so that every tap of every output
// row is a plain (unmasked) vector load at a fixed offset off[t] from the row's base:
//   forward / wgrad: x on its padded grid (H + 2 ph rows), each row split into sw phases (columns
//     j = sw i + phase stored at [phase][i]), so a stride-sw tap s reads phase (s dw) % sw at index
//     q + (s dw) / sw: contiguous in q for any stride; output row p starts at row p sh;
//   dgrad: dy placed at ((R-1) dh - ph + p sh, (S-1) dw - pw + q sw) on a grid of H + (R-1) dh rows of
//     W + (S-1) dw columns (zeros between the samples of a strided dy, cropped where padding exceeds
//     the kernel's reach), read with the flipped taps (R-1-r, S-1-s): dgrad is then a stride-1
//     forward of that grid, summed over the Kg dy planes of the group. With sh > 1, dx's rows are
//     taken in classes h = cls (mod sh), each reading only the kernel rows that meet dy's rows (the
//     zero rows between them are skipped; the zero columns are not: a vector spans both parities).
// Each phase row carries one vector of zero slack, so the last vector of a row may read past Q (the
// extra lanes are computed and never stored). The grid's border is written zero once per thread and
// every image placed in it overwrites the same interior, so it stays zero.
//   forward / dgrad (gather_rows): 8 (then 4, 1) output rows x one vector of columns accumulate in
//     registers over the taps (one broadcast weight, 8 independent FMA chains: the FMA latency is
//     hidden), bias first, ReLU on the accumulator, one (rounded) store;
//   wgrad (wgrad_taps): 8 (then 4, 1) taps' accumulators in registers sweep the dy plane: per vector
//     of dy, one FMA per tap with the shifted x row. Tail vectors load x masked (zero lanes), so
//     dy's zero lanes never multiply an x value the output does not use (0 x inf would be NaN).
//   AVX-512, float32 arithmetic, stride-1 rows (no phases), (S - 1) dw <= 16: the S taps of one
//     kernel row read one window of the grid row, so both kernels load two vectors per output row
//     (forward / dgrad) or per dy vector (wgrad) and cut each tap's window out of the pair with one
//     lane permute (vpermt2ps): the one-load-per-tap kernels were load-bound (~2 cycles per FMA,
//     most loads crossing a cache line); measured 1 thread, N8 C96 14x14 7x7: forward 0.36-0.55
//     -> 0.16 ms, wgrad 0.48 -> 0.24 ms.
// Decomposition: forward over (n, group) items, split across threads; backward over groups, each
// thread summing its groups' dw / db over the samples in order (deterministic, no partials to add).
//
// Traffic: x (or dy) read once into the grid (one write of a slightly larger grid, L1/L2-resident per
// image), y / dx written once, w read from L1: ~ (2 N C H W + N K P Q) elements per pass, versus the
// GEMM path's R S-fold gathered tile for depthwise. torch's CPU depthwise (oneDNN's direct kernels)
// gathers nothing either.
//
// Numerics: accumulation in the compute type (float32 for float16 / bfloat16 / float32, float64),
// one fused multiply-add per tap in (c, r, s) order (forward), (m, r, s) order (dgrad); dw and db sum
// over samples in order, then across the vector lanes. Each output rounded to its dtype once; ReLU
// on the accumulator (commutes with rounding). Non-finite values: the forward multiplies the zero
// padding by w (as the im2col path does); dgrad also multiplies the zero border around dy by w, so the
// caller sends a non-finite w's dgrad to the GEMM path (weight_all_finite).
//
// Preconditions: contiguous NCHW x / dy / outputs and KCRS w of one dtype, G >= 2, checked geometry
// (check_conv2d_args), N, P, Q >= 1. Scratch: per thread, one grid image (Cg or Kg planes).
#include "cpu/conv2d_depthwise.h"

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/reduced_float.h"

namespace fastops::cpu {
namespace {

// Up to this many input and output channels per group, the direct kernel beats the tiled GEMM
// (whose reduction C R S is then <= 36 for 3x3).
constexpr int64_t kDirectGroupMaxChannels = 4;

// The layout of a grid image: `planes` planes of `rows` rows; each row holds `phases` segments of
// phase_len elements (ceil(cols / phases) columns plus one vector of zero slack).
struct GridShape {
  int64_t rows, cols, phases, phase_len, planes, lanes;
  GridShape(int64_t rows_, int64_t cols_, int64_t phases_, int64_t planes_, int64_t lanes_)
      : rows(rows_), cols(cols_), phases(phases_), phase_len((cols_ + phases_ - 1) / phases_ + lanes_),
        planes(planes_), lanes(lanes_) {}
  int64_t row_stride() const { return phases * phase_len; }
  int64_t plane() const { return rows * row_stride(); }
  // Plus one vector past the last row: the shifted-window kernel's second load (gather_rows_shift).
  int64_t size() const { return planes * plane() + lanes; }
  // Offset of grid (row h, column j) within a plane.
  int64_t at(int64_t h, int64_t j) const { return h * row_stride() + (j % phases) * phase_len + j / phases; }
};

// dst[0, n) = src[0, n) widened: inline vector copies (rows are short: a memcpy call per 16-float
// row cost more than the copy).
template <typename S, typename T>
inline void copy_row(const S* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<S, T>) {
    using V = Vectorized<T>;
    int64_t i = 0;
    for (; i + V::size() <= n; i += V::size()) V::loadu(src + i).store(dst + i);
    if (i < n) V::loadu(src + i, n - i).store(dst + i, n - i);
  } else {
    convert_n(src, dst, n);
  }
}

// Stride 2: grid columns j = ow + w, w in [w0, w1), to phase j % 2 at index j / 2 (phase 1 starts
// phase_len after phase 0), 2 vectors split into even / odd lanes per step (the scalar loop was
// most of a stride-2 forward: 28 x 28 images, 9 taps on 14 x 14 outputs).
template <typename T>
inline void place_two_phases(const T* s, int64_t w0, int64_t w1, int64_t ow, int64_t phase_len, T* row) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  int64_t w = w0;
  const auto one = [&](int64_t i) { row[((ow + i) & 1) * phase_len + (ow + i) / 2] = s[i]; };
  if (w < w1 && ((ow + w) & 1)) one(w++);
  T* even = row + (ow + w) / 2;  // s[w + 2 i] -> even[i], s[w + 2 i + 1] -> odd[i]
  T* odd = even + phase_len;
  for (; w + 2 * L <= w1; w += 2 * L, even += L, odd += L) {
    const auto [e, o] = at::vec::deinterleave2(V::loadu(s + w), V::loadu(s + w + L));
    e.store(even);
    o.store(odd);
  }
  const int64_t n = w1 - w;  // < 2 L left: masked loads and stores (a 28-wide row is all tail)
  if (n > 0) {
    const V lo = V::loadu(s + w, std::min(n, L));
    const V hi = n > L ? V::loadu(s + w + L, n - L) : V(T(0));
    const auto [e, o] = at::vec::deinterleave2(lo, hi);
    e.store(even, (n + 1) / 2);
    if (n > 1) o.store(odd, n / 2);
  }
}

// Plane `dst` of the grid <- src (Hsrc x Wsrc) with element (h, w) at grid (oh + h step_h, ow + w
// step_w), cropped to the grid. Either step_w or phases is 1 (dgrad spreads, the forward phases).
template <typename S, typename T>
void place(const GridShape& gs, const S* src, int64_t Hsrc, int64_t Wsrc, int64_t oh, int64_t ow, int64_t step_h,
           int64_t step_w, T* dst) {
  // Source columns whose grid column ow + w step_w lies in [0, cols).
  const int64_t w0 = ow >= 0 ? 0 : (-ow + step_w - 1) / step_w;
  const int64_t w1 = std::min<int64_t>(Wsrc, ow >= gs.cols ? 0 : (gs.cols - 1 - ow) / step_w + 1);
  if (w1 <= w0) return;
  for (int64_t h = 0; h < Hsrc; ++h) {
    const int64_t gh = oh + h * step_h;
    if (gh < 0 || gh >= gs.rows) continue;
    const S* s = src + h * Wsrc;
    T* row = dst + gh * gs.row_stride();
    if (gs.phases == 1 && step_w == 1) {
      copy_row(s + w0, row + ow + w0, w1 - w0);
    } else if (gs.phases == 1) {
      for (int64_t w = w0; w < w1; ++w) row[ow + w * step_w] = static_cast<T>(s[w]);
    } else if (gs.phases == 2 && std::is_same_v<S, T>) {
      if constexpr (std::is_same_v<S, T>) place_two_phases(s, w0, w1, ow, gs.phase_len, row);
    } else {
      // Phase ph holds the grid columns j = ow + w with j % phases == ph, at index j / phases.
      for (int64_t ph = 0; ph < gs.phases; ++ph) {
        int64_t w = w0 + ((ph - (ow + w0)) % gs.phases + gs.phases) % gs.phases;
        T* dst = row + ph * gs.phase_len + (ow + w) / gs.phases;
        for (; w < w1; w += gs.phases) *dst++ = static_cast<T>(s[w]);
      }
    }
  }
}

// NR output rows (row_step apart in the source) x one vector of columns: bias + sum_t wt[t]
// src[off[t] ..], ReLU when asked, the first `count` lanes stored (rounded to S) at out + i ld.
template <typename S, int NR>
inline void gather_rows(const compute_t<S>* src, int64_t row_step, const int64_t* off, const compute_t<S>* wt,
                        int64_t ntaps, compute_t<S> bias, bool relu, S* out, int64_t ld, int64_t count) {
  using T = compute_t<S>;
  using V = Vectorized<T>;
  V acc[NR];
  for (int i = 0; i < NR; ++i) acc[i] = V(bias);
  for (int64_t t = 0; t < ntaps; ++t) {
    const V wv(wt[t]);
    const T* p = src + off[t];
    for (int i = 0; i < NR; ++i) acc[i] = at::vec::fmadd(wv, V::loadu(p + i * row_step), acc[i]);
  }
  const V zero(T(0));
  for (int i = 0; i < NR; ++i) store_narrow(relu ? at::vec::maximum(acc[i], zero) : acc[i], out + i * ld, count);
}

#if defined(CPU_CAPABILITY_AVX512)
// gather_rows for float32 arithmetic when the taps come in runs of S along one grid row, dw apart
// (stride-1 rows: no phases), with (S - 1) dw <= 16: per run, two loads per output row cover all S
// taps, each tap's window cut out of the pair by one lane permute (vpermt2ps). The plain kernel
// loads once per tap, most loads crossing a cache line: it was load-bound at ~2 cycles per FMA
// on 7x7. idx[s] = {s dw, s dw + 1, .., s dw + 15}; reads up to 31 floats past a run's start (the
// grid's slack covers the last row).
template <typename S, int NR>
inline void gather_rows_shift(const float* src, int64_t row_step, const int64_t* off, const float* wt,
                              int64_t ntaps, int64_t S_, const __m512i* idx, float bias, bool relu, S* out,
                              int64_t ld, int64_t count) {
  __m512 acc[NR];
  for (int i = 0; i < NR; ++i) acc[i] = _mm512_set1_ps(bias);
  for (int64_t t = 0; t < ntaps; t += S_) {
    const float* p = src + off[t];
    __m512 lo[NR], hi[NR];
    for (int i = 0; i < NR; ++i) {
      lo[i] = _mm512_loadu_ps(p + i * row_step);
      hi[i] = _mm512_loadu_ps(p + i * row_step + 16);
    }
    for (int64_t s = 0; s < S_; ++s) {
      const __m512 wv = _mm512_set1_ps(wt[t + s]);
      const __m512i ix = idx[s];
      for (int i = 0; i < NR; ++i) acc[i] = _mm512_fmadd_ps(wv, _mm512_permutex2var_ps(lo[i], ix, hi[i]), acc[i]);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int i = 0; i < NR; ++i) {
    // max(NaN, 0) must stay NaN, as at::vec::maximum keeps it: pass NaN lanes through.
    const __m512 v = relu ? _mm512_mask_blend_ps(_mm512_cmp_ps_mask(acc[i], acc[i], _CMP_UNORD_Q),
                                                 _mm512_max_ps(acc[i], zero), acc[i])
                          : acc[i];
    store_narrow(Vectorized<float>(v), out + i * ld, count);
  }
}
#endif

// The run structure gather_rows_shift needs: taps in runs of `width` (the kernel's S) along a grid
// row, `dw` apart, a stride-1 row layout (phases == 1).
struct TapRuns {
  int64_t width = 1, dw = 1;
  bool contiguous_rows = false;
};

// rows(std::integral_constant<int, n>{}) for the last n = 1..7 rows of a plane (none for n = 0): the
// row count is a template argument of the row kernels, so each remainder is its own instantiation.
template <typename Rows>
inline void for_row_block(int64_t n, const Rows& rows) {
  switch (n) {
    case 7: rows(std::integral_constant<int, 7>{}); break;
    case 6: rows(std::integral_constant<int, 6>{}); break;
    case 5: rows(std::integral_constant<int, 5>{}); break;
    case 4: rows(std::integral_constant<int, 4>{}); break;
    case 3: rows(std::integral_constant<int, 3>{}); break;
    case 2: rows(std::integral_constant<int, 2>{}); break;
    case 1: rows(std::integral_constant<int, 1>{}); break;
    default: break;
  }
}

// One output plane (P rows of Q, ld apart) from the grid image at src: output row p starts at
// src + p row_step, tap t at off[t] from there.
template <typename S>
void gather_plane(const compute_t<S>* src, int64_t row_step, const int64_t* off, const compute_t<S>* wt,
                  int64_t ntaps, compute_t<S> bias, bool relu, S* out, int64_t P, int64_t Q, const TapRuns& runs,
                  int64_t ld) {
  constexpr int64_t L = Vectorized<compute_t<S>>::size();
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<compute_t<S>, float>) {
    if (runs.contiguous_rows && (runs.width - 1) * runs.dw <= 16 && runs.width <= 32 && ntaps % runs.width == 0) {
      alignas(64) __m512i idx[32];
      for (int64_t s = 0; s < runs.width; ++s) {
        idx[s] = _mm512_add_epi32(_mm512_set1_epi32(int(s * runs.dw)),
                                  _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
      }
      for (int64_t q0 = 0; q0 < Q; q0 += L) {
        const int64_t n = std::min(L, Q - q0);
        int64_t p = 0;
        const auto rows = [&](auto nr) {
          gather_rows_shift<S, decltype(nr)::value>(src + p * row_step + q0, row_step, off, wt, ntaps, runs.width,
                                                    idx, bias, relu, out + p * ld + q0, ld, n);
        };
        for (; p + 8 <= P; p += 8) rows(std::integral_constant<int, 8>{});
        for_row_block(P - p, rows);
      }
      return;
    }
  }
#endif
  for (int64_t q0 = 0; q0 < Q; q0 += L) {
    const int64_t n = std::min(L, Q - q0);
    int64_t p = 0;
    for (; p + 8 <= P; p += 8) {
      gather_rows<S, 8>(src + p * row_step + q0, row_step, off, wt, ntaps, bias, relu, out + p * ld + q0, ld, n);
    }
    // The last 1-7 rows in one block: a lone row's taps form one dependent FMA chain (4 cycles
    // each), which made 7x7 / 14-row planes (8 + 4 + 1 + 1 rows) twice as slow.
    const auto rows = [&](auto nr) {
      gather_rows<S, decltype(nr)::value>(src + p * row_step + q0, row_step, off, wt, ntaps, bias, relu,
                                          out + p * ld + q0, ld, n);
    };
    for_row_block(P - p, rows);
  }
}

// acc[j] += sum_{p, q} dy[p, q] src[p row_step + off[j] + q] for NT taps, lane-wise (the caller sums
// the lanes once at the end).
template <typename T, int NT>
inline void wgrad_taps(const T* src, int64_t row_step, const int64_t* off, const T* dy, int64_t P, int64_t Q,
                       Vectorized<T>* acc) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  V a[NT];
  for (int j = 0; j < NT; ++j) a[j] = acc[j];
  for (int64_t p = 0; p < P; ++p) {
    const T* base = src + p * row_step;
    const T* d = dy + p * Q;
    int64_t q0 = 0;
    for (; q0 + L <= Q; q0 += L) {
      const V dv = V::loadu(d + q0);
      for (int j = 0; j < NT; ++j) a[j] = at::vec::fmadd(dv, V::loadu(base + off[j] + q0), a[j]);
    }
    if (q0 < Q) {
      const int64_t n = Q - q0;
      const V dv = V::loadu(d + q0, n);
      for (int j = 0; j < NT; ++j) a[j] = at::vec::fmadd(dv, V::loadu(base + off[j] + q0, n), a[j]);
    }
  }
  for (int j = 0; j < NT; ++j) acc[j] = a[j];
}

#if defined(CPU_CAPABILITY_AVX512)
// wgrad_taps for one run of SW taps along an x row, dw apart ((SW - 1) dw <= 16), float32: per
// vector of dy, two x loads and one lane permute per tap (as gather_rows_shift) instead of a load
// per tap. Lanes past Q are zeroed in both factors (maskz), so an inf beyond the row never meets
// dy's zero lanes.
// NRUN runs at once (run k starts at src + off[k SW]; accumulators acc[k SW + j]): 3x3 kept 3
// accumulators, each one dependent FMA per dy vector (latency-bound); 3 runs give 9 chains.
template <int SW, int NRUN>
inline void wgrad_run_shift(const float* src, const int64_t* off, int64_t row_step, const float* dy, int64_t P,
                            int64_t Q, const __m512i* idx, Vectorized<float>* acc) {
  __m512 a[NRUN][SW];
  for (int k = 0; k < NRUN; ++k) {
    for (int j = 0; j < SW; ++j) a[k][j] = acc[k * SW + j];
  }
  for (int64_t p = 0; p < P; ++p) {
    const float* base = src + p * row_step;
    const float* d = dy + p * Q;
    for (int64_t q0 = 0; q0 < Q; q0 += 16) {
      const int64_t n = std::min<int64_t>(16, Q - q0);
      const __mmask16 m = n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
      const __m512 dv = _mm512_maskz_loadu_ps(m, d + q0);
      for (int k = 0; k < NRUN; ++k) {
        const float* b = base + off[k * SW] + q0;
        const __m512 lo = _mm512_loadu_ps(b), hi = _mm512_loadu_ps(b + 16);
        for (int j = 0; j < SW; ++j) {
          a[k][j] = _mm512_fmadd_ps(dv, _mm512_maskz_permutex2var_ps(m, lo, idx[j], hi), a[k][j]);
        }
      }
    }
  }
  for (int k = 0; k < NRUN; ++k) {
    for (int j = 0; j < SW; ++j) acc[k * SW + j] = a[k][j];
  }
}
#endif

template <typename T>
void wgrad_plane(const T* src, int64_t row_step, const int64_t* off, int64_t ntaps, const T* dy, int64_t P,
                 int64_t Q, Vectorized<T>* acc, const TapRuns& runs) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const int64_t w = runs.width;
    if (runs.contiguous_rows && (w == 3 || w == 5 || w == 7) && (w - 1) * runs.dw <= 16 && ntaps % w == 0) {
      __m512i idx[7];
      for (int64_t s = 0; s < w; ++s) {
        idx[s] = _mm512_add_epi32(_mm512_set1_epi32(int(s * runs.dw)),
                                  _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
      }
      int64_t t = 0;
      if (w == 3) {
        for (; t + 9 <= ntaps; t += 9) wgrad_run_shift<3, 3>(src, off + t, row_step, dy, P, Q, idx, acc + t);
      } else if (w == 5) {
        for (; t + 10 <= ntaps; t += 10) wgrad_run_shift<5, 2>(src, off + t, row_step, dy, P, Q, idx, acc + t);
      }
      for (; t < ntaps; t += w) {
        if (w == 3) wgrad_run_shift<3, 1>(src, off + t, row_step, dy, P, Q, idx, acc + t);
        if (w == 5) wgrad_run_shift<5, 1>(src, off + t, row_step, dy, P, Q, idx, acc + t);
        if (w == 7) wgrad_run_shift<7, 1>(src, off + t, row_step, dy, P, Q, idx, acc + t);
      }
      return;
    }
  }
#endif
  int64_t t = 0;
  for (; t + 8 <= ntaps; t += 8) wgrad_taps<T, 8>(src, row_step, off + t, dy, P, Q, acc + t);
  for (; t + 4 <= ntaps; t += 4) wgrad_taps<T, 4>(src, row_step, off + t, dy, P, Q, acc + t);
  for (; t < ntaps; ++t) wgrad_taps<T, 1>(src, row_step, off + t, dy, P, Q, acc + t);
}

// The forward / wgrad grid of one (sample, group): Cg planes of x on the padded grid, sw phases.
GridShape input_grid(const Conv2dGeometry& g, int64_t lanes) {
  return GridShape(g.H + 2 * g.ph, g.W + 2 * g.pw, g.sw, g.Cg, lanes);
}

// off[(c R + r) S + s]: tap (c, r, s) relative to an output row's start on the input grid.
std::vector<int64_t> input_taps(const Conv2dGeometry& g, const GridShape& gs) {
  std::vector<int64_t> off(static_cast<size_t>(g.crs()));
  for (int64_t c = 0; c < g.Cg; ++c) {
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) off[(c * g.R + r) * g.S + s] = c * gs.plane() + gs.at(r * g.dh, s * g.dw);
    }
  }
  return off;
}

template <typename S>
void fwd_impl(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, bool relu,
              at::Tensor& y) {
  using T = compute_t<S>;
  const int64_t ntaps = g.crs(), PQ = g.pq(), HW = g.hw();
  std::vector<T> wt(static_cast<size_t>(g.K * ntaps)), bt(static_cast<size_t>(g.K), T(0));
  convert_n(w.const_data_ptr<S>(), wt.data(), g.K * ntaps);
  if (bias.defined()) convert_n(bias.const_data_ptr<S>(), bt.data(), g.K);
  const GridShape gs = input_grid(g, Vectorized<T>::size());
  const std::vector<int64_t> off = input_taps(g, gs);
  const TapRuns runs{g.S, g.dw, gs.phases == 1};
  const S* xp = x.const_data_ptr<S>();
  S* yp = y.mutable_data_ptr<S>();
  at::parallel_for(0, g.N * g.G, 1, [&](int64_t i0, int64_t i1) {
    std::vector<T> grid(static_cast<size_t>(gs.size()), T(0));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / g.G, gi = i % g.G;
      for (int64_t c = 0; c < g.Cg; ++c) {
        place(gs, xp + (n * g.C + gi * g.Cg + c) * HW, g.H, g.W, g.ph, g.pw, 1, 1, grid.data() + c * gs.plane());
      }
      for (int64_t k = gi * g.Kg; k < (gi + 1) * g.Kg; ++k) {
        gather_plane<S>(grid.data(), g.sh * gs.row_stride(), off.data(), wt.data() + k * ntaps, ntaps, bt[k], relu,
                        yp + (n * g.K + k) * PQ, g.P, g.Q, runs, g.Q);
      }
    }
  });
}

template <typename S>
void bwd_impl(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, at::Tensor* dx,
              at::Tensor* dw, at::Tensor* db) {
  using T = compute_t<S>;
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t RS = g.R * g.S, ntaps = g.crs(), PQ = g.pq(), HW = g.hw();
  const S* dyp = dy.const_data_ptr<S>();
  const S* xp = x.const_data_ptr<S>();
  const S* wp = w.const_data_ptr<S>();
  // wgrad: x's forward grid and taps.
  const GridShape xs = input_grid(g, L);
  const std::vector<int64_t> xoff = input_taps(g, xs);
  // dgrad: dy's grid (stride 1 over dx), taps (m, r', s') and per input channel the flipped weights
  // wd[(gi Cg + c) Kg R S + (m R + r') S + s'] = w[gi Kg + m, c, R-1-r', S-1-s'].
  const GridShape ds(g.H + (g.R - 1) * g.dh, g.W + (g.S - 1) * g.dw, 1, g.Kg, L);
  const int64_t dtaps = g.Kg * RS;
  std::vector<int64_t> doff(static_cast<size_t>(dtaps));
  std::vector<T> wd;
  struct DgradClass {
    int64_t ntaps = 0;
    std::vector<int64_t> off;
    std::vector<T> wt;  // [input channel][tap]
  };
  std::vector<DgradClass> classes(static_cast<size_t>(g.sh));
  const int64_t oh = (g.R - 1) * g.dh - g.ph, ow = (g.S - 1) * g.dw - g.pw;
  if (dx) {
    for (int64_t m = 0; m < g.Kg; ++m) {
      for (int64_t r = 0; r < g.R; ++r) {
        for (int64_t s = 0; s < g.S; ++s) doff[(m * g.R + r) * g.S + s] = m * ds.plane() + ds.at(r * g.dh, s * g.dw);
      }
    }
    wd.resize(static_cast<size_t>(g.C * dtaps));
    for (int64_t gi = 0; gi < g.G; ++gi) {
      for (int64_t c = 0; c < g.Cg; ++c) {
        for (int64_t m = 0; m < g.Kg; ++m) {
          for (int64_t t = 0; t < RS; ++t) {
            wd[(gi * g.Cg + c) * dtaps + m * RS + (RS - 1 - t)] =
                static_cast<T>(wp[((gi * g.Kg + m) * g.Cg + c) * RS + t]);
          }
        }
      }
    }
    // Row classes h = cls (mod sh): grid row h + r' dh holds dy only when h + r' dh - oh is a multiple
    // of sh, the same r' for the whole class, so each class reads only its kernel rows (whole runs
    // of S taps): a strided dgrad skips the zero rows between dy's rows (half the taps at stride 2).
    for (int64_t cls = 0; cls < g.sh; ++cls) {
      std::vector<int64_t> sel;
      for (int64_t m = 0; m < g.Kg; ++m) {
        for (int64_t r = 0; r < g.R; ++r) {
          if (((cls + r * g.dh - oh) % g.sh + g.sh) % g.sh != 0) continue;
          for (int64_t s = 0; s < g.S; ++s) sel.push_back((m * g.R + r) * g.S + s);
        }
      }
      DgradClass& dc = classes[cls];
      dc.ntaps = static_cast<int64_t>(sel.size());
      for (int64_t t : sel) dc.off.push_back(doff[t]);
      dc.wt.resize(static_cast<size_t>(g.C * dc.ntaps));
      for (int64_t ci = 0; ci < g.C; ++ci) {
        for (int64_t j = 0; j < dc.ntaps; ++j) dc.wt[ci * dc.ntaps + j] = wd[ci * dtaps + sel[j]];
      }
    }
  }
  const TapRuns druns{g.S, g.dw, true}, xruns{g.S, g.dw, xs.phases == 1};
  S* dxp = dx ? dx->mutable_data_ptr<S>() : nullptr;
  S* dwp = dw ? dw->mutable_data_ptr<S>() : nullptr;
  S* dbp = db ? db->mutable_data_ptr<S>() : nullptr;
  at::parallel_for(0, g.G, 1, [&](int64_t g0, int64_t g1) {
    std::vector<T> dgrid(dx ? static_cast<size_t>(ds.size()) : 0, T(0));
    std::vector<T> xgrid(dw ? static_cast<size_t>(xs.size()) : 0, T(0));
    std::vector<T> dy_wide(is_reduced_v<S> && dw ? static_cast<size_t>(PQ) : 0);
    std::vector<V> acc(dw ? static_cast<size_t>(g.Kg * ntaps) : 0);
    std::vector<V> bsum(db ? static_cast<size_t>(g.Kg) : 0);
    for (int64_t gi = g0; gi < g1; ++gi) {
      std::fill(acc.begin(), acc.end(), V(T(0)));
      std::fill(bsum.begin(), bsum.end(), V(T(0)));
      for (int64_t n = 0; n < g.N; ++n) {
        const S* dyg = dyp + (n * g.K + gi * g.Kg) * PQ;  // the group's Kg dy planes
        if (dx) {
          for (int64_t m = 0; m < g.Kg; ++m) {
            place(ds, dyg + m * PQ, g.P, g.Q, oh, ow, g.sh, g.sw, dgrid.data() + m * ds.plane());
          }
          for (int64_t c = 0; c < g.Cg; ++c) {
            for (int64_t cls = 0; cls < std::min(g.sh, g.H); ++cls) {
              const DgradClass& dc = classes[cls];
              gather_plane<S>(dgrid.data() + cls * ds.row_stride(), g.sh * ds.row_stride(), dc.off.data(),
                              dc.wt.data() + (gi * g.Cg + c) * dc.ntaps, dc.ntaps, T(0), false,
                              dxp + (n * g.C + gi * g.Cg + c) * HW + cls * g.W, (g.H - cls + g.sh - 1) / g.sh, g.W,
                              druns, g.sh * g.W);
            }
          }
        }
        if (dw) {
          for (int64_t c = 0; c < g.Cg; ++c) {
            place(xs, xp + (n * g.C + gi * g.Cg + c) * HW, g.H, g.W, g.ph, g.pw, 1, 1, xgrid.data() + c * xs.plane());
          }
          for (int64_t m = 0; m < g.Kg; ++m) {
            const T* d = widen(dyg + m * PQ, PQ, dy_wide.data());
            wgrad_plane(xgrid.data(), g.sh * xs.row_stride(), xoff.data(), ntaps, d, g.P, g.Q, acc.data() + m * ntaps,
                        xruns);
          }
        }
        if (db) {
          for (int64_t m = 0; m < g.Kg; ++m) {
            const S* d = dyg + m * PQ;
            int64_t i = 0;
            for (; i + L <= PQ; i += L) bsum[m] = bsum[m] + load_wide(d + i);
            if (i < PQ) bsum[m] = bsum[m] + load_wide(d + i, PQ - i);
          }
        }
      }
      const auto lane_sum = [](const V& v) { return at::vec::vec_reduce_all<T>([](V a, V b) { return a + b; }, v); };
      for (int64_t m = 0; m < g.Kg; ++m) {
        const int64_t k = gi * g.Kg + m;
        if (dw) {
          for (int64_t t = 0; t < ntaps; ++t) dwp[k * ntaps + t] = static_cast<S>(lane_sum(acc[m * ntaps + t]));
        }
        if (db) dbp[k] = static_cast<S>(lane_sum(bsum[m]));
      }
    }
  });
}

}  // namespace

bool conv2d_direct_grouped_applies(const Conv2dGeometry& g) {
  return g.G >= 2 && (g.Cg == 1 || (g.Cg <= kDirectGroupMaxChannels && g.Kg <= kDirectGroupMaxChannels));
}

// A plain loop: the weight is small (K Cg R S), and isfinite().all().item() cost ~15 us of tensor
// allocations and dispatch per backward, 5% of a small depthwise layer's forward + backward.
template <typename S>
bool all_finite(const S* p, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(static_cast<compute_t<S>>(p[i]));
  return ok;
}

bool weight_all_finite(const at::Tensor& w) {
  const at::Tensor c = w.contiguous();
  switch (c.scalar_type()) {
    case at::kFloat:
      return all_finite(c.const_data_ptr<float>(), c.numel());
    case at::kDouble:
      return all_finite(c.const_data_ptr<double>(), c.numel());
    case at::kBFloat16:
      return all_finite(c.const_data_ptr<c10::BFloat16>(), c.numel());
    case at::kHalf:
      return all_finite(c.const_data_ptr<c10::Half>(), c.numel());
    default:
      return at::isfinite(c).all().item<bool>();
  }
}

void conv2d_fwd_direct_grouped(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& w,
                               const at::Tensor& bias, bool relu, at::Tensor& y) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return fwd_impl<float>(g, x, w, bias, relu, y);
    case at::kDouble:
      return fwd_impl<double>(g, x, w, bias, relu, y);
    case at::kBFloat16:
      return fwd_impl<c10::BFloat16>(g, x, w, bias, relu, y);
    case at::kHalf:
      return fwd_impl<c10::Half>(g, x, w, bias, relu, y);
    default:
      FASTOPS_CHECK(false, "conv2d_fwd: no direct grouped kernel for ", x.scalar_type());
  }
}

void conv2d_bwd_direct_grouped(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x,
                               const at::Tensor& w, at::Tensor* dx, at::Tensor* dw, at::Tensor* db) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return bwd_impl<float>(g, dy, x, w, dx, dw, db);
    case at::kDouble:
      return bwd_impl<double>(g, dy, x, w, dx, dw, db);
    case at::kBFloat16:
      return bwd_impl<c10::BFloat16>(g, dy, x, w, dx, dw, db);
    case at::kHalf:
      return bwd_impl<c10::Half>(g, dy, x, w, dx, dw, db);
    default:
      FASTOPS_CHECK(false, "conv2d_bwd: no direct grouped kernel for ", x.scalar_type());
  }
}

}  // namespace fastops::cpu
