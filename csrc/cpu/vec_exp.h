// The vectorised exp of the CPU softmax kernels (cross_entropy.cpp, linear_cross_entropy.cpp).
//
// float32: ATen's polynomial exp_u20 (<= 20 ulp, ~2.4e-6 relative), about half the cost of Sleef's
// 1-ulp exp; softmax probabilities and the log of their sum need no more than that in float32, and
// the tests hold the results to 2e-5 of the float64 reference. float64 keeps Sleef's 1-ulp exp.
// exp_u20 maps NaN to a finite garbage value: callers either never feed it NaN (rows whose max or
// log-sum-exp is not finite are written without exp) or use vexp_keep_nan.
#pragma once

#include <ATen/cpu/vec/vec.h>

namespace fastops::cpu {

template <typename T>
inline at::vec::Vectorized<T> vexp(const at::vec::Vectorized<T>& v) {
  return v.exp();
}
template <>
inline at::vec::Vectorized<float> vexp(const at::vec::Vectorized<float>& v) {
  return v.exp_u20();
}

// vexp with NaN lanes kept NaN: for kernels whose lanes are different rows, so that a NaN row (and
// an all -inf row, whose x - m is NaN) stays NaN, as torch's.
template <typename T>
inline at::vec::Vectorized<T> vexp_keep_nan(const at::vec::Vectorized<T>& v) {
  return at::vec::Vectorized<T>::blendv(vexp(v), v, v.isnan());
}

}  // namespace fastops::cpu
