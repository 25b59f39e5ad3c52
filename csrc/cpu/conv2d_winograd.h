// Winograd F(2x2, 3x3) conv2d passes for float32 CPU tensors: see the header comment of
// conv2d_winograd.cpp. Called from the conv2d host functions in conv2d.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include "fastops.h"

namespace fastops::cpu {

// Whether the geometry is one the Winograd passes take: one group, 3x3, stride 1, dilation 1,
// padding at most 2 on each side, and enough channels on both sides for the transformed GEMMs to pay
// for the transforms. The caller checks the dtype (float32).
bool conv2d_winograd_applies(const Conv2dGeometry& g);
// The same for the weight gradient, which needs more channels: its GEMMs' outputs are only K x C.
bool conv2d_winograd_wgrad_applies(const Conv2dGeometry& g);

// Each pass takes contiguous NCHW / KCRS float32 tensors and writes its contiguous output. It returns
// false, with its output unspecified, when its operands are not all finite or so large that a
// transformed intermediate could overflow where the direct sum does not; the caller then runs another
// kernel. y (N, K, P, Q) = conv(x, w) + bias, then ReLU when relu (bias undefined or (K,)).
bool conv2d_fwd_winograd(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                         bool relu, at::Tensor& y);
// dx (N, C, H, W) of y = conv(x, w) given dy (N, K, P, Q).
bool conv2d_dgrad_winograd(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& w, at::Tensor& dx);
// dw (K, C, 3, 3) of y = conv(x, w) given dy (N, K, P, Q) and x (N, C, H, W).
bool conv2d_wgrad_winograd(const Conv2dGeometry& g, const at::Tensor& dy, const at::Tensor& x, at::Tensor& dw);

}  // namespace fastops::cpu
