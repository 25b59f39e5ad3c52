// Direct (gather-free, GEMM-free) grouped conv2d on CPU for depthwise and few-channel groups: see
// the header comment of conv2d_depthwise.cpp. Called from the conv2d host functions in conv2d.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include "fastops.h"

namespace fastops::cpu {

// Whether the direct grouped kernel takes this geometry: depthwise (groups == C > 1, any channel
// multiplier K / C), or groups of at most kDirectGroupMaxChannels input and output channels.
bool conv2d_direct_grouped_applies(const Conv2dGeometry& g);

// y (N, K, P, Q, contiguous) = conv(x, w) + bias, then ReLU when relu. x, w contiguous NCHW / KCRS;
// bias undefined or (K,); all of one dtype: float32, float64, float16 or bfloat16 (the last two
// computed in float32 and rounded once).
void conv2d_fwd_direct_grouped(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& w,
                               const at::Tensor& bias, bool relu, at::Tensor& y);

// The gradients asked for (null: not wanted) of y = conv(x, w) + b given dy, written into dx (N, C,
// H, W), dw (K, Cg, R, S), db (K), all contiguous, of x's dtype. dgrad multiplies the zero border it
// adds around dy by w, so the caller routes a non-finite w's dgrad elsewhere (weight_all_finite).
void conv2d_bwd_direct_grouped(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x,
                               const at::Tensor& w, at::Tensor* dx, at::Tensor* dw, at::Tensor* db);

// Whether every element of w is finite (no inf / NaN).
bool weight_all_finite(const at::Tensor& w);

}  // namespace fastops::cpu
