// Conv2d, C++ kernels for CPU tensors (float16, bfloat16, float32, float64): forward, grad-input and
// grad-weight.
//
// Math. x (N, C, H, W), w (K, Cg, R, S) with Cg = C / G, y (N, K, P, Q), group g owns channels
// [g Kg, (g+1) Kg) of y and [g Cg, (g+1) Cg) of x. With hi = p sh - ph + r dh, wi = q sw - pw + s dw
// (zero outside the image):
//   y[n, k, p, q]  = b[k] + sum_{c, r, s} w[k, c, r, s] x[n, g Cg + c, hi, wi]     (then ReLU if asked)
//   dx[n, c', h, w] = sum over (k, r, s, p, q) with hi = h, wi = w of w[k, c, r, s] dy[n, k, p, q]
//   dw[k, c, r, s]  = sum_{n, p, q} dy[n, k, p, q] x[n, g Cg + c, hi, wi]
//   db[k]           = sum_{n, p, q} dy[n, k, p, q]
// As GEMMs per (sample n, group g): col = im2col(x[n, g]) is (Cg R S) x (P Q) and
//   y[n, g] (Kg x PQ) = W_g (Kg x CRS) col;  col' = W_g^T dy[n, g], dx[n, g] = col2im(col');
//   dW_g += dy[n, g] col^T.
// FLOPs: 2 N K P Q Cg R S per pass (forward, dgrad, wgrad each).
// Depthwise convs (groups == C >= 2) and groups of at most 4 input and 4 output channels do not come
// here: their GEMMs would be a few rows deep, so conv2d_fwd_cpu / conv2d_bwd_cpu hand them to the
// direct row kernels of conv2d_depthwise.cpp (conv2d_direct_grouped_applies). Everything below is the
// GEMM route (conv2d_bwd_general for the backward).
//
// Decomposition. Samples are split over threads (at::parallel_for over contiguous chunks of n); a
// thread owns its samples' y / dx slabs, so col2im's scatter-add needs no atomics, and owns one
// partial dW / db that are summed in chunk order at the end (deterministic). A chunk's output rows
// (global row = n P + p) are cut into tiles of whole rows such that the gathered column tile,
// CRS x (rows Q), stays within kColBudget elements (256 KiB of float32: L2-resident) unless that
// would leave fewer than kMinCols columns; a tile may span samples, which keeps the GEMM wide on
// small images. The full im2col tensor (N P Q CRS
// elements, 9x the input for 3x3) never exists. Each tile feeds one BLAS GEMM (at::mm_out into a
// strided view of y when the tile lies in one sample, else into a tile buffer copied out), and the
// bias / ReLU epilogue runs on the tile while it is still in cache. The gather reads zero-padded
// planes (a padded copy of the chunk's input when padding > 0), so its inner loops have no bounds
// tests; dgrad scatters into padded planes the same way and copies the interior to dx. 1x1
// stride-1 unpadded convs skip the gather: x[n, g] is the GEMM operand. With a single chunk
// (batch 1) the GEMMs run outside a parallel region, so BLAS threads them.
// bfloat16 (where ATen has oneDNN's brgemm micro-kernel: x86-64 with AVX-512, oneDNN enabled) runs on
// cpublas::brgemm, bfloat16 x bfloat16 -> float32, one call per tile (and tap) inside the thread's
// loop, B in the VNNI layout (row pairs interleaved):
//   stride 1 and >= 8 channels per group: gather-free ("direct") passes, see the section below:
//     the input (dy for dgrad) repacked once into channel-pair planes on its padded grid, each of
//     the R S taps one call whose B is a pointer offset into them, accumulating one float32 tile;
//     outputs computed on the padded grid's width, the extra columns discarded;
//   otherwise the tiles above: forward gathers each tile straight into VNNI (the gather only
//     interleaves, 16 pairs per AVX-512 step), dgrad packs the dy tile in VNNI and scatters the
//     float32 col' into float32 padded planes, wgrad gathers col and packs dy^T in VNNI.
// Bias / ReLU run on the float32 tile; every output is rounded to bfloat16 once. The direct passes'
// repacked images live in per-thread scratch reused across calls (fresh multi-MiB buffers page-
// faulted on every call). float16 (oneDNN's float16 micro-kernel needs AVX512-FP16) and bfloat16
// without the micro-kernel take the widening path: float32 copies of x, w (and dy) through the
// float32 kernels, each output rounded once.
// float32 with stride 1, >= 8 channels per group and a kernel larger than 1x1 runs the same direct
// passes on the micro-kernel's float32 form (plain rows instead of VNNI pairs; f32_direct_applies),
// measured 1.1-1.5x faster fwd+bwd than the tiled BLAS kernel on 3x3 / 5x5 with 8-32 channels per
// group, level with it at 64-128 channels on 28x28-56x56, within noise (up to 10% slower) at 8x8
// (2-core Intel Xeon, AVX-512); 1x1 convs stay on the tiled kernel, which hands each image to the
// BLAS as one GEMM; and small images with many channels (Cg Kg > 64^2 below 28 x 28 outputs) stay
// on the tiled kernel, whose GEMMs span samples (f32_direct_applies).
// Where a tap's reduction has at most 16 channels (fwd: Cg, dgrad: Kg) and the forward output at
// least 256 pixels (P Q, for dgrad too), the float32 direct passes replace the per-tap micro-kernel
// calls with a register-blocked kernel (register_block): 8 output channels x 3 vectors of grid pixels
// (AVX-512; 4 x 3 with 8-wide vectors) accumulate in registers over every (channel, tap) pair, where
// each per-tap call loaded and stored its whole accumulator tile for 8-16 FMAs per element. wgrad
// with at most 16 channels each side and at most 25 taps gets its own (wgrad_register_block): 4 k x
// 6 (c, tap) vector partial sums along the pixels (2 x 6 with 8-wide vectors), dy placed on x's
// grid. Both run ahead of Winograd on those shapes (kRegisterMaxChannels has the per-pass
// measurements).
// Before those, except on the register kernels' shapes, float32 3x3 stride-1 convs with one group, padding <= 2 and >= 16 channels in and out
// run Winograd F(2x2, 3x3) (conv2d_winograd.cpp: 2.25x fewer multiplies) when there are enough tiles
// to pay for the weight transform, the weight gradient only from 64 channels and 28 x 28 outputs;
// a pass whose operands are not finite, or large enough to overflow a transformed intermediate,
// returns false and the kernels above run it.
//
// Traffic (float32): forward reads x once (plus the padded copy: one more read + write of x), the
// gathered tiles live in L2 (R S times the input's bytes pass through L2, not memory), w is read
// once per tile from L2, y written once: ~4 (2 N C H W + N K P Q) bytes from memory. torch's
// unfused im2col path (slow_conv2d) materialises col per sample (4 P Q CRS bytes written and read
// back); oneDNN's direct convolution (the baseline) gathers nothing. Direct passes: 2 (bfloat16) or
// 4 (float32) bytes per element, the input (or dy) read once and its grid image written once and
// read R S times from L2 (one sample's image per tile), no gather; wgrad also writes dy^T once.
//
// Numerics. Accumulation in the input dtype through BLAS (float32 / float64); float32 for float16 /
// bfloat16 (the micro-kernel's float32 C, or the float32 kernels on widened copies): y, dx, dW and db
// are each rounded to the input dtype once, bias and ReLU applied to the float32 value first (ReLU
// commutes with that rounding, so the fused ReLU equals ReLU of the unfused output bit for bit).
// torch's own bfloat16 conv (oneDNN) also accumulates in float32 and rounds once. dx sums the R S
// contributions of each pixel in (c, r, s, p, q) order, dW sums over samples in chunk order.
// Scratch: two tile buffers per thread (<= max(kColBudget, CRS x (kMinCols + Q)) + Kg x tile
// columns) and, with padding, the padded input (and dx) of the thread's chunk: O(input), never
// O(N P Q CRS). The direct passes repack the input and dy once (O(input + dy)); buffers up to
// 16 MiB are kept per calling thread between calls (Scratch). float32 direct passes accumulate in
// float32 over the taps in order (r, s) and the channels within a tap (the register kernels: runs
// of 64 (channel, tap) pairs, channel-major, then the runs in order; wgrad's per vector lane of
// pixels, then across the lanes):
// the same sums as the tiled kernel's GEMM in a different order, within the 2x-torch rule like it;
// db is one at::sum of dy.
//
// Preconditions (check_conv2d_args): 4-D x and w of the same floating dtype and device, groups
// divides C and K, w.size(1) == C / groups, positive stride/dilation, non-negative padding, P, Q >= 1.
// Non-contiguous inputs are made contiguous here; the kernels write NCHW and the outputs are returned
// in the layout F.conv2d gives them (conv_memory_format in csrc/fastops.h).
//
// References: Chellapilla et al., "High Performance Convolutional Neural Networks for Document
// Processing" (2006) for im2col + GEMM; CUTLASS's implicit-GEMM conv docs for the M/N/K naming.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu/conv2d_depthwise.h"
#include "cpu/conv2d_scratch.h"
#include "cpu/conv2d_winograd.h"
#include "cpu/reduced_float.h"
#include "fastops.h"

namespace fastops {
namespace {

using at::vec::Vectorized;
using cpu::Scratch;
using cpu::convert_n;
using cpu::load_wide;
using cpu::store_narrow;
using cpu::kAcc, cpu::kGrid, cpu::kGridT, cpu::kImage, cpu::kTaps, cpu::kTapsReg;

// Elements of one gathered column tile: 64 Ki elements = 256 KiB of float32, so the tile the gather
// writes is still in L2 when the GEMM reads it (measured: 2 MiB tiles were 1.4x slower on 32x32x16).
constexpr int64_t kColBudget = int64_t(1) << 16;
constexpr int64_t kMinCols = 256;

// A tile is a range [r0, r1) of global output rows r = n P + p (all Q columns of each). It may
// span several samples when images are small, so that each GEMM is wide enough for BLAS to run
// near its peak (an 8x8 image alone gives a 64-column GEMM).
struct Tile {
  int64_t r0, r1;
  int64_t cols(const Conv2dGeometry& g) const { return (r1 - r0) * g.Q; }
  bool one_sample(const Conv2dGeometry& g) const { return r0 / g.P == (r1 - 1) / g.P; }
};

// Global rows per tile: the gathered tile CRS x (rows Q) stays within kColBudget, but never below
// kMinCols columns (while the chunk has them): with many channels and small images the budget alone
// gave GEMMs of a few dozen columns, and each tile then re-read all of W for little work (measured
// on the 2-core Xeon, fwd+bwd of 3x3 convs at batch 8: 512 ch at 2x2 19-38 ms -> 9 ms, 256 ch at
// 4x4 7.4 -> 4 ms, 128 ch at 28x28 41 -> 36.5 ms). A pointwise conv reads x in place, so its tiles
// stay within one sample.
inline int64_t tile_rows(const Conv2dGeometry& g, int64_t samples) {
  const int64_t cap = std::max<int64_t>(1, g.pointwise() ? g.P : samples * g.P);
  const int64_t budget = kColBudget / std::max<int64_t>(1, g.crs() * g.Q);
  const int64_t min_rows = (kMinCols + g.Q - 1) / std::max<int64_t>(1, g.Q);
  return std::clamp<int64_t>(std::max(budget, min_rows), 1, cap);
}

// The tiles covering samples [n0, n1), in order.
template <typename F>
void for_each_tile(const Conv2dGeometry& g, int64_t n0, int64_t n1, int64_t rows, const F& f) {
  if (g.pointwise()) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t p0 = 0; p0 < g.P; p0 += rows) f(Tile{n * g.P + p0, n * g.P + std::min(g.P, p0 + rows)});
    }
    return;
  }
  for (int64_t r0 = n0 * g.P; r0 < n1 * g.P; r0 += rows) f(Tile{r0, std::min(n1 * g.P, r0 + rows)});
}

// The per-sample pieces of a tile: f(n, p0, p1, column offset of row p0 within the tile).
template <typename F>
void for_each_sample_segment(const Conv2dGeometry& g, const Tile& t, const F& f) {
  for (int64_t r = t.r0; r < t.r1;) {
    const int64_t n = r / g.P, p0 = r % g.P, p1 = std::min(g.P, p0 + (t.r1 - r));
    f(n, p0, p1, (r - t.r0) * g.Q);
    r += p1 - p0;
  }
}

