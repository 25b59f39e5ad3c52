// Conv2d, C++ kernels for CPU tensors (float32, float64): forward, grad-input and grad-weight.
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
//
// Traffic (float32): forward reads x once (plus the padded copy: one more read + write of x), the
// gathered tiles live in L2 (R S times the input's bytes pass through L2, not memory), w is read
// once per tile from L2, y written once: ~4 (2 N C H W + N K P Q) bytes from memory. torch's
// unfused im2col path (slow_conv2d) materialises col per sample (4 P Q CRS bytes written and read
// back); oneDNN's direct convolution (the baseline) gathers nothing.
//
// Numerics. Accumulation in the input dtype through BLAS (float32 / float64); dx sums the R S
// contributions of each pixel in (c, r, s, p, q) order, dW sums over samples in chunk order.
// Scratch: two tile buffers per thread (<= max(kColBudget, CRS x (kMinCols + Q)) + Kg x tile
// columns) and, with padding, the padded input (and dx) of the thread's chunk: O(input), never
// O(N P Q CRS).
//
// Preconditions (check_conv2d_args): 4-D x and w of the same floating dtype and device, groups
// divides C and K, w.size(1) == C / groups, positive stride/dilation, non-negative padding, P, Q >= 1.
// Non-contiguous inputs are made contiguous here; the kernels write NCHW and the outputs are returned
// in torch's conv layout (channels_last when x or w is, conv_memory_format in csrc/fastops.h).
//
// References: Chellapilla et al., "High Performance Convolutional Neural Networks for Document
// Processing" (2006) for im2col + GEMM; CUTLASS's implicit-GEMM conv docs for the M/N/K naming.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "fastops.h"

namespace fastops {
namespace {

using at::vec::Vectorized;

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

