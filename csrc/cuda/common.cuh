// Small device and launch helpers shared by the fastops CUDA kernels: warp/block reductions of any
// trivially copyable value, 16-byte vectorised loads/stores, accumulation-type math, and the
// device-side "bad index" report that lets a kernel refuse out-of-range data without reading it.
//
// Kept header-only and generic (no op-specific types) so each csrc/cuda/<stem>.cu instantiates only
// what it uses. All functions assume blockDim.x is a multiple of 32 (every launch here uses a
// multiple of 32) and that a whole warp reaches each warp/block reduction (full-mask shuffles).
#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>

namespace fastops {
namespace cuda {

constexpr int kWarpSize = 32;

// Accumulation type: float for half/bfloat16/float, double for double (ATen's CUDA rule).
template <typename T>
using acc_t = at::acc_type<T, /*is_cuda=*/true>;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The largest gridDim.x; kernels that take a capped grid loop over their work with a grid stride.
constexpr int64_t kMaxGridX = 2147483647;

// ---- accumulation-type math ---------------------------------------------------------------------
// Overloads instead of std:: calls so that the float versions are the accurate expf/logf (a
// stray double promotion would cost 2 x fp64 throughput on every element). INFINITY/NAN are
// float constants whose conversion to double keeps them inf/NaN; the macros also avoid needing
// --expt-relaxed-constexpr for std::numeric_limits in device code.
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
// fmax returns the non-NaN operand: a running max built with it stays a number when the data has
// NaNs, so callers must carry NaN through a sum instead (see the online log-sum-exp users).
__device__ __forceinline__ float max_acc(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_acc(double a, double b) { return fmax(a, b); }
template <typename A>
__device__ __forceinline__ A inf_acc() {
  return static_cast<A>(INFINITY);
}
template <typename A>
__device__ __forceinline__ A nan_acc() {
  return static_cast<A>(NAN);
}

// ---- reductions ---------------------------------------------------------------------------------

// __shfl_xor_sync for any trivially copyable value, one 32-bit word at a time (a struct of partial
// sums is reduced in one pass instead of one reduction per field).
template <typename V>
__device__ __forceinline__ V shfl_xor(const V& v, int lane_mask) {
  static_assert(std::is_trivially_copyable_v<V> && sizeof(V) % 4 == 0, "shfl_xor: 4-byte-multiple POD only");
  constexpr int kWords = sizeof(V) / 4;
  uint32_t w[kWords];
  memcpy(w, &v, sizeof(V));
#pragma unroll
  for (int i = 0; i < kWords; ++i) w[i] = __shfl_xor_sync(0xffffffffu, w[i], lane_mask);
  V out;
  memcpy(&out, w, sizeof(V));
  return out;
}

// Butterfly reduction: every lane ends with the result. For a commutative `op` (op(a, b) == op(b, a)
// bit for bit, as + and a symmetric merge are) all lanes hold the same bits, so lanes may use the
// result independently without a broadcast.
template <typename V, typename Op>
__device__ __forceinline__ V warp_all_reduce(V v, Op op) {
#pragma unroll
  for (int mask = kWarpSize / 2; mask > 0; mask >>= 1) v = op(v, shfl_xor(v, mask));
  return v;
}

// Block-wide reduction, result returned to every thread. `smem` must hold kWarpSize + 1 values and
// `identity` must satisfy op(identity, v) == v (it pads warp 0 when the block has < 32 warps).
// The leading barrier makes back-to-back calls on the same `smem` safe (e.g. one call per row in a
// grid-stride loop): nobody overwrites the partials before every thread has read the last result.
template <typename V, typename Op>
__device__ __forceinline__ V block_all_reduce(V v, Op op, const V& identity, V* smem) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  v = warp_all_reduce(v, op);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_all_reduce(lane < nwarps ? smem[lane] : identity, op);
    if (lane == 0) smem[kWarpSize] = v;
  }
  __syncthreads();
  return smem[kWarpSize];
}

template <typename A>
struct SumOp {
  __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};

// ---- vectorised memory access -------------------------------------------------------------------

// N elements of T moved as one access of N * sizeof(T) bytes (one 128-bit LDG/STG for N * sizeof(T)
// == 16). The caller guarantees the alignment; see is_aligned().
template <typename T, int N>
struct alignas(sizeof(T) * N) Packed {
  T v[N];
};

// Widest vector of T that is one 16-byte access: 8 x half/bfloat16, 4 x float, 2 x double.
template <typename T>
constexpr int kVec16 = 16 / sizeof(T) > 0 ? static_cast<int>(16 / sizeof(T)) : 1;

inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Loads p[0..N) (p aligned to N * sizeof(T)) converted to the accumulation type A.
template <int N, typename T, typename A>
__device__ __forceinline__ void load_acc(const T* p, A (&out)[N]) {
  const Packed<T, N> pk = *reinterpret_cast<const Packed<T, N>*>(p);
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = static_cast<A>(pk.v[k]);
}

// Stores N values rounded to T at p (aligned to N * sizeof(T)).
template <int N, typename T, typename A>
__device__ __forceinline__ void store_from_acc(T* p, const A (&in)[N]) {
  Packed<T, N> pk;
#pragma unroll
  for (int k = 0; k < N; ++k) pk.v[k] = static_cast<T>(in[k]);
  *reinterpret_cast<Packed<T, N>*>(p) = pk;
}

// ---- launch checks and device-side error reports -----------------------------------------------

// True while the current stream is capturing a CUDA graph: host syncs (item(), D2H copies) are
// illegal then and would invalidate the capture.
inline bool current_stream_capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// Lets a kernel report "element i of the input is invalid" (e.g. a class index out of range)
// instead of reading out of bounds; the smallest reported i wins, so the message is deterministic.
// Cost: one 8-byte fill before the launch and, in first_bad(), one device->host sync.
class DeviceBadIndex {
 public:
  static constexpr unsigned long long kNone = ~0ull;

  explicit DeviceBadIndex(const at::Device& device)
      : buf_(at::full({1}, static_cast<int64_t>(-1), at::TensorOptions().dtype(at::kLong).device(device))) {}

  // Kernel argument.
  unsigned long long* ptr() { return reinterpret_cast<unsigned long long*>(buf_.data_ptr<int64_t>()); }

  // The smallest reported index, or nullopt when none was reported. Synchronises with the current
  // stream; while a graph is being captured it returns nullopt without looking (the kernels have
  // then left NaN in the affected outputs, which is all a graph replay can report).
  std::optional<int64_t> first_bad() const {
    if (current_stream_capturing()) return std::nullopt;
    const int64_t v = buf_.item<int64_t>();
    if (v == -1) return std::nullopt;  // kNone as int64
    return v;
  }

 private:
  at::Tensor buf_;  // int64 {1}, all ones (kNone) until a kernel reports
};

// i >= 0. atomicMin on the unsigned view: kNone (all ones) is larger than any valid index.
__device__ __forceinline__ void report_bad_index(unsigned long long* buf, int64_t i) {
  atomicMin(buf, static_cast<unsigned long long>(i));
}

}  // namespace cuda
}  // namespace fastops