// The input of one chunk of samples [n0, n1) as the gather sees it: zero-padded planes, so that
// every tap of every output pixel is in bounds and the gather loops have no conditions. With no
// padding this is x itself; otherwise a padded copy of the chunk's input (O(input) scratch, made
// once per chunk, against the R S-fold gather it simplifies). dgrad scatters into the same layout
// and copies the interior out.
template <typename T>
struct PaddedPlanes {
  T* ptr = nullptr;
  int64_t n0 = 0, sample_stride = 0, plane = 0, Hs = 0, Ws = 0;
  std::unique_ptr<T[]> storage;

  // own: always allocate the planes (a float32 dx of bfloat16 input needs its own even unpadded).
  PaddedPlanes(const Conv2dGeometry& g, int64_t n0_, int64_t n1, const T* x, bool own = false) : n0(n0_) {
    if (g.ph == 0 && g.pw == 0 && !own) {
      Hs = g.H, Ws = g.W, plane = g.H * g.W, sample_stride = g.C * plane;
      ptr = const_cast<T*>(x) + n0 * sample_stride;  // read-only unless zero_for_scatter() was asked
      return;
    }
    Hs = g.H + 2 * g.ph, Ws = g.W + 2 * g.pw, plane = Hs * Ws, sample_stride = g.C * plane;
    const int64_t total = (n1 - n0) * sample_stride;
    if (total == 0) return;
    storage.reset(new T[size_t(total)]);  // uninitialised: every element is written below
    ptr = storage.get();
    if (x == nullptr) {  // a zeroed scatter target
      std::fill(ptr, ptr + total, T(0));
      return;
    }
    // Copy each plane into the interior and zero only the border (a full memset cost as much as
    // the gather on small images).
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < g.C; ++c) {
        const T* src = x + (n * g.C + c) * g.H * g.W;
        T* dst = ptr + (n - n0) * sample_stride + c * plane;
        std::fill(dst, dst + g.ph * Ws, T(0));
        for (int64_t h = 0; h < g.H; ++h) {
          T* row = dst + (g.ph + h) * Ws;
          std::fill(row, row + g.pw, T(0));
          std::memcpy(row + g.pw, src + h * g.W, sizeof(T) * g.W);
          std::fill(row + g.pw + g.W, row + Ws, T(0));
        }
        std::fill(dst + (g.ph + g.H) * Ws, dst + plane, T(0));
      }
    }
  }
  bool padded() const { return storage != nullptr; }
  // dx of samples [n0, n1) <- the interior of the padded planes (rounded once when O is narrower).
  template <typename O>
  void copy_interior_to(const Conv2dGeometry& g, int64_t n1, O* dx) const {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < g.C; ++c) {
        const T* src = ptr + (n - n0) * sample_stride + c * plane + g.ph * Ws + g.pw;
        O* dst = dx + (n * g.C + c) * g.H * g.W;
        for (int64_t h = 0; h < g.H; ++h) convert_n(src + h * Ws, dst + h * g.W, g.W);
      }
    }
  }
};

// Per output row i of a tile: offset of its sample in the planes, and its r = 0 input row (padded
// coordinates: hi = h0 + r dh). Computed once per tile so the gather does no integer division.
struct TileRows {
  std::vector<int64_t> base, h0;
  template <typename T>
  TileRows(const Conv2dGeometry& g, const Tile& t, const PaddedPlanes<T>& src)
      : base(t.r1 - t.r0), h0(t.r1 - t.r0) {
    for (int64_t row = t.r0; row < t.r1; ++row) {
      base[row - t.r0] = (row / g.P - src.n0) * src.sample_stride;
      h0[row - t.r0] = (row % g.P) * g.sh;
    }
  }
};

// col (CRS x L, L = tile columns; leading dimension ld >= L) <- the input patches of the tile's
// output rows, group gi.
template <typename T>
void im2col_tile(const Conv2dGeometry& g, const PaddedPlanes<T>& src, int64_t gi, const Tile& t, const TileRows& tr,
                 T* col, int64_t ld) {
  const int64_t nrows = t.r1 - t.r0, Q = g.Q;
  for (int64_t c = 0; c < g.Cg; ++c) {
    const T* xc = src.ptr + (gi * g.Cg + c) * src.plane;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        T* dst = col + ((c * g.R + r) * g.S + s) * ld;
        for (int64_t i = 0; i < nrows; ++i, dst += Q) {
          const T* row = xc + tr.base[i] + (tr.h0[i] + r * g.dh) * src.Ws + s * g.dw;
          if (g.sw == 1 && cpu::is_reduced_v<T>) {
            std::memcpy(dst, row, sizeof(T) * Q);  // gcc leaves the c10::BFloat16 element loop scalar
          } else if (g.sw == 1) {
            for (int64_t q = 0; q < Q; ++q) dst[q] = row[q];
          } else {
            for (int64_t q = 0; q < Q; ++q) dst[q] = row[q * g.sw];
          }
        }
      }
    }
  }
}

// planes += col2im(col) for the tile's output rows, group gi: the adjoint of im2col_tile.
template <typename T>
void col2im_tile_add(const Conv2dGeometry& g, const T* col, int64_t gi, const Tile& t, const TileRows& tr,
                     PaddedPlanes<T>& dst_planes) {
  const int64_t L = t.cols(g), nrows = t.r1 - t.r0, Q = g.Q;
  for (int64_t c = 0; c < g.Cg; ++c) {
    T* dxc = dst_planes.ptr + (gi * g.Cg + c) * dst_planes.plane;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const T* src = col + ((c * g.R + r) * g.S + s) * L;
        for (int64_t i = 0; i < nrows; ++i, src += Q) {
          T* row = dxc + tr.base[i] + (tr.h0[i] + r * g.dh) * dst_planes.Ws + s * g.dw;
          if (g.sw == 1) {
            for (int64_t q = 0; q < Q; ++q) row[q] += src[q];
          } else {
            for (int64_t q = 0; q < Q; ++q) row[q * g.sw] += src[q];
          }
        }
      }
    }
  }
}

// A (rows x cols) matrix view with leading dimension ld over raw memory (no copy, no ownership).
inline at::Tensor mat(const void* data, int64_t rows, int64_t cols, int64_t ld, const at::TensorOptions& opts) {
  return at::from_blob(const_cast<void*>(data), {rows, cols}, {ld, 1}, opts);
}

// Split [0, N) into `chunks` contiguous ranges and run f(chunk, n0, n1) on each, in parallel when
// there is more than one (BLAS then runs single-threaded inside), inline otherwise (BLAS threads).
template <typename F>
void for_each_sample_chunk(int64_t N, int64_t chunks, const F& f) {
  auto run = [&](int64_t c) { f(c, c * N / chunks, (c + 1) * N / chunks); };
  if (chunks == 1) {
    run(0);
    return;
  }
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) run(c);
  });
}

inline int64_t sample_chunks(int64_t N) { return std::max<int64_t>(1, std::min<int64_t>(N, at::get_num_threads())); }

template <typename T>
void conv2d_fwd_kernel(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& w, const T* bias, bool relu,
                       at::Tensor& y) {
  const auto opts = x.options();
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  const int64_t CRS = g.crs(), PQ = g.pq(), chunks = sample_chunks(g.N);
  for_each_sample_chunk(g.N, chunks, [&](int64_t, int64_t n0, int64_t n1) {
    const int64_t rows = tile_rows(g, n1 - n0);
    // Gathered operand, and the GEMM result of a tile that spans samples (copied out per sample).
    // Uninitialised scratch (new T[], not std::vector): both are fully written before being read.
    std::unique_ptr<T[]> col(g.pointwise() ? nullptr : new T[size_t(CRS * rows * g.Q)]);
    std::unique_ptr<T[]> out(g.pointwise() ? nullptr : new T[size_t(g.Kg * rows * g.Q)]);
    const PaddedPlanes<T> planes(g, n0, g.pointwise() ? n0 : n1, xp);
    for (int64_t gi = 0; gi < g.G; ++gi) {
      const at::Tensor wg = mat(wp + gi * g.Kg * CRS, g.Kg, CRS, CRS, opts);
      for_each_tile(g, n0, n1, rows, [&](const Tile& t) {
        const int64_t L = t.cols(g), n_first = t.r0 / g.P, p_first = t.r0 % g.P;
        const bool in_place = t.one_sample(g);
        T* res = in_place ? yp + (n_first * g.K + gi * g.Kg) * PQ + p_first * g.Q : out.get();
        at::Tensor resv = mat(res, g.Kg, L, in_place ? PQ : L, opts);
        if (g.pointwise()) {
          at::mm_out(resv, wg, mat(xp + (n_first * g.C + gi * g.Cg) * g.hw() + p_first * g.Q, CRS, L, g.hw(), opts));
        } else {
          im2col_tile(g, planes, gi, t, TileRows(g, t, planes), col.get(), L);
          at::mm_out(resv, wg, mat(col.get(), CRS, L, L, opts));
        }
        if (in_place && bias == nullptr && !relu) return;
        // Epilogue on the tile just computed (still in cache), writing each sample's piece of y.
        const Vectorized<T> zero(T(0));
        for_each_sample_segment(g, t, [&](int64_t n, int64_t p0, int64_t p1, int64_t off) {
          const int64_t len = (p1 - p0) * g.Q;
          for (int64_t k = 0; k < g.Kg; ++k) {
            const T* src = in_place ? res + k * PQ : res + k * L + off;
            T* dst = yp + (n * g.K + gi * g.Kg + k) * PQ + p0 * g.Q;
            const Vectorized<T> b(bias ? bias[gi * g.Kg + k] : T(0));
            if (relu) {
              at::vec::map([&](Vectorized<T> v) { return at::vec::maximum(v + b, zero); }, dst, src, len);
            } else if (bias) {
              at::vec::map([&](Vectorized<T> v) { return v + b; }, dst, src, len);
            } else {
              std::memcpy(dst, src, sizeof(T) * len);
            }
          }
        });
      });
    }
  });
}

// dy of one tile, group gi, as a Kg x L matrix: a strided view of dy when the tile lies in one
// sample, else the per-sample pieces copied into `buf` (Kg x L, contiguous).
template <typename T>
at::Tensor dy_tile_view(const Conv2dGeometry& g, const T* dyp, int64_t gi, const Tile& t, T* buf,
                        const at::TensorOptions& opts) {
  const int64_t L = t.cols(g), PQ = g.pq(), n_first = t.r0 / g.P, p_first = t.r0 % g.P;
  if (t.one_sample(g)) return mat(dyp + (n_first * g.K + gi * g.Kg) * PQ + p_first * g.Q, g.Kg, L, PQ, opts);
  for_each_sample_segment(g, t, [&](int64_t n, int64_t p0, int64_t p1, int64_t off) {
    for (int64_t k = 0; k < g.Kg; ++k) {
      std::memcpy(buf + k * L + off, dyp + (n * g.K + gi * g.Kg + k) * PQ + p0 * g.Q, sizeof(T) * (p1 - p0) * g.Q);
    }
  });
  return mat(buf, g.Kg, L, L, opts);
}

// wgrad of one tile, group gi: dW_g (Kg x CRS) += dy_tile (Kg x L) col^T, col gathered into `col`
// (left there for nothing else: dgrad overwrites it), or x itself for a pointwise conv.
template <typename T>
void wgrad_tile(const Conv2dGeometry& g, const T* xp, const PaddedPlanes<T>& planes, int64_t gi, const Tile& t,
                const TileRows* tr, const at::Tensor& dyv, T* col, at::Tensor& dwg, const at::TensorOptions& opts) {
  const int64_t L = t.cols(g), CRS = g.crs();
  at::Tensor colv;
  if (g.pointwise()) {
    const int64_t n_first = t.r0 / g.P, p_first = t.r0 % g.P;
    colv = mat(xp + (n_first * g.C + gi * g.Cg) * g.hw() + p_first * g.Q, CRS, L, g.hw(), opts);
  } else {
    im2col_tile(g, planes, gi, t, *tr, col, L);
    colv = mat(col, CRS, L, L, opts);
  }
  dwg.addmm_(dyv, colv.t());
}