  PaddedPlanes(const Conv2dGeometry& g, int64_t n0_, int64_t n1, const T* x) : n0(n0_) {
    if (g.ph == 0 && g.pw == 0) {
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
  // dx of samples [n0, n1) <- the interior of the padded planes.
  void copy_interior_to(const Conv2dGeometry& g, int64_t n1, T* dx) const {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < g.C; ++c) {
        const T* src = ptr + (n - n0) * sample_stride + c * plane + g.ph * Ws + g.pw;
        T* dst = dx + (n * g.C + c) * g.H * g.W;
        for (int64_t h = 0; h < g.H; ++h) std::memcpy(dst + h * g.W, src + h * Ws, sizeof(T) * g.W);
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

// col (CRS x L, L = tile columns) <- the input patches of the tile's output rows, group gi.
template <typename T>
void im2col_tile(const Conv2dGeometry& g, const PaddedPlanes<T>& src, int64_t gi, const Tile& t, const TileRows& tr,
                 T* col) {
  const int64_t L = t.cols(g), nrows = t.r1 - t.r0, Q = g.Q;
  for (int64_t c = 0; c < g.Cg; ++c) {
    const T* xc = src.ptr + (gi * g.Cg + c) * src.plane;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        T* dst = col + ((c * g.R + r) * g.S + s) * L;
        for (int64_t i = 0; i < nrows; ++i, dst += Q) {
          const T* row = xc + tr.base[i] + (tr.h0[i] + r * g.dh) * src.Ws + s * g.dw;
          if (g.sw == 1) {
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
          im2col_tile(g, planes, gi, t, TileRows(g, t, planes), col.get());
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

template <typename T>
void conv2d_bwd_kernel(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                       at::Tensor* dx, at::Tensor* dw, at::Tensor* db) {
  const auto opts = x.options();
  const T* xp = x.const_data_ptr<T>();
  const T* dyp = dy.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  T* dxp = dx ? dx->mutable_data_ptr<T>() : nullptr;
  const int64_t CRS = g.crs(), PQ = g.pq(), HW = g.hw();
  const int64_t chunks = sample_chunks(g.N);
  // One partial dW (K x CRS) and db (K) per chunk, summed in chunk order below.
  std::vector<at::Tensor> dw_part(dw ? chunks : 0);
  std::vector<std::vector<T>> db_part(db ? chunks : 0);
  for_each_sample_chunk(g.N, chunks, [&](int64_t chunk, int64_t n0, int64_t n1) {
    const bool direct = g.pointwise();
    const int64_t rows = tile_rows(g, n1 - n0);
    std::unique_ptr<T[]> col(direct ? nullptr : new T[size_t(CRS * rows * g.Q)]);
    std::unique_ptr<T[]> dyt(direct ? nullptr : new T[size_t(g.Kg * rows * g.Q)]);  // dy of a tile spanning samples
    at::Tensor dwc;
    if (dw) dwc = dw_part[chunk] = at::zeros({g.K, CRS}, opts);
    if (db) db_part[chunk].assign(g.K, T(0));
    const PaddedPlanes<T> planes(g, n0, direct || !dw ? n0 : n1, xp);
    // col2im accumulates into zeroed (padded) planes; a pointwise dx is written whole by the GEMM.
    std::optional<PaddedPlanes<T>> dx_planes;
    if (dx && !direct) {
      if (g.ph == 0 && g.pw == 0) {
        std::fill(dxp + n0 * g.C * HW, dxp + n1 * g.C * HW, T(0));
        dx_planes.emplace(g, n0, n1, dxp);  // scatters straight into dx
      } else {
        dx_planes.emplace(g, n0, n1, nullptr);
      }
    }
    for (int64_t gi = 0; gi < g.G; ++gi) {
      const at::Tensor wg = mat(wp + gi * g.Kg * CRS, g.Kg, CRS, CRS, opts);
      at::Tensor dwg = dw ? dwc.narrow(0, gi * g.Kg, g.Kg) : at::Tensor();
      for_each_tile(g, n0, n1, rows, [&](const Tile& t) {
        const int64_t L = t.cols(g), n_first = t.r0 / g.P, p_first = t.r0 % g.P;
        // Both planes share the sample stride (C Hs Ws), so one row table serves the gather and the scatter.
        std::optional<TileRows> tile_rows_table;
        auto rows_of = [&](const Tile& tt) -> const TileRows& {
          if (!tile_rows_table) tile_rows_table.emplace(g, tt, dx_planes ? *dx_planes : planes);
          return *tile_rows_table;
        };
        at::Tensor dyv;
        if (t.one_sample(g)) {
          dyv = mat(dyp + (n_first * g.K + gi * g.Kg) * PQ + p_first * g.Q, g.Kg, L, PQ, opts);
        } else {
          for_each_sample_segment(g, t, [&](int64_t n, int64_t p0, int64_t p1, int64_t off) {
            for (int64_t k = 0; k < g.Kg; ++k) {
              std::memcpy(dyt.get() + k * L + off, dyp + (n * g.K + gi * g.Kg + k) * PQ + p0 * g.Q,
                          sizeof(T) * (p1 - p0) * g.Q);
            }
          });
          dyv = mat(dyt.get(), g.Kg, L, L, opts);
        }
        const T* x_first = xp + (n_first * g.C + gi * g.Cg) * HW + p_first * g.Q;  // pointwise operand
        if (dw) {
          at::Tensor colv;
          if (direct) {
            colv = mat(x_first, CRS, L, HW, opts);
          } else {
            im2col_tile(g, planes, gi, t, rows_of(t), col.get());
            colv = mat(col.get(), CRS, L, L, opts);
          }
          dwg.addmm_(dyv, colv.t());
        }
        if (dx) {
          if (direct) {
            at::Tensor dxv = mat(dxp + (n_first * g.C + gi * g.Cg) * HW + p_first * g.Q, CRS, L, HW, opts);
            at::mm_out(dxv, wg.t(), dyv);
          } else {
            at::Tensor colv = mat(col.get(), CRS, L, L, opts);
            at::mm_out(colv, wg.t(), dyv);
            col2im_tile_add(g, col.get(), gi, t, rows_of(t), *dx_planes);
          }
        }
      });
    }
    if (dx_planes && dx_planes->padded()) dx_planes->copy_interior_to(g, n1, dxp);
    if (db) {
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t k = 0; k < g.K; ++k) {
          db_part[chunk][k] += at::vec::reduce_all<T>([](Vectorized<T> a, Vectorized<T> b) { return a + b; },
                                                      dyp + (n * g.K + k) * PQ, PQ);
        }
      }
    }
  });
  if (dw) {
    at::Tensor acc = dw_part[0];
    for (int64_t c = 1; c < chunks; ++c) acc.add_(dw_part[c]);
    dw->view({g.K, CRS}).copy_(acc);
  }
  if (db) {
    T* dbp = db->mutable_data_ptr<T>();
    for (int64_t k = 0; k < g.K; ++k) {
      T s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += db_part[c][k];
      dbp[k] = s;
    }
  }
}

at::Tensor conv2d_fwd_cpu(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& bias_,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          bool relu) {
  const BelowAutograd below_autograd;
  const auto g = check_conv2d_args("conv2d_fwd", x_, w_, stride, padding, dilation, groups);
  check_conv2d_bias("conv2d_fwd", g, x_, bias_);
  TORCH_CHECK_TYPE(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble,
                   "conv2d_fwd: the CPU kernel takes float32 or float64 input, got ", x_.scalar_type());
  const at::Tensor x = x_.contiguous(), w = w_.contiguous();
  const at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  at::Tensor y = new_output({g.N, g.K, g.P, g.Q}, x.options());
  if (y.numel() > 0 && g.C == 0) {  // an empty reduction: y = bias (then ReLU)
    y.zero_();
    if (bias.defined()) y.add_(bias.view({1, g.K, 1, 1}));
    if (relu) y.clamp_min_(0);
  } else if (y.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_fwd_cpu", [&] {
      conv2d_fwd_kernel<scalar_t>(g, x, w, bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, relu, y);
    });
  }
  // The kernels work in NCHW; a channels_last call gets its output in torch's layout.
  return y.contiguous(conv_memory_format(x_, w_));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_bwd_cpu(const at::Tensor& dy_, const at::Tensor& x_,
                                                              const at::Tensor& w_, at::IntArrayRef stride,
                                                              at::IntArrayRef padding, at::IntArrayRef dilation,
                                                              int64_t groups, std::array<bool, 3> mask) {
  const BelowAutograd below_autograd;
  const auto g = check_conv2d_args("conv2d_bwd", x_, w_, stride, padding, dilation, groups);
  check_conv2d_grad_out("conv2d_bwd", g, x_, dy_);
  TORCH_CHECK_TYPE(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble,
                   "conv2d_bwd: the CPU kernel takes float32 or float64 input, got ", x_.scalar_type());
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
  } else {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_bwd_cpu", [&] {
      conv2d_bwd_kernel<scalar_t>(g, dy, x, w, mask[0] ? &dx : nullptr, mask[1] ? &dw : nullptr,
                                  mask[2] ? &db : nullptr);
    });
  }
  const at::MemoryFormat out_format = conv_memory_format(x_, w_);
  if (mask[0]) dx = dx.contiguous(out_format);
  if (mask[1]) dw = dw.contiguous(out_format);
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("conv2d_fwd", &conv2d_fwd_cpu);
  m.impl("conv2d_bwd", &conv2d_bwd_cpu);
}

}  // namespace fastops
