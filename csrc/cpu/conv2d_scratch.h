// Per-thread scratch buffers reused across calls, shared by the conv2d CPU passes (conv2d.cpp's
// gather-free passes and conv2d_winograd.cpp's transforms).
//
// Why reuse: a fresh multi-MiB buffer costs a page fault per 4 KiB on every call (glibc hands large
// freed blocks back to the OS): measured 20% of a bfloat16 conv backward (N8 C128 H28). Why a limit:
// a grow-only buffer that is never freed keeps the largest size any call asked for, for the life of
// the thread (a Winograd weight transform of 2048 x 2048 channels is 256 MiB). So one grow-only
// buffer per (calling thread, slot, element type) is kept up to kRetainBytes; a larger request is
// the call's own, freed with the Scratch, with transparent huge pages advised (512x fewer faults
// where THP is on). Buffers are uninitialised: callers write what they read. Two Scratch objects
// alive at once on one thread must use different slots.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>

#include "fastops.h"

namespace fastops::cpu {

enum ScratchSlot {
  kImage, kTaps, kGrid, kGridT, kAcc, kTapsReg,                // conv2d.cpp: gather-free passes
  kWinoV, kWinoM, kWinoWork, kWinoU, kWinoPart, kWinoPart64,  // conv2d_winograd.cpp
  kSlots
};
constexpr int64_t kRetainBytes = int64_t(16) << 20;

template <typename T>
class Scratch {
 public:
  Scratch(ScratchSlot slot, int64_t n) {
    const int64_t bytes = n * int64_t(sizeof(T));
    if (bytes > kRetainBytes) {
      own_ = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
      advise_huge_pages(own_);
      ptr_ = static_cast<T*>(own_.data_ptr());
      return;
    }
    struct Retained {
      std::unique_ptr<T[]> data;
      int64_t size = 0;
    };
    thread_local Retained retained[kSlots];
    Retained& r = retained[slot];
    if (r.size < n) {
      r.data.reset(new T[size_t(n)]);
      r.size = n;
    }
    ptr_ = r.data.get();
  }
  T* get() const { return ptr_; }

 private:
  at::Tensor own_;
  T* ptr_ = nullptr;
};

}  // namespace fastops::cpu