// dgrad of one tile, group gi: col' (CRS x L) = W_g^T dy_tile, scatter-added into the dx planes by
// col2im; a pointwise conv writes its dx slab directly (every element once, no scatter).
template <typename T>
void dgrad_tile(const Conv2dGeometry& g, const at::Tensor& wg, int64_t gi, const Tile& t, const TileRows* tr,
                const at::Tensor& dyv, T* col, T* dxp, PaddedPlanes<T>* dx_planes, const at::TensorOptions& opts) {
  const int64_t L = t.cols(g), CRS = g.crs();
  if (g.pointwise()) {
    const int64_t n_first = t.r0 / g.P, p_first = t.r0 % g.P;
    at::Tensor dxv = mat(dxp + (n_first * g.C + gi * g.Cg) * g.hw() + p_first * g.Q, CRS, L, g.hw(), opts);
    at::mm_out(dxv, wg.t(), dyv);
    return;
  }
  at::Tensor colv = mat(col, CRS, L, L, opts);
  at::mm_out(colv, wg.t(), dyv);
  col2im_tile_add(g, col, gi, t, *tr, *dx_planes);
}

// db_part[k] += sum over samples [n0, n1) and pixels of dy[n, k]: one chunk's partial bias gradient.
template <typename T>
void bias_grad_chunk(const Conv2dGeometry& g, const T* dyp, int64_t n0, int64_t n1, T* db_part) {
  const int64_t PQ = g.pq();
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t k = 0; k < g.K; ++k) {
      db_part[k] += at::vec::reduce_all<T>([](Vectorized<T> a, Vectorized<T> b) { return a + b; },
                                           dyp + (n * g.K + k) * PQ, PQ);
    }
  }
}

// dW and db from the per-chunk partials, summed in chunk order (deterministic for a thread count).
template <typename T>
void reduce_chunk_partials(const Conv2dGeometry& g, std::vector<at::Tensor>& dw_part,
                           const std::vector<std::vector<T>>& db_part, at::Tensor* dw, at::Tensor* db) {
  if (dw) {
    at::Tensor acc = dw_part[0];
    for (size_t c = 1; c < dw_part.size(); ++c) acc.add_(dw_part[c]);
    dw->view({g.K, g.crs()}).copy_(acc);
  }
  if (db) {
    T* dbp = db->mutable_data_ptr<T>();
    for (int64_t k = 0; k < g.K; ++k) {
      T s = 0;
      for (const auto& part : db_part) s += part[k];
      dbp[k] = s;
    }
  }
}

// The backward over one chunk of samples [n0, n1): per group and tile, wgrad into the chunk's dW
// partial, then dgrad into the chunk's dx slab (col2im into zeroed, possibly padded planes), then
// the chunk's db partial.
template <typename T>
void conv2d_bwd_chunk(const Conv2dGeometry& g, const T* dyp, const T* xp, const T* wp, T* dxp, at::Tensor* dwc,
                      T* db_part, int64_t n0, int64_t n1, const at::TensorOptions& opts) {
  const bool pointwise = g.pointwise(), want_dx = dxp != nullptr, want_dw = dwc != nullptr;
  const int64_t CRS = g.crs(), HW = g.hw(), rows = tile_rows(g, n1 - n0);
  std::unique_ptr<T[]> col(pointwise ? nullptr : new T[size_t(CRS * rows * g.Q)]);
  std::unique_ptr<T[]> dyt(pointwise ? nullptr : new T[size_t(g.Kg * rows * g.Q)]);  // dy of a tile spanning samples
  const PaddedPlanes<T> planes(g, n0, pointwise || !want_dw ? n0 : n1, xp);
  // col2im accumulates into zeroed (padded) planes; a pointwise dx is written whole by the GEMM.
  std::optional<PaddedPlanes<T>> dx_planes;
  if (want_dx && !pointwise) {
    if (g.ph == 0 && g.pw == 0) {
      std::fill(dxp + n0 * g.C * HW, dxp + n1 * g.C * HW, T(0));
      dx_planes.emplace(g, n0, n1, dxp);  // scatters straight into dx
    } else {
      dx_planes.emplace(g, n0, n1, nullptr);
    }
  }
  for (int64_t gi = 0; gi < g.G; ++gi) {
    const at::Tensor wg = mat(wp + gi * g.Kg * CRS, g.Kg, CRS, CRS, opts);
    at::Tensor dwg = want_dw ? dwc->narrow(0, gi * g.Kg, g.Kg) : at::Tensor();
    for_each_tile(g, n0, n1, rows, [&](const Tile& t) {
      const at::Tensor dyv = dy_tile_view(g, dyp, gi, t, dyt.get(), opts);
      // Both planes share the sample stride (C Hs Ws), so one row table serves the gather and the scatter.
      std::optional<TileRows> tr;
      if (!pointwise) tr.emplace(g, t, dx_planes ? *dx_planes : planes);
      if (want_dw) wgrad_tile(g, xp, planes, gi, t, tr ? &*tr : nullptr, dyv, col.get(), dwg, opts);
      if (want_dx) {
        dgrad_tile(g, wg, gi, t, tr ? &*tr : nullptr, dyv, col.get(), dxp, dx_planes ? &*dx_planes : nullptr, opts);
      }
    });
  }
  if (dx_planes && dx_planes->padded()) dx_planes->copy_interior_to(g, n1, dxp);
  if (db_part) bias_grad_chunk(g, dyp, n0, n1, db_part);
}

// float32 / float64 backward: samples split into chunks over threads (conv2d_bwd_chunk), each with
// its own dW / db partial, then reduce_chunk_partials.
template <typename T>
void conv2d_bwd_kernel(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                       at::Tensor* dx, at::Tensor* dw, at::Tensor* db) {
  const auto opts = x.options();
  const int64_t chunks = sample_chunks(g.N);
  std::vector<at::Tensor> dw_part(dw ? chunks : 0);  // K x CRS per chunk
  std::vector<std::vector<T>> db_part(db ? chunks : 0);
  for_each_sample_chunk(g.N, chunks, [&](int64_t chunk, int64_t n0, int64_t n1) {
    if (dw) dw_part[chunk] = at::zeros({g.K, g.crs()}, opts);
    if (db) db_part[chunk].assign(g.K, T(0));
    conv2d_bwd_chunk<T>(g, dy.const_data_ptr<T>(), x.const_data_ptr<T>(), w.const_data_ptr<T>(),
                        dx ? dx->mutable_data_ptr<T>() : nullptr, dw ? &dw_part[chunk] : nullptr,
                        db ? db_part[chunk].data() : nullptr, n0, n1, opts);
  });
  reduce_chunk_partials<T>(g, dw_part, db_part, dw, db);
}

// ---- bfloat16: oneDNN's brgemm micro-kernel, bfloat16 x bfloat16 -> float32 ------------------------

// C (M x N, float32, leading dimension ldc) (+)= A (M x K, row-major, lda) B (K x N), with B in the
// VNNI layout (K / 2 row pairs of 2 N interleaved elements, K even) and float32 accumulation: ATen's
// cpublas::brgemm, oneDNN's ukernel (AVX512-BF16 dot products where the CPU has them). One thread,
// one call: the kernels call it inside their own parallel loops.
inline void brgemm_bf16(int64_t M, int64_t N, int64_t K, const c10::BFloat16* a, int64_t lda,
                        const c10::BFloat16* b, float* c, int64_t ldc, bool add_c) {
  at::native::cpublas::brgemm(M, N, K, lda, N, ldc, add_c, a, b, c, /*is_vnni=*/true);
}

// Whether that micro-kernel runs here: ATen built with oneDNN's ukernel API on x86-64 and a CPU
// with AVX-512, and oneDNN not disabled (torch.backends.mkldnn.enabled). Else bfloat16 takes the
// widening path (float32 copies through the float32 kernels), as float16 always does.
bool bf16_brgemm_usable() {
  if (!at::globalContext().userEnabledMkldnn()) return false;  // (and then the probe must not run)
  static const bool works = [] {
    try {
      // [[1, 2], [3, 4]] [[5, 6], [7, 8]] = [[19, 22], [43, 50]], B as VNNI pairs (5, 7), (6, 8).
      const c10::BFloat16 a[4] = {1.f, 2.f, 3.f, 4.f}, b[4] = {5.f, 7.f, 6.f, 8.f};
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      brgemm_bf16(2, 2, 2, a, 2, b, c, 2, false);
      at::native::cpublas::brgemm_release(true);
      return c[0] == 19.f && c[1] == 22.f && c[2] == 43.f && c[3] == 50.f;
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return works;
}

// Whether oneDNN's float32 brgemm micro-kernel runs here (the same conditions; a plain-row B).
bool f32_brgemm_usable() {
  if (!at::globalContext().userEnabledMkldnn()) return false;
  static const bool works = [] {
    try {
      const float a[4] = {1.f, 2.f, 3.f, 4.f}, b[4] = {5.f, 6.f, 7.f, 8.f};
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a, b, c, /*is_vnni=*/false);
      at::native::cpublas::brgemm_release(false);
      return c[0] == 19.f && c[1] == 22.f && c[2] == 43.f && c[3] == 50.f;
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return works;
}

inline int64_t round_up2(int64_t v) { return (v + 1) & ~int64_t(1); }

// out[2 q] = a[q], out[2 q + 1] = b[q] (0 when b is null) for q < n: two bfloat16 rows as one VNNI
// row pair. With AVX-512 16 pairs per step: each pair is one 32-bit word, a's element in the low half.
inline void interleave_pair(const c10::BFloat16* a, const c10::BFloat16* b, c10::BFloat16* out, int64_t n) {
  int64_t q = 0;
#if defined(CPU_CAPABILITY_AVX512)
  const auto widen = [](const c10::BFloat16* p, __mmask16 m) {
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  };
  for (; q < n; q += 16) {
    const __mmask16 m = n - q >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - q)) - 1);
    const __m512i lo = widen(a + q, m);
    const __m512i hi = b ? _mm512_slli_epi32(widen(b + q, m), 16) : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(out + 2 * q, m, _mm512_or_si512(lo, hi));
  }
#endif
  for (; q < n; ++q) {
    out[2 * q] = a[q];
    out[2 * q + 1] = b ? b[q] : c10::BFloat16(0.f);
  }
}

// A (rows x cols, leading dimension ld) -> the VNNI layout of a K x N = rows x cols B operand with
// rows rounded up to even (the pad row zero): out[(k / 2) 2 cols + 2 j + k % 2] = A[k, j].
inline void pack_vnni(const c10::BFloat16* a, int64_t rows, int64_t cols, int64_t ld, c10::BFloat16* out) {
  for (int64_t k = 0; k < rows; k += 2) {
    interleave_pair(a + k * ld, k + 1 < rows ? a + (k + 1) * ld : nullptr, out + k * cols, cols);
  }
}

// col (CRS x L) <- the tile's input patches (as im2col_tile), written in the VNNI layout of the
// forward's B operand: element (crs, j) at (crs / 2) 2 L + 2 j + crs % 2, a zero pad row when CRS is
// odd. tap[crs]: the offset of tap (c, r, s) in group 0's planes, c plane + r dh Ws + s dw.
void im2col_tile_vnni(const Conv2dGeometry& g, const PaddedPlanes<c10::BFloat16>& src, int64_t gi, const Tile& t,
                      const TileRows& tr, const std::vector<int64_t>& tap, c10::BFloat16* col) {
  using S = c10::BFloat16;
  const int64_t L = t.cols(g), nrows = t.r1 - t.r0, Q = g.Q, CRS = g.crs();
  const S* base = src.ptr + gi * g.Cg * src.plane;
  for (int64_t crs = 0; crs < CRS; crs += 2) {
    S* dst = col + crs * L;
    for (int64_t i = 0; i < nrows; ++i, dst += 2 * Q) {
      const int64_t row = tr.base[i] + tr.h0[i] * src.Ws;
      const S* a = base + tap[crs] + row;
      const S* b = crs + 1 < CRS ? base + tap[crs + 1] + row : nullptr;
      if (g.sw == 1) {
        interleave_pair(a, b, dst, Q);
      } else {
        for (int64_t q = 0; q < Q; ++q) {
          dst[2 * q] = a[q * g.sw];
          dst[2 * q + 1] = b ? b[q * g.sw] : S(0.f);
        }
      }
    }
  }
}

