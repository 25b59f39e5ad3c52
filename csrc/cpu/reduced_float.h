// float16 / bfloat16 storage with float32 arithmetic, for the C++ CPU kernels.
//
// A kernel templated on its storage type S computes in compute_t<S>: float for float16, bfloat16
// and float32, double for float64 (at::opmath_type). Values are widened when loaded (exact: every
// float16 and bfloat16 is a float32) and narrowed once, when a result is stored: round to nearest
// even, NaN kept NaN (ATen's conversions: AVX-512 / AVX2 shifts for bfloat16, F16C for float16).
// For S == compute_t<S> every helper here is the plain load / store / pointer, so the float32 and
// float64 kernels compile to what they were before.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fastops::cpu {

using at::vec::Vectorized;

template <typename S>
constexpr bool is_reduced_v = std::is_same_v<S, c10::BFloat16> || std::is_same_v<S, c10::Half>;

// The arithmetic type of a kernel whose tensors hold S.
template <typename S>
using compute_t = at::opmath_type<S>;

// n <= Vectorized<compute_t<S>>::size() elements of S widened to compute lanes (lanes >= n are 0).
template <typename S>
inline Vectorized<compute_t<S>> load_wide(const S* p, int64_t n = Vectorized<compute_t<S>>::size()) {
  using V = Vectorized<compute_t<S>>;
  if constexpr (!is_reduced_v<S>) {
    return V::loadu(p, n);
  } else {
    if (n == V::size()) {
      V out;
      at::vec::load_to_float<S>(p, out);
      return out;
    }
    return std::get<0>(at::vec::convert_to_float<S>(Vectorized<S>::loadu(p, n)));
  }
}

// The first n lanes of v rounded to S and stored at p.
template <typename S>
inline void store_narrow(const Vectorized<compute_t<S>>& v, S* p, int64_t n = Vectorized<compute_t<S>>::size()) {
  if constexpr (!is_reduced_v<S>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<S>(v, v).store(p, n);
  }
}

// The first n (<= 2 Vectorized<float>::size()) lanes of (lo, hi) rounded to S and stored at p: one
// conversion for both halves (store_narrow converts a vector twice to fill one Vectorized<S>).
template <typename S>
inline void store_narrow2(const Vectorized<float>& lo, const Vectorized<float>& hi, S* p,
                          int64_t n = 2 * Vectorized<float>::size()) {
  static_assert(is_reduced_v<S>);
  at::vec::convert_from_float<S>(lo, hi).store(p, n);
}

// dst[0, n) = src[0, n) converted (widened exactly, or narrowed with one rounding).
template <typename From, typename To>
inline void convert_n(const From* src, To* dst, int64_t n) {
  if constexpr (std::is_same_v<From, To>) {
    if (n > 0) std::memcpy(dst, src, sizeof(From) * n);
  } else if constexpr (is_reduced_v<From> && std::is_same_v<To, float>) {
    constexpr int64_t L = Vectorized<float>::size();
    int64_t i = 0;
    for (; i + L <= n; i += L) load_wide(src + i).store(dst + i);
    if (i < n) load_wide(src + i, n - i).store(dst + i, n - i);
  } else if constexpr (std::is_same_v<From, float> && is_reduced_v<To>) {
    using V = Vectorized<float>;
    constexpr int64_t L = V::size();
    int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) store_narrow2(V::loadu(src + i), V::loadu(src + i + L), dst + i);
    if (i + L < n) {
      store_narrow2(V::loadu(src + i), V::loadu(src + i + L, n - i - L), dst + i, n - i);
    } else if (i < n) {
      store_narrow(V::loadu(src + i, n - i), dst + i, n - i);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<To>(src[i]);
  }
}

// p itself when S is its own compute type, else the n elements widened into buf.
template <typename S>
inline const compute_t<S>* widen(const S* p, int64_t n, compute_t<S>* buf) {
  if constexpr (std::is_same_v<S, compute_t<S>>) {
    return p;
  } else {
    convert_n(p, buf, n);
    return buf;
  }
}

}  // namespace fastops::cpu