// A^T in the VNNI layout, for a K x N = cols x rows B operand (cols even: A's pad column zero):
// out[(j / 2) 2 rows + 2 k + j % 2] = A[k, j]. A pair (A[k, j], A[k, j+1]) moves as one 32-bit word.
template <typename T>
void pack_vnni_transposed(const T* a, int64_t rows, int64_t cols, int64_t ld, T* out) {
  static_assert(sizeof(T) == 2);
  const int64_t pairs = cols / 2;
  constexpr int64_t B = 16;  // 16 x 16 pair blocks: both sides stay in L1
  for (int64_t k0 = 0; k0 < rows; k0 += B) {
    for (int64_t p0 = 0; p0 < pairs; p0 += B) {
      const int64_t k1 = std::min(rows, k0 + B), p1 = std::min(pairs, p0 + B);
      for (int64_t k = k0; k < k1; ++k) {
        for (int64_t p = p0; p < p1; ++p) std::memcpy(out + 2 * (p * rows + k), a + k * ld + 2 * p, 2 * sizeof(T));
      }
    }
  }
}

// Per thread, one chunk of samples: the bfloat16 forward. y[n, g] = W_g col (+ b, ReLU) with
// col gathered straight into the VNNI layout, the product in float32, the epilogue on that float32
// tile and one rounding to bfloat16 per output.
void conv2d_fwd_brgemm(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                       bool relu, at::Tensor& y) {
  using S = c10::BFloat16;
  const S* xp = x.const_data_ptr<S>();
  S* yp = y.mutable_data_ptr<S>();
  const int64_t CRS = g.crs(), CRSp = round_up2(CRS), PQ = g.pq(), chunks = sample_chunks(g.N);
  // A = W (K x CRS): its own memory when CRS is even, else a copy with a zero pad column.
  std::vector<S> w_pad;
  const S* wa = w.const_data_ptr<S>();
  if (CRSp != CRS) {
    w_pad.assign(static_cast<size_t>(g.K * CRSp), S(0));
    for (int64_t k = 0; k < g.K; ++k) std::memcpy(w_pad.data() + k * CRSp, wa + k * CRS, sizeof(S) * CRS);
    wa = w_pad.data();
  }
  std::vector<int64_t> tap(static_cast<size_t>(CRS));
  {
    const int64_t Hs = g.H + 2 * g.ph, Ws = g.W + 2 * g.pw;  // the planes' geometry (PaddedPlanes)
    for (int64_t c = 0; c < g.Cg; ++c) {
      for (int64_t r = 0; r < g.R; ++r) {
        for (int64_t q = 0; q < g.S; ++q) tap[(c * g.R + r) * g.S + q] = c * Hs * Ws + r * g.dh * Ws + q * g.dw;
      }
    }
  }
  std::vector<float> b32(static_cast<size_t>(g.K), 0.f);
  if (bias.defined()) convert_n(bias.const_data_ptr<S>(), b32.data(), g.K);
  for_each_sample_chunk(g.N, chunks, [&](int64_t, int64_t n0, int64_t n1) {
    const int64_t rows = tile_rows(g, n1 - n0), Lmax = rows * g.Q;
    std::unique_ptr<S[]> col(new S[size_t(CRSp * Lmax)]);
    std::unique_ptr<float[]> acc(new float[size_t(g.Kg * Lmax)]);
    const PaddedPlanes<S> planes(g, n0, n1, xp);
    for (int64_t gi = 0; gi < g.G; ++gi) {
      for_each_tile(g, n0, n1, rows, [&](const Tile& t) {
        const int64_t L = t.cols(g);
        im2col_tile_vnni(g, planes, gi, t, TileRows(g, t, planes), tap, col.get());
        brgemm_bf16(g.Kg, L, CRSp, wa + gi * g.Kg * CRSp, CRSp, col.get(), acc.get(), L, false);
        const Vectorized<float> zero(0.f);
        for_each_sample_segment(g, t, [&](int64_t n, int64_t p0, int64_t p1, int64_t off) {
          const int64_t len = (p1 - p0) * g.Q;
          for (int64_t k = 0; k < g.Kg; ++k) {
            const float* src = acc.get() + k * L + off;
            S* dst = yp + (n * g.K + gi * g.Kg + k) * PQ + p0 * g.Q;
            const Vectorized<float> b(b32[gi * g.Kg + k]);
            constexpr int64_t V = Vectorized<float>::size();
            int64_t i = 0;
            for (; i + V <= len; i += V) {
              const Vectorized<float> v = Vectorized<float>::loadu(src + i) + b;
              store_narrow(relu ? at::vec::maximum(v, zero) : v, dst + i);
            }
            if (i < len) {
              const Vectorized<float> v = Vectorized<float>::loadu(src + i, len - i) + b;
              store_narrow(relu ? at::vec::maximum(v, zero) : v, dst + i, len - i);
            }
          }
        });
      });
    }
    at::native::cpublas::brgemm_release(true);
  });
}

// Per thread, one chunk of samples: the bfloat16 backward. Per tile, dy's tile (Kg x L) is copied
// into a contiguous buffer with a zero pad column (L rounded up to even), then
//   dgrad: col' (CRS x L, float32) = W_g^T (CRS x Kg) dy_tile, dy_tile packed VNNI over k pairs;
//          col2im adds col' into float32 (padded) planes, rounded to bfloat16 once per chunk;
//   wgrad: dW_g^T (CRS x Kg, float32) += col (CRS x L) dy_tile^T, col gathered row-major (a zero
//          pad column), dy_tile^T packed VNNI over pixel pairs; the chunk partials are summed in
//          chunk order, transposed and rounded once;
//   db:    sum_{n, p, q} dy in float32 per chunk, then across chunks, rounded once.
void conv2d_bwd_brgemm(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                       at::Tensor* dx, at::Tensor* dw) {
  using S = c10::BFloat16;
  const S* xp = x.const_data_ptr<S>();
  const S* dyp = dy.const_data_ptr<S>();
  const S* wp = w.const_data_ptr<S>();
  const int64_t CRS = g.crs(), PQ = g.pq(), Kgp = round_up2(g.Kg), chunks = sample_chunks(g.N);
  // dgrad's A: W_g^T (CRS x Kg) per group, a zero pad column when Kg is odd.
  std::vector<S> wt;
  if (dx) {
    wt.assign(static_cast<size_t>(g.G * CRS * Kgp), S(0));
    for (int64_t gi = 0; gi < g.G; ++gi) {
      for (int64_t k = 0; k < g.Kg; ++k) {
        const S* src = wp + (gi * g.Kg + k) * CRS;
        S* dst = wt.data() + gi * CRS * Kgp + k;
        for (int64_t i = 0; i < CRS; ++i) dst[i * Kgp] = src[i];
      }
    }
  }
  std::vector<std::vector<float>> dwt_part(dw ? chunks : 0);  // dW^T (CRS x K) per chunk
  for_each_sample_chunk(g.N, chunks, [&](int64_t chunk, int64_t n0, int64_t n1) {
    const int64_t rows = tile_rows(g, n1 - n0), Lmax = rows * g.Q, Lpmax = round_up2(Lmax);
    std::unique_ptr<S[]> dyt(new S[size_t(g.Kg * Lpmax)]);  // dy tile, row-major, ld Lp
    std::unique_ptr<S[]> dyv(new S[size_t(std::max(Kgp * Lmax, Lpmax * g.Kg))]);  // its VNNI packs
    std::unique_ptr<S[]> col(dw ? new S[size_t(CRS * Lpmax)] : nullptr);
    std::unique_ptr<float[]> colf(dx ? new float[size_t(CRS * Lmax)] : nullptr);
    if (dw) dwt_part[chunk].assign(static_cast<size_t>(CRS * g.K), 0.f);
    const PaddedPlanes<S> planes(g, n0, dw ? n1 : n0, xp);
    std::optional<PaddedPlanes<float>> dx_planes;
    if (dx) dx_planes.emplace(g, n0, n1, nullptr, /*own=*/true);  // zeroed float32 scatter target
    for (int64_t gi = 0; gi < g.G; ++gi) {
      for_each_tile(g, n0, n1, rows, [&](const Tile& t) {
        const int64_t L = t.cols(g), Lp = round_up2(L);
        for_each_sample_segment(g, t, [&](int64_t n, int64_t p0, int64_t p1, int64_t off) {
          for (int64_t k = 0; k < g.Kg; ++k) {
            std::memcpy(dyt.get() + k * Lp + off, dyp + (n * g.K + gi * g.Kg + k) * PQ + p0 * g.Q,
                        sizeof(S) * (p1 - p0) * g.Q);
          }
        });
        if (Lp != L) {
          for (int64_t k = 0; k < g.Kg; ++k) dyt[k * Lp + L] = S(0);
        }
        // Both planes share the sample stride (C Hs Ws), so one row table serves the gather and the scatter.
        const TileRows tr(g, t, planes);
        if (dw) {
          im2col_tile(g, planes, gi, t, tr, col.get(), Lp);
          if (Lp != L) {
            for (int64_t i = 0; i < CRS; ++i) col[i * Lp + L] = S(0);
          }
          pack_vnni_transposed(dyt.get(), g.Kg, Lp, Lp, dyv.get());
          brgemm_bf16(CRS, g.Kg, Lp, col.get(), Lp, dyv.get(), dwt_part[chunk].data() + gi * g.Kg, g.K, true);
        }
        if (dx) {
          pack_vnni(dyt.get(), g.Kg, L, Lp, dyv.get());
          brgemm_bf16(CRS, L, Kgp, wt.data() + gi * CRS * Kgp, Kgp, dyv.get(), colf.get(), L, false);
          col2im_tile_add(g, colf.get(), gi, t, tr, *dx_planes);
        }
      });
    }
    if (dx) dx_planes->copy_interior_to(g, n1, dx->mutable_data_ptr<S>());
    at::native::cpublas::brgemm_release(true);
  });
  if (dw) {
    std::vector<float>& acc = dwt_part[0];
    for (int64_t c = 1; c < chunks; ++c) {
      at::vec::map2<float>([](auto a, auto b) { return a + b; }, acc.data(), acc.data(), dwt_part[c].data(),
                           CRS * g.K);
    }
    S* dwp = dw->mutable_data_ptr<S>();
    for (int64_t k = 0; k < g.K; ++k) {
      for (int64_t i = 0; i < CRS; ++i) dwp[k * CRS + i] = static_cast<S>(acc[i * g.K + k]);
    }
  }
}

// db[k] = sum_{n, p, q} dy[n, k, p, q] for bfloat16 dy: float32 sums (16 lanes, then across
// samples in order), rounded once; channels split over threads.
void conv2d_bias_grad_bf16(const Conv2dGeometry& g, const at::Tensor& dy, at::Tensor& db) {
  using S = c10::BFloat16;
  const S* dyp = dy.const_data_ptr<S>();
  S* dbp = db.mutable_data_ptr<S>();
  const int64_t PQ = g.pq();
  constexpr int64_t V = Vectorized<float>::size();
  at::parallel_for(0, g.K, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, g.N * PQ)),
                   [&](int64_t k0, int64_t k1) {
                     for (int64_t k = k0; k < k1; ++k) {
                       float total = 0.f;
                       for (int64_t n = 0; n < g.N; ++n) {
                         const S* src = dyp + (n * g.K + k) * PQ;
                         Vectorized<float> sum(0.f);
                         int64_t i = 0;
                         for (; i + V <= PQ; i += V) sum = sum + load_wide(src + i);
                         if (i < PQ) sum = sum + load_wide(src + i, PQ - i);
                         total += at::vec::vec_reduce_all<float>([](auto a, auto b) { return a + b; }, sum);
                       }
                       dbp[k] = static_cast<S>(total);
                     }
                   });
}

// ---- bfloat16 and float32, stride 1: gather-free passes on the same micro-kernel ---------------------
//
// With stride 1, tap (r, s) of the outputs in a tile of whole rows reads one contiguous run of the
// input laid out on its padded grid (Hs rows of Wp pixels, Wp even). Computing those outputs on the
// grid too (Wp - Q discarded columns per row) makes each tap one GEMM over the channels whose B is a
// strided view of the input: no im2col gather, the R S taps accumulate into one float32 tile:
//   forward: Y (Kg x L) = sum_{r, s} W_rs (Kg x Cg) X_grid[off(r, s) ..] (Cg x L), off = r dh Wp + s dw,
//            X repacked once into channel-pair VNNI planes (float32: plain planes), W_rs once
//            per call;
//   dgrad:   the same on dy zero-extended by the kernel's reach, with the taps flipped and W_rs^T:
//            dX (Cg x L) = sum W_flip_rs^T (Cg x Kg) DY_grid[off ..];
//   wgrad:   dW_rs^T (Cg x Kg) += X_grid[off ..] (Cg x L) DY_grid^T (L x Kg): A is x on its grid as
//            plain rows (any tap offset is a pointer offset), B is dy on x's grid (zero in the
//            discarded columns) transposed once into pixel-pair VNNI (float32: plain rows).
// Each brgemm call reduces over Cg (forward), Kg (dgrad) or a tile's L pixels (wgrad); measured
// here at ~500 GFLOP/s single-thread in cache for M, N >= 16 and K >= 64 (AVX512-BF16).
// Exactness: every product a kept output sums is one the tiled kernel forms too (input zeros from
// padding included), except dgrad's W x 0 beyond dy's edges and wgrad's 0 x x in the discarded
// columns: exact zeros when W (dgrad) and x (wgrad) are finite, so those passes check that first and
// leave non-finite operands to the tiled kernel (NaN where torch has NaN, nowhere else).

// Whether an element's exponent is all ones (inf / NaN).
inline uint32_t nonfinite(c10::BFloat16 v) { return uint32_t((v.x & 0x7f80) == 0x7f80); }
inline uint32_t nonfinite(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return uint32_t((bits & 0x7f800000u) == 0x7f800000u);
}

// Whether every element is finite.
template <typename T>
bool all_finite(const at::Tensor& t) {
  const T* p = t.const_data_ptr<T>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, t.numel(), int64_t(1) << 16, [&](int64_t i0, int64_t i1) {
    uint32_t any = 0;
    for (int64_t i = i0; i < i1; ++i) any |= nonfinite(p[i]);
    if (any) bad = true;
  });
  return !bad;
}

// Elements per VNNI group of B: bfloat16 pairs two rows (K = 2 per 32-bit word), float32 none.
template <typename T>
constexpr int64_t kPair = std::is_same_v<T, c10::BFloat16> ? 2 : 1;
template <typename T>
inline int64_t round_up_pair(int64_t v) {
  return (v + kPair<T> - 1) / kPair<T> * kPair<T>;
}

// Below this many channels in a tap's reduction, the per-tap GEMMs are too short (K = 2, 4) and the
// tiled kernel's single GEMM over C R S wins (measured: N8 C3 H32 K16 3x3).
constexpr int64_t kDirectMinChannels = 8;
// The direct passes' register-blocked kernels (register_block, wgrad_register_block) take float32
// reductions of at most kRegisterMaxChannels channels per tap on outputs of at least
// kRegisterMinPixels pixels; wgrad's also at most kRegisterMaxTaps taps. Measured per pass against
// the kernels they replace, N8 C16 K16, 2-core Intel Xeon (AVX-512), interleaved (old / new time):
// 3x3 at 8 / 12 / 16 / 20 / 56 px: fwd 0.78 / 0.97 / 1.16 / 1.03 / 1.25 (against Winograd), dgrad
// 0.82 / 0.99 / 1.2 / 1.02 / 1.24, wgrad 0.94 / 1.0 / 1.07 / 1.09 / 1.07; 5x5 at 14 / 28 px: 0.94 /
// 1.11 each pass; 7x7 at 14 / 28 px: fwd and dgrad 1.02 / 1.12, wgrad 0.88 / 0.9.
constexpr int64_t kRegisterMaxChannels = 16, kRegisterMinPixels = 16 * 16, kRegisterMaxTaps = 25;

bool direct_fwd_applies(const Conv2dGeometry& g) { return g.sh == 1 && g.sw == 1 && g.Cg >= kDirectMinChannels; }
// float32 takes the direct passes only beyond 1x1: a 1x1 conv is one GEMM per image already, which
// the tiled kernel hands whole to the BLAS (measured 2.0-2.3x torch there, 1.2-1.3x through the
// per-tile micro-kernel calls). Nor where the image is small and the channels many: the direct
// passes compute on the padded grid ((P + 2)(Q + 2) outputs for 3x3: 1.6x the work at 7x7, 2.3x at
// 4x4) in per-tap micro-kernel calls over few pixels, while the tiled kernel's GEMMs span samples.
// Measured per pass, 3x3 batch 8, direct vs tiled (ms; 2-core Intel Xeon, AVX-512): C = K = 512 at
// 2x2 8.1 / 1.3 (fwd), 25 / 1.8 (dgrad); 256 at 4x4 2.7 / 1.1, 6.1 / 1.4; 512 at 7x7 22 / 10;
// 128 at 8x8 1.4 / 1.0 (fwd), 1.6 / 1.2 (wgrad); but 64 at 8x8 0.34 / 0.45 (wgrad), 32 at 16x16
// 0.32 / 0.39 and 32 at 28x28 0.92 / 1.14 (wgrad), 16 at 32x32 level (fwd) or 0.45 / 0.69 (wgrad).
// So: direct where Cg Kg <= 64^2 or the output has at least 28 x 28 pixels.
constexpr int64_t kDirectMaxChannelProduct = 64 * 64, kDirectAnyChannelsPixels = 28 * 28;
// float32 3x3 stride-1 geometries the Winograd passes take (csrc/cpu/conv2d_winograd.cpp), ahead of
// the direct passes: fwd+bwd measured 1.2-3.2x faster than them at 32-512 channels and 8-56 px, level
// within noise at 16 channels (2-core Intel Xeon, batch 8); the tile-count and wgrad limits are in
// conv2d_winograd_applies / conv2d_winograd_wgrad_applies.
bool f32_direct_applies(const Conv2dGeometry& g) {
  return direct_fwd_applies(g) && g.R * g.S > 1 && f32_brgemm_usable() &&
         (g.Cg * g.Kg <= kDirectMaxChannelProduct || g.P * g.Q >= kDirectAnyChannelsPixels);
}
// Forward (dgrad) with few input (output) channels per group on a large enough output runs the
// direct pass's register-blocked kernel, ahead of Winograd (see kRegisterMaxChannels).
bool register_pass(const Conv2dGeometry& g, int64_t channels) {
  return channels <= kRegisterMaxChannels && g.P * g.Q >= kRegisterMinPixels;
}
bool f32_register_fwd(const Conv2dGeometry& g) { return f32_direct_applies(g) && register_pass(g, g.Cg); }
bool f32_register_dgrad(const Conv2dGeometry& g) { return f32_direct_applies(g) && register_pass(g, g.Kg); }
bool winograd_applies(const Conv2dGeometry& g) { return cpu::conv2d_winograd_applies(g); }
template <typename T>
bool direct_dgrad_applies(const Conv2dGeometry& g, const at::Tensor& w) {
  return g.sh == 1 && g.sw == 1 && g.Kg >= kDirectMinChannels && all_finite<T>(w);
}
template <typename T>
bool direct_wgrad_applies(const Conv2dGeometry& g, const at::Tensor& x) {
  return g.sh == 1 && g.sw == 1 && g.Cg >= kDirectMinChannels && all_finite<T>(x);
}

// Pixels per tile on a grid of `cols` columns: whole rows, about `target` output columns (forward and
// dgrad: the N of each call, whose float32 tile takes the R S taps; wgrad: the reduction length of
// one call). Measured on N8 C64 H56 and C128 H28 3x3: 512 beat 128 (per-call overhead; 64-column
// sub-blocks kept in L1 did not help) and 1024.
constexpr int64_t kDirectCols = 512, kDirectWgradCols = 256;
inline int64_t direct_tile_rows(int64_t cols, int64_t total_rows, int64_t target = kDirectCols) {
  return std::clamp<int64_t>(target / std::max<int64_t>(cols, 1), 1, std::max<int64_t>(total_rows, 1));
}

// One image's channels [0, nc) (Hsrc x Wsrc each, contiguous) on a grid of rows x cols pixels, placed
// at (oh, ow) (cropped where outside, zero elsewhere). bfloat16: channel-pair VNNI planes, element
// (c, j) at (c / 2) 2 plane + 2 j + c % 2, the pad channel of an odd nc zero; float32: plain planes.
template <typename S>
void pack_channel_pairs(const S* src, int64_t nc, int64_t Hsrc, int64_t Wsrc, int64_t oh, int64_t ow, int64_t rows,
                        int64_t cols, S* dst) {
  constexpr int64_t P = kPair<S>;
  const int64_t plane = rows * cols, j0 = std::clamp<int64_t>(ow, 0, cols),
                j1 = std::clamp<int64_t>(ow + Wsrc, 0, cols);
  for (int64_t c = 0; c < nc; c += P) {
    const S* a = src + c * Hsrc * Wsrc;
    const S* b = P == 2 && c + 1 < nc ? a + Hsrc * Wsrc : nullptr;
    S* d = dst + c * plane;
    for (int64_t i = 0; i < rows; ++i) {
      S* row = d + P * i * cols;
      const int64_t h = i - oh;
      if (h < 0 || h >= Hsrc || j1 <= j0) {
        std::fill(row, row + P * cols, S(0.f));
        continue;
      }
      std::fill(row, row + P * j0, S(0.f));
      if constexpr (P == 2) {
        interleave_pair(a + h * Wsrc + (j0 - ow), b ? b + h * Wsrc + (j0 - ow) : nullptr, row + 2 * j0, j1 - j0);
      } else {
        std::memcpy(row + j0, a + h * Wsrc + (j0 - ow), sizeof(S) * (j1 - j0));
      }
      std::fill(row + P * j1, row + P * cols, S(0.f));
    }
  }
}

// W_rs per tap and group: out[((r S + s) G + gi) M Np + m Np + n] = W[gi Kg + k][c][r][s] with
// (m, n) = (k, c) (forward: Kg x Cgp) or, transposed and flipped, (m, n) = (c, k) at tap
// (R-1-r, S-1-s) (dgrad: Cg x Kgp); zero pad columns.
template <typename S>
Scratch<S> pack_tap_weights(const Conv2dGeometry& g, const S* w, bool dgrad) {
  const int64_t RS = g.R * g.S, M = dgrad ? g.Cg : g.Kg, Np = round_up_pair<S>(dgrad ? g.Kg : g.Cg);
  Scratch<S> buf(kTaps, RS * g.G * M * Np);
  S* const out = buf.get();
  std::fill(out, out + RS * g.G * M * Np, S(0.f));
  for (int64_t gi = 0; gi < g.G; ++gi) {
    for (int64_t k = 0; k < g.Kg; ++k) {
      for (int64_t c = 0; c < g.Cg; ++c) {
        for (int64_t t = 0; t < RS; ++t) {
          const S v = w[((gi * g.Kg + k) * g.Cg + c) * RS + t];
          const int64_t tap = dgrad ? RS - 1 - t : t;  // (R-1-r) S + (S-1-s) = RS - 1 - (r S + s)
          out[((tap * g.G + gi) * M + (dgrad ? c : k)) * Np + (dgrad ? k : c)] = v;
        }
      }
    }
  }
  return buf;
}

// C (M x N, float32, ldc) (+)= A (M x K, lda) B with leading dimension ldb (>= N); bfloat16: B in
// VNNI, the general form of brgemm_bf16 (B's row pairs ldb pixels apart: one plane of a channel-pair
// image); float32: plain rows.
template <typename S>
inline void brgemm_ldb(int64_t M, int64_t N, int64_t K, const S* a, int64_t lda, const S* b, int64_t ldb, float* c,
                       int64_t ldc, bool add_c) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add_c, a, b, c, /*is_vnni=*/kPair<S> == 2);
}

// ---- float32, few channels per tap: register-blocked accumulation --------------------------------
// With 8-16 channels in each tap's reduction, a per-tap micro-kernel call loads and stores its whole
// accumulator tile for only 8-16 FMAs per element, and oneDNN's direct conv ran 1.2-1.6x faster fwd
// (N8 C16 3x3 32 px, 5x5 28 px). Here a block of KB output channels x PV vectors of grid pixels
// stays in registers across every tap and channel: per (channel, tap), PV vector loads and KB weight
// broadcasts feed KB x PV FMAs (24 per 11 loads with AVX-512), the FMA units' rate. Same sums as the
// per-tap calls, accumulated in the order channel-major then tap. Taken for a reduction of at most
// kRegisterMaxChannels channels per tap.

// acc[k][0, valid) = sum_{i < n} w[i Mo + k] in[offs[i] + l], k < KB, over the n = Kp RS (channel,
// tap) pairs, channel-major: runs of kRegisterChunk pairs accumulate in registers (one flat loop),
// each run's sums added in order into acc. One chain over all the pairs (784 for C16 7x7) missed the
// float32 bound on an element near cancellation where the fmadd is a multiply and an add (the plain
// ISA build); runs of 64 are as long as the per-tap kernel's chains. Full: valid = PV vectors, else
// the tile's last, partial block, whose stores are masked. Its loads are plain full vectors all the
// same (the lanes past valid read the next rows or pack_image's slack and are never stored): with
// masked loads the AVX2 build kept the 12 accumulators on the stack in the inner loop (the masks took
// their registers), one partial block costing about three full ones.
constexpr int64_t kRegisterChunk = 64;
constexpr int kRegisterPV = 3;  // pixel vectors per register block (register_tile)
template <int KB, int PV, bool Full>
void register_block(const float* in, const int64_t* offs, int64_t n, const float* w, int64_t Mo, float* acc,
                    int64_t ldc, int64_t valid) {
  using V = Vectorized<float>;
  constexpr int64_t VS = V::size();
  int64_t cnt[PV];
  for (int v = 0; v < PV; ++v) cnt[v] = Full ? VS : std::clamp<int64_t>(valid - v * VS, 0, VS);
  for (int64_t i0 = 0; i0 < n; i0 += kRegisterChunk) {
    V a[KB][PV];
    for (int k = 0; k < KB; ++k) {
      for (int v = 0; v < PV; ++v) a[k][v] = V(0.f);
    }
    for (int64_t i = i0; i < std::min(n, i0 + kRegisterChunk); ++i) {
      const float* src = in + offs[i];
      V xv[PV];
      for (int v = 0; v < PV; ++v) xv[v] = V::loadu(src + v * VS);
      const float* wk = w + i * Mo;
      for (int k = 0; k < KB; ++k) {
        const V wb(wk[k]);
        for (int v = 0; v < PV; ++v) a[k][v] = at::vec::fmadd(wb, xv[v], a[k][v]);
      }
    }
    for (int k = 0; k < KB; ++k) {
      for (int v = 0; v < PV; ++v) {
        float* dst = acc + k * ldc + v * VS;
        const int64_t c = cnt[v];
        if (c == 0) continue;
        const V prev = i0 == 0 ? V(0.f) : (c == VS ? V::loadu(dst) : V::loadu(dst, c));
        const V sum = i0 == 0 ? a[k][v] : prev + a[k][v];
        if (c == VS) {
          sum.store(dst);
        } else {
          sum.store(dst, c);
        }
      }
    }
  }
}

template <int KB, int PV>
void register_block_any(const float* in, const int64_t* offs, int64_t n, const float* w, int64_t Mo, float* acc,
                        int64_t ldc, int64_t valid) {
  if (valid == PV * Vectorized<float>::size()) {
    register_block<KB, PV, true>(in, offs, n, w, Mo, acc, ldc, valid);
  } else {
    register_block<KB, PV, false>(in, offs, n, w, Mo, acc, ldc, valid);
  }
}

// acc (Mo x L, ld L) for one tile: the register blocks over output channels (KB, then the remainder)
// and pixels (PV vectors at a time). offs: the n (channel, tap) pairs' offsets into in; w: the
// group's weights as (Kp, RS, Mo) (register_weights).
template <int PV>
void register_tile(const float* in, const int64_t* offs, int64_t n, const float* w, int64_t Mo, int64_t L,
                   float* acc) {
  constexpr int64_t VS = Vectorized<float>::size(), step = PV * VS;
  constexpr int KB = VS >= 16 ? 8 : 4;  // KB x PV accumulators + PV inputs + 1 broadcast in 32 / 16 registers
  for (int64_t l = 0; l < L; l += step) {
    const int64_t valid = std::min(step, L - l);
    int64_t m = 0;
    for (; m + KB <= Mo; m += KB) {
      register_block_any<KB, PV>(in + l, offs, n, w + m, Mo, acc + m * L + l, L, valid);
    }
    for (; m + 2 <= Mo; m += 2) {
      register_block_any<2, PV>(in + l, offs, n, w + m, Mo, acc + m * L + l, L, valid);
    }
    if (m < Mo) register_block_any<1, PV>(in + l, offs, n, w + m, Mo, acc + m * L + l, L, valid);
  }
}

// The tap weights (RS, G, Mo, Kp) of direct_pass as (G, Kp, RS, Mo): a register block's KB weights
// of one (channel, tap) are adjacent.
inline Scratch<float> register_weights(const float* taps, int64_t RS, int64_t G, int64_t Mo, int64_t Kp) {
  Scratch<float> buf(kTapsReg, RS * G * Mo * Kp);
  float* const out = buf.get();
  for (int64_t t = 0; t < RS; ++t) {
    for (int64_t gi = 0; gi < G; ++gi) {
      for (int64_t m = 0; m < Mo; ++m) {
        for (int64_t c = 0; c < Kp; ++c) out[((gi * Kp + c) * RS + t) * Mo + m] = taps[((t * G + gi) * Mo + m) * Kp + c];
      }
    }
  }
  return buf;
}

// The shared skeleton of the direct forward and dgrad: an output (N, G Mo, Ho, Wo) from the
// channel-pair image `in` (N, G, Kp / 2, rows x cols, 2) and the tap weights (RS, G, Mo, Kp); each
// work item is one sample's tile of output rows, contiguous runs of items per thread;
// epilogue(n, gi, h, m, src) stores output row h of channel m from the float32 row src (cols values,
// the first Wo kept).
template <typename S, typename Epilogue>
void direct_pass(const Conv2dGeometry& g, const S* in, int64_t Kp, int64_t rows, int64_t cols, const S* taps,
                 int64_t Mo, int64_t Ho, const Epilogue& epilogue) {
  const int64_t plane = rows * cols, RS = g.R * g.S, tile = direct_tile_rows(cols, Ho);
  const int64_t tiles = (Ho + tile - 1) / tile, items = g.N * tiles;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(items, at::get_num_threads()));
  const Scratch<float> acc_buf(kAcc, chunks * Mo * tile * cols);
  float* const accs = acc_buf.get();
  std::optional<Scratch<float>> reg_buf;
  const float* reg_w = nullptr;
  if constexpr (std::is_same_v<S, float>) {
    if (register_pass(g, Kp)) {
      reg_buf.emplace(register_weights(taps, RS, g.G, Mo, Kp));
      reg_w = reg_buf->get();
    }
  }
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<int64_t> offs(static_cast<size_t>(Kp * RS));  // the register kernel's (channel, tap) offsets
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      float* const acc = accs + chunk * Mo * tile * cols;
      for (int64_t item = items * chunk / chunks; item < items * (chunk + 1) / chunks; ++item) {
        const int64_t n = item / tiles, h0 = (item % tiles) * tile, h1 = std::min(Ho, h0 + tile);
        const int64_t L = (h1 - h0) * cols;
        for (int64_t gi = 0; gi < g.G; ++gi) {
          const S* b = in + (n * g.G + gi) * Kp * plane;
          if constexpr (std::is_same_v<S, float>) {
            if (reg_w != nullptr) {
              for (int64_t c = 0; c < Kp; ++c) {
                for (int64_t t = 0; t < RS; ++t) {
                  offs[c * RS + t] = c * plane + (h0 + (t / g.S) * g.dh) * cols + (t % g.S) * g.dw;
                }
              }
              register_tile<kRegisterPV>(b, offs.data(), Kp * RS, reg_w + gi * Kp * RS * Mo, Mo, L, acc);
            }
          }
          if (reg_w == nullptr) {
            for (int64_t t = 0; t < RS; ++t) {
              const int64_t off = (h0 + (t / g.S) * g.dh) * cols + (t % g.S) * g.dw;
              brgemm_ldb(Mo, L, Kp, taps + (t * g.G + gi) * Mo * Kp, Kp, b + kPair<S> * off, plane, acc, L,
                         t > 0);
            }
          }
          for (int64_t h = h0; h < h1; ++h) {
            for (int64_t m = 0; m < Mo; ++m) epilogue(n, gi, h, m, acc + m * L + (h - h0) * cols);
          }
        }
      }
    }
    at::native::cpublas::brgemm_release(kPair<S> == 2);
  });
}

// dst[0, n) = src + b, then max(., 0) when relu (float32 output).
inline void bias_act_store(const float* src, float b, bool relu, float* dst, int64_t n) {
  using V = Vectorized<float>;
  constexpr int64_t L = V::size();
  const V vb(b), zero(0.f);
  int64_t i = 0;
  for (; i < n; i += L) {
    const int64_t k = std::min<int64_t>(L, n - i);
    V v = V::loadu(src + i, k) + vb;
    if (relu) v = at::vec::maximum(v, zero);
    v.store(dst + i, k);
  }
}

// dst[0, n) = narrow(src + b), then max(., 0) when relu.
inline void bias_act_store(const float* src, float b, bool relu, c10::BFloat16* dst, int64_t n) {
  using V = Vectorized<float>;
  constexpr int64_t L = V::size();
  const V vb(b), zero(0.f);
  const auto at = [&](int64_t i, int64_t k) {  // elements [i, i + k), k <= L
    if (k <= 0) return zero;
    const V v = V::loadu(src + i, k) + vb;
    return relu ? at::vec::maximum(v, zero) : v;
  };
  for (int64_t i = 0; i < n; i += 2 * L) {  // two vectors per narrowing conversion
    const int64_t k = std::min<int64_t>(2 * L, n - i);
    cpu::store_narrow2(at(i, std::min<int64_t>(L, k)), at(i + L, k - L), dst + i, k);
  }
}

// The input's grid: Hs = H + 2 ph rows of Wp = W + 2 pw pixels rounded up to even.
struct InputGrid {
  int64_t rows, cols;
  explicit InputGrid(const Conv2dGeometry& g) : rows(g.H + 2 * g.ph), cols(round_up2(g.W + 2 * g.pw)) {}
  int64_t plane() const { return rows * cols; }
};

// The channel-pair image (N, G, Cgrp rounded up to even / 2, rows x cols, 2) of src (N, Csrc, Hsrc,
// Wsrc; groups of Cgrp channels) placed at (oh, ow) on the grid, plus zeros for the (S-1) dw pixels
// the last tile's discarded columns read past the end and the register kernel's full-vector reads
// past its last block (up to kRegisterPV vectors). In scratch slot kImage.
template <typename S>
Scratch<S> pack_image(const Conv2dGeometry& g, const S* src, int64_t Csrc, int64_t Cgrp, int64_t Hsrc, int64_t Wsrc,
                      int64_t oh, int64_t ow, int64_t rows, int64_t cols) {
  const int64_t Cp = round_up_pair<S>(Cgrp), block = Cp * rows * cols;
  const int64_t slack = kPair<S> * ((g.S - 1) * g.dw + 1) + kRegisterPV * Vectorized<float>::size();
  Scratch<S> buf(kImage, g.N * g.G * block + slack);
  S* const out = buf.get();
  std::fill(out + g.N * g.G * block, out + g.N * g.G * block + slack, S(0.f));
  at::parallel_for(0, g.N * g.G, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / g.G, gi = i % g.G;
      pack_channel_pairs(src + (n * Csrc + gi * Cgrp) * Hsrc * Wsrc, Cgrp, Hsrc, Wsrc, oh, ow, rows, cols,
                         out + i * block);
    }
  });
  return buf;
}

template <typename S>
void conv2d_fwd_direct(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                       bool relu, at::Tensor& y) {
  const InputGrid grid(g);
  const auto xv = pack_image(g, x.const_data_ptr<S>(), g.C, g.Cg, g.H, g.W, g.ph, g.pw, grid.rows, grid.cols);
  const auto taps = pack_tap_weights(g, w.const_data_ptr<S>(), /*dgrad=*/false);
  std::vector<float> b32(static_cast<size_t>(g.K), 0.f);
  if (bias.defined()) convert_n(bias.const_data_ptr<S>(), b32.data(), g.K);
  S* yp = y.mutable_data_ptr<S>();
  direct_pass(g, xv.get(), round_up_pair<S>(g.Cg), grid.rows, grid.cols, taps.get(), g.Kg, g.P,
              [&](int64_t n, int64_t gi, int64_t p, int64_t k, const float* src) {
                const int64_t kk = gi * g.Kg + k;
                bias_act_store(src, b32[kk], relu, yp + ((n * g.K + kk) * g.P + p) * g.Q, g.Q);
              });
}

// dx(h, w) = sum_{r', s', k} W[k][c][R-1-r'][S-1-s'] dy_ext[k][h + r' dh][w + s' dw] with dy_ext = dy
// placed at ((R-1) dh - ph, (S-1) dw - pw) on a grid of H + (R-1) dh rows of W + (S-1) dw pixels
// (rounded up to even), zero elsewhere (cropped where the padding exceeds the kernel's reach).
template <typename S>
void conv2d_dgrad_direct(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx) {
  const int64_t rows = g.H + (g.R - 1) * g.dh, cols = round_up2(g.W + (g.S - 1) * g.dw);
  const auto dyv = pack_image(g, dy.const_data_ptr<S>(), g.K, g.Kg, g.P, g.Q, (g.R - 1) * g.dh - g.ph,
                              (g.S - 1) * g.dw - g.pw, rows, cols);
  const auto taps = pack_tap_weights(g, w.const_data_ptr<S>(), /*dgrad=*/true);
  S* dxp = dx.mutable_data_ptr<S>();
  direct_pass(g, dyv.get(), round_up_pair<S>(g.Kg), rows, cols, taps.get(), g.Cg, g.H,
              [&](int64_t n, int64_t gi, int64_t h, int64_t c, const float* src) {
                convert_n(src, dxp + ((n * g.C + gi * g.Cg + c) * g.H + h) * g.W, g.W);
              });
}

// dW_rs^T (Cg x Kg) = sum over samples and tiles of X_grid[off ..] (Cg x L) DY_grid^T (L x Kg): A is x
// on its grid, plain rows (any tap offset is a plain pointer offset), B is dy on x's grid (rows of Wp
// pixels, zero in the discarded columns) transposed into pixel-pair VNNI: element (j, k) at
// (j / 2) 2 Kg + 2 k + j % 2, one 32-bit word per (pixel pair, k). One float32 partial (RS, G, Cg, Kg)
// per thread chunk, summed in chunk order, rounded once into dW.
// One channel's plane src (H x W) on x's grid: rows of cols pixels, ph rows and pw columns of zero
// padding before it, zeros after.
template <typename S>
void fill_x_grid(const Conv2dGeometry& g, const S* src, int64_t cols, int64_t plane, S* dst) {
  std::fill(dst, dst + g.ph * cols, S(0.f));  // top rows
  for (int64_t h = 0; h < g.H; ++h) {
    // Each row's own borders only: with ph == 0 there is no bottom row to hold the last row's right
    // border, and the next plane (another thread's) starts right after it.
    S* line = dst + (h + g.ph) * cols;
    std::fill(line, line + g.pw, S(0.f));
    std::memcpy(line + g.pw, src + h * g.W, sizeof(S) * g.W);
    std::fill(line + g.pw + g.W, line + cols, S(0.f));
  }
  std::fill(dst + (g.H + g.ph) * cols, dst + plane, S(0.f));  // bottom rows
}

// float32 wgrad with few channels each side (at most kRegisterMaxChannels): per tap, a brgemm call
// of a 16 x 16 output and a long reduction ran 0.75x oneDNN (N8 C16 K16 5x5 28 px). Here
// dW[k][c][t] = sum over samples and grid pixels l of dy_grid[k][l] x_grid[c][l + off_t] runs in
// register blocks of KB k x TB (c, t) pairs, vectorised along l: per vector of pixels, KB + TB loads
// feed KB TB FMAs into vector partial sums, reduced across lanes once per block and group of samples
// (enough samples for about kWgradGroupPixels pixels: small images would otherwise spend as much on
// the reductions as on the FMAs; large ones keep one sample's planes in cache per block). dy sits
// on x's grid (zero in the discarded columns and up to a whole vector past the end), so every load
// is a plain one.
constexpr int64_t kWgradGroupPixels = 1024;

// Pins v to a vector register. GCC otherwise folds a vector load that feeds several FMAs into each
// of them as a memory operand (seen in wgrad_register_block's AVX2 build: the x vector loaded once
// per dy row, 14 loads per 12 FMAs instead of 8, so the loop waited on the load ports). Measured
// per pass against torch's wgrad, N8 C16 K16, 2-core AMD EPYC (Zen 3, AVX2), interleaved: 5x5 28 px
// 0.83x -> 1.17x, 3x3 32 px 1.30x -> 1.79x. The AVX-512 build already kept it in a register.
inline void pin_register(Vectorized<float>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  __m512 r = v;
  asm("" : "+v"(r));
  v = r;
#elif defined(CPU_CAPABILITY_AVX2)
  __m256 r = v;
  asm("" : "+x"(r));
  v = r;
#else
  (void)v;
#endif
}

template <int KB, int TB>
void wgrad_register_block(const float* dyg, int64_t ld, const float* xg, const int64_t* xoffs, int64_t Lr,
                          int64_t samples, int64_t dy_stride, int64_t x_stride, float* out, int64_t ldo) {
  using V = Vectorized<float>;
  constexpr int64_t VS = V::size();
  V a[KB][TB];
  for (int k = 0; k < KB; ++k) {
    for (int j = 0; j < TB; ++j) a[k][j] = V(0.f);
  }
  for (int64_t n = 0; n < samples; ++n, dyg += dy_stride, xg += x_stride) {
    for (int64_t l = 0; l < Lr; l += VS) {
      V d[KB];
      for (int k = 0; k < KB; ++k) d[k] = V::loadu(dyg + k * ld + l);
      for (int j = 0; j < TB; ++j) {
        V xv = V::loadu(xg + xoffs[j] + l);
        if constexpr (KB > 1) pin_register(xv);
        for (int k = 0; k < KB; ++k) a[k][j] = at::vec::fmadd(d[k], xv, a[k][j]);
      }
    }
  }
  for (int k = 0; k < KB; ++k) {
    for (int j = 0; j < TB; ++j) {
      out[k * ldo + j] += at::vec::vec_reduce_all<float>([](V u, V v) { return u + v; }, a[k][j]);
    }
  }
}

void conv2d_wgrad_register(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw) {
  constexpr int64_t VS = Vectorized<float>::size();
  const InputGrid grid(g);
  const int64_t plane = grid.plane(), cols = grid.cols, RS = g.R * g.S, CT = g.Cg * RS;
  const int64_t L = g.P * cols, Lr = (L + VS - 1) / VS * VS;
  const float* xp = x.const_data_ptr<float>();
  const float* dyp = dy.const_data_ptr<float>();
  // x on its grid [n][c][plane]; a tap's vector reads end at most Lr - L + (S - 1) dw past a plane.
  const int64_t slack = (g.S - 1) * g.dw + VS;
  const Scratch<float> xg_buf(kGrid, g.N * g.C * plane + slack);
  float* const xg = xg_buf.get();
  std::fill(xg + g.N * g.C * plane, xg + g.N * g.C * plane + slack, 0.f);
  const Scratch<float> dyg_buf(kGridT, g.N * g.K * Lr);  // dy on x's grid [n][k][Lr]
  float* const dyg = dyg_buf.get();
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) fill_x_grid(g, xp + i * g.H * g.W, cols, plane, xg + i * plane);
  });
  at::parallel_for(0, g.N * g.K, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* d = dyg + i * Lr;
      std::fill(d, d + Lr, 0.f);
      for (int64_t p = 0; p < g.P; ++p) std::memcpy(d + p * cols, dyp + (i * g.P + p) * g.Q, sizeof(float) * g.Q);
    }
  });
  std::vector<int64_t> xoffs(static_cast<size_t>(CT));
  for (int64_t c = 0; c < g.Cg; ++c) {
    for (int64_t t = 0; t < RS; ++t) xoffs[c * RS + t] = c * plane + (t / g.S) * g.dh * cols + (t % g.S) * g.dw;
  }
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(g.N, at::get_num_threads()));
  const int64_t part_size = g.K * CT;  // dw's own layout (K, Cg, R, S)
  const Scratch<float> part_buf(kAcc, chunks * part_size);
  float* const part = part_buf.get();
  constexpr int KB = VS >= 16 ? 4 : 2, TB = 6;  // KB TB accumulators + KB dy vectors + 1 x vector
  const int64_t group = std::max<int64_t>(1, kWgradGroupPixels / Lr);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      float* const acc = part + chunk * part_size;
      std::fill(acc, acc + part_size, 0.f);
      const int64_t n1 = g.N * (chunk + 1) / chunks;
      for (int64_t n0 = g.N * chunk / chunks; n0 < n1; n0 += group) {
        const int64_t ns = std::min(group, n1 - n0);
        for (int64_t gi = 0; gi < g.G; ++gi) {
          const float* xgi = xg + (n0 * g.C + gi * g.Cg) * plane;
          const float* dgi = dyg + (n0 * g.K + gi * g.Kg) * Lr;
          float* out = acc + gi * g.Kg * CT;
          const auto run = [&](auto kb, auto tb, int64_t k, int64_t j) {
            wgrad_register_block<decltype(kb)::value, decltype(tb)::value>(
                dgi + k * Lr, Lr, xgi, xoffs.data() + j, Lr, ns, g.K * Lr, g.C * plane, out + k * CT + j, CT);
          };
          using KBc = std::integral_constant<int, KB>;
          using TBc = std::integral_constant<int, TB>;
          using One = std::integral_constant<int, 1>;
          int64_t k = 0;
          for (; k + KB <= g.Kg; k += KB) {
            int64_t j = 0;
            for (; j + TB <= CT; j += TB) run(KBc{}, TBc{}, k, j);
            for (; j < CT; ++j) run(KBc{}, One{}, k, j);
          }
          for (; k < g.Kg; ++k) {
            int64_t j = 0;
            for (; j + TB <= CT; j += TB) run(One{}, TBc{}, k, j);
            for (; j < CT; ++j) run(One{}, One{}, k, j);
          }
        }
      }
    }
  });
  for (int64_t c = 1; c < chunks; ++c) {
    at::vec::map2<float>([](auto a, auto b) { return a + b; }, part, part, part + c * part_size, part_size);
  }
  std::memcpy(dw.mutable_data_ptr<float>(), part, sizeof(float) * part_size);
}

template <typename S>
void conv2d_wgrad_direct(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw) {
  if constexpr (std::is_same_v<S, float>) {
    if (register_pass(g, std::max(g.Cg, g.Kg)) && g.R * g.S <= kRegisterMaxTaps) {
      conv2d_wgrad_register(g, dy, x, dw);
      return;
    }
  }
  constexpr int64_t P = kPair<S>;
  const InputGrid grid(g);
  const int64_t plane = grid.plane(), cols = grid.cols, RS = g.R * g.S, PW = g.P * cols;
  const S* xp = x.const_data_ptr<S>();
  const S* dyp = dy.const_data_ptr<S>();
  // x on its grid: [n][c][plane], zero padding, plus what the last tap's discarded columns read past the end.
  const int64_t slack = (g.S - 1) * g.dw + 1;
  const Scratch<S> xg_buf(kGrid, g.N * g.C * plane + slack);
  S* const xg = xg_buf.get();
  std::fill(xg + g.N * g.C * plane, xg + g.N * g.C * plane + slack, S(0.f));
  // dy^T on the grid: [n][gi][PW / P][Kg][P] (PW is even: cols is).
  const Scratch<S> dyt_buf(kGridT, g.N * g.K * PW);
  S* const dyt = dyt_buf.get();
  at::parallel_for(0, g.N * g.G, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / g.G, gi = i % g.G;
      for (int64_t c = gi * g.Cg; c < (gi + 1) * g.Cg; ++c) {
        fill_x_grid(g, xp + (n * g.C + c) * g.H * g.W, cols, plane, xg + (n * g.C + c) * plane);
      }
      S* d = dyt + (n * g.G + gi) * g.Kg * PW;
      for (int64_t p = 0; p < g.P; ++p) {
        for (int64_t k = 0; k < g.Kg; ++k) {
          const S* src = dyp + ((n * g.K + gi * g.Kg + k) * g.P + p) * g.Q;
          S* o = d + (p * cols / P * g.Kg + k) * P;
          int64_t q = 0;
          for (; q + P - 1 < g.Q; q += P, o += P * g.Kg) std::memcpy(o, src + q, P * sizeof(S));
          for (; q < cols; q += P, o += P * g.Kg) {  // the last odd column, then the discarded ones
            for (int64_t e = 0; e < P; ++e) o[e] = q + e < g.Q ? src[q + e] : S(0.f);
          }
        }
      }
    }
  });
  const int64_t tile = direct_tile_rows(cols, g.P, kDirectWgradCols), tiles = (g.P + tile - 1) / tile;
  const int64_t items = g.N * tiles, chunks = std::max<int64_t>(1, std::min<int64_t>(items, at::get_num_threads()));
  const int64_t part_size = RS * g.K * g.Cg;
  const Scratch<float> part_buf(kAcc, chunks * part_size);
  float* const part = part_buf.get();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      float* const acc = part + chunk * part_size;
      std::fill(acc, acc + part_size, 0.f);
      for (int64_t item = items * chunk / chunks; item < items * (chunk + 1) / chunks; ++item) {
        const int64_t n = item / tiles, p0 = (item % tiles) * tile, p1 = std::min(g.P, p0 + tile);
        const int64_t L = (p1 - p0) * cols;  // even: cols is
        for (int64_t gi = 0; gi < g.G; ++gi) {
          const S* b = dyt + (n * g.G + gi) * g.Kg * PW + p0 * cols * g.Kg;
          for (int64_t t = 0; t < RS; ++t) {
            const int64_t off = (p0 + (t / g.S) * g.dh) * cols + (t % g.S) * g.dw;
            const S* a = xg + (n * g.C + gi * g.Cg) * plane + off;
            brgemm_ldb(g.Cg, g.Kg, L, a, plane, b, g.Kg, acc + (t * g.G + gi) * g.Cg * g.Kg, g.Kg, true);
          }
        }
      }
    }
    at::native::cpublas::brgemm_release(P == 2);
  });
  for (int64_t c = 1; c < chunks; ++c) {
    at::vec::map2<float>([](auto a, auto b) { return a + b; }, part, part, part + c * part_size, part_size);
  }
  S* dwp = dw.mutable_data_ptr<S>();
  for (int64_t t = 0; t < RS; ++t) {
    for (int64_t gi = 0; gi < g.G; ++gi) {
      for (int64_t c = 0; c < g.Cg; ++c) {
        const float* src = part + ((t * g.G + gi) * g.Cg + c) * g.Kg;
        for (int64_t k = 0; k < g.Kg; ++k) dwp[((gi * g.Kg + k) * g.Cg + c) * RS + t] = static_cast<S>(src[k]);
      }
    }
  }
}

void check_cpu_dtype(const char* op, const at::Tensor& x) {
  const auto dt = x.scalar_type();
  FASTOPS_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
                     ": the CPU kernels take float16, bfloat16, float32 or float64 input, got ", dt);
}

// The backward of the GEMM-based kernels (bfloat16 micro-kernel passes, the float16 / bfloat16
// widening path, float32 / float64 tiles) for the gradients asked for (null: not wanted).
void conv2d_bwd_general(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                        at::Tensor* dx, at::Tensor* dw, at::Tensor* db) {
  const auto dt = x.scalar_type();
  const auto opts = x.options();
  if (dt == at::kBFloat16 && bf16_brgemm_usable()) {
    // Gather-free passes where they apply (stride 1; finite inputs where they read padding, see
    // above), the tiled gather kernel for the rest.
    bool dx_done = dx == nullptr, dw_done = dw == nullptr;
    if (!dx_done && direct_dgrad_applies<c10::BFloat16>(g, w)) {
      conv2d_dgrad_direct<c10::BFloat16>(g, dy, w, *dx);
      dx_done = true;
    }
    if (!dw_done && direct_wgrad_applies<c10::BFloat16>(g, x)) {
      conv2d_wgrad_direct<c10::BFloat16>(g, dy, x, *dw);
      dw_done = true;
    }
    if (!dx_done || !dw_done) conv2d_bwd_brgemm(g, dy, x, w, dx_done ? nullptr : dx, dw_done ? nullptr : dw);
    if (db) conv2d_bias_grad_bf16(g, dy, *db);
  } else if (dt == at::kFloat && (winograd_applies(g) || f32_direct_applies(g))) {
    // float32 stride 1: Winograd where it applies and its operands are in range, else the
    // gather-free passes on the float32 micro-kernel where they apply, the tiled BLAS kernel for the
    // rest; db as one reduction of dy.
    const bool wino = winograd_applies(g);
    const bool dx_wino = dx != nullptr && wino && !f32_register_dgrad(g) && cpu::conv2d_dgrad_winograd(g, dy, w, *dx);
    const bool dw_wino = dw != nullptr && wino && cpu::conv2d_winograd_wgrad_applies(g) &&
                         cpu::conv2d_wgrad_winograd(g, dy, x, *dw);
    if (dx_wino) dx = nullptr;
    if (dw_wino) dw = nullptr;
    const bool direct = f32_direct_applies(g);
    const bool dx_direct = direct && dx != nullptr && direct_dgrad_applies<float>(g, w);
    const bool dw_direct = direct && dw != nullptr && direct_wgrad_applies<float>(g, x);
    if (dx_direct) conv2d_dgrad_direct<float>(g, dy, w, *dx);
    if (dw_direct) conv2d_wgrad_direct<float>(g, dy, x, *dw);
    at::Tensor* dx_rest = dx_direct ? nullptr : dx;
    at::Tensor* dw_rest = dw_direct ? nullptr : dw;
    if (dx_rest != nullptr || dw_rest != nullptr) {
      conv2d_bwd_kernel<float>(g, dy, x, w, dx_rest, dw_rest, db);
    } else if (db) {
      at::sum_out(*db, dy, {0, 2, 3});
    }
  } else if (dt == at::kHalf || dt == at::kBFloat16) {
    // Widening path: float32 copies through the float32 kernel, each gradient rounded once.
    const auto f32 = opts.dtype(at::kFloat);
    at::Tensor dx32 = dx ? at::empty(x.sizes(), f32) : at::Tensor();
    at::Tensor dw32 = dw ? at::empty(w.sizes(), f32) : at::Tensor();
    at::Tensor db32 = db ? at::empty({g.K}, f32) : at::Tensor();
    conv2d_bwd_kernel<float>(g, dy.to(at::kFloat), x.to(at::kFloat), w.to(at::kFloat), dx ? &dx32 : nullptr,
                             dw ? &dw32 : nullptr, db ? &db32 : nullptr);
    if (dx) dx->copy_(dx32);
    if (dw) dw->copy_(dw32);
    if (db) db->copy_(db32);
  } else {
    AT_DISPATCH_FLOATING_TYPES(dt, "conv2d_bwd_cpu", [&] {
      conv2d_bwd_kernel<scalar_t>(g, dy, x, w, dx, dw, db);
    });
  }
}

at::Tensor conv2d_fwd_cpu(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& bias_,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          bool relu) {
  const BelowAutograd below_autograd;
  const auto g = check_conv2d_args("conv2d_fwd", x_, w_, stride, padding, dilation, groups);
  check_conv2d_bias("conv2d_fwd", g, x_, bias_);
  check_cpu_dtype("conv2d_fwd", x_);
  const at::Tensor x = x_.contiguous(), w = w_.contiguous();
  const at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  at::Tensor y = new_output({g.N, g.K, g.P, g.Q}, x.options());
  const auto dt = x.scalar_type();
  if (y.numel() > 0 && g.C == 0) {  // an empty reduction: y = bias (then ReLU)
    y.zero_();
    if (bias.defined()) y.add_(bias.view({1, g.K, 1, 1}));
    if (relu) y.clamp_min_(0);
  } else if (y.numel() > 0 && cpu::conv2d_direct_grouped_applies(g)) {
    cpu::conv2d_fwd_direct_grouped(g, x, w, bias, relu, y);  // depthwise / few channels per group
  } else if (y.numel() > 0 && dt == at::kBFloat16 && bf16_brgemm_usable()) {
    if (direct_fwd_applies(g)) {
      conv2d_fwd_direct<c10::BFloat16>(g, x, w, bias, relu, y);
    } else {
      conv2d_fwd_brgemm(g, x, w, bias, relu, y);
    }
  } else if (y.numel() > 0 && dt == at::kFloat && winograd_applies(g) && !f32_register_fwd(g) &&
             cpu::conv2d_fwd_winograd(g, x, w, bias, relu, y)) {
    // 3x3 stride 1 with >= 16 channels each side and operands in range: Winograd F(2x2, 3x3)
  } else if (y.numel() > 0 && dt == at::kFloat && f32_direct_applies(g)) {
    conv2d_fwd_direct<float>(g, x, w, bias, relu, y);  // stride 1, >= 8 channels per group, not 1x1
  } else if (y.numel() > 0 && (dt == at::kHalf || dt == at::kBFloat16)) {
    // Widening path: float32 copies through the float32 kernel, the output rounded once.
    const at::Tensor b32 = bias.defined() ? bias.to(at::kFloat) : at::Tensor();
    at::Tensor y32 = at::empty(y.sizes(), y.options().dtype(at::kFloat));
    conv2d_fwd_kernel<float>(g, x.to(at::kFloat), w.to(at::kFloat),
                             b32.defined() ? b32.const_data_ptr<float>() : nullptr, relu, y32);
    y.copy_(y32);
  } else if (y.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(dt, "conv2d_fwd_cpu", [&] {
      conv2d_fwd_kernel<scalar_t>(g, x, w, bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, relu, y);
    });
  }
  // The kernels work in NCHW; a channels_last call gets its output in torch's layout.
  return in_memory_format(y, conv_memory_format(x_, w_, stride, padding, dilation, groups));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_bwd_cpu(const at::Tensor& dy_, const at::Tensor& x_,
                                                              const at::Tensor& w_, at::IntArrayRef stride,
                                                              at::IntArrayRef padding, at::IntArrayRef dilation,
                                                              int64_t groups, std::array<bool, 3> mask) {
  const BelowAutograd below_autograd;
  const auto g = check_conv2d_args("conv2d_bwd", x_, w_, stride, padding, dilation, groups);
  check_conv2d_grad_out("conv2d_bwd", g, x_, dy_);
  check_cpu_dtype("conv2d_bwd", x_);
  const at::Tensor x = x_.contiguous(), w = w_.contiguous(), dy = dy_.contiguous();
  const auto opts = x.options();
  at::Tensor dx = mask[0] ? new_output(x.sizes(), opts) : at::empty({0}, opts);
  at::Tensor dw = mask[1] ? new_output(w.sizes(), opts) : at::empty({0}, opts);
  at::Tensor db = mask[2] ? new_output({g.K}, opts) : at::empty({0}, opts);
  if (g.N == 0 || g.C == 0) {  // no samples or no input channels: every sum is empty
    for (int i = 0; i < 3; ++i) {
      if (mask[i]) (i == 0 ? dx : i == 1 ? dw : db).zero_();
    }
    if (mask[2] && g.N > 0) db.copy_(dy.sum({0, 2, 3}));
  } else if (cpu::conv2d_direct_grouped_applies(g)) {
    // Depthwise / few channels per group: the direct kernel. Its dgrad multiplies the zero border
    // around dy by w, so a non-finite w's dgrad takes the GEMM path (NaN only where torch has NaN).
    const bool dx_direct = mask[0] && cpu::weight_all_finite(w);
    cpu::conv2d_bwd_direct_grouped(g, dy, x, w, dx_direct ? &dx : nullptr, mask[1] ? &dw : nullptr,
                                   mask[2] ? &db : nullptr);
    if (mask[0] && !dx_direct) conv2d_bwd_general(g, dy, x, w, &dx, nullptr, nullptr);
  } else {
    conv2d_bwd_general(g, dy, x, w, mask[0] ? &dx : nullptr, mask[1] ? &dw : nullptr, mask[2] ? &db : nullptr);
  }
  const at::MemoryFormat out_format = conv_memory_format(x_, w_, stride, padding, dilation, groups);
  if (mask[0]) dx = in_memory_format(dx, out_format);
  if (mask[1]) dw = in_memory_format(dw, out_format);
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("conv2d_fwd", &conv2d_fwd_cpu);
  m.impl("conv2d_bwd", &conv2d_bwd_cpu);
}

}  // namespace fastops
