// flax_video._onednn's Winograd F(2, 3) convolution (winograd.cc): the forward
// pass and kernel gradient of stride-1 convs with 3 taps and padding 1 along the Winograd axes.
#pragma once

#include <cstdint>

namespace flax_video_winograd {

// x (n, t, h, w, c) -> y (n, t, h, w, o); along axis i of (t, h, w) the kernel
// has 3 taps and padding 1 where winograd[i], else 1 tap and no padding.
// c and o are multiples of 16.
struct Geometry {
  int64_t n, c, o, size[3];
  bool winograd[3];
};

// Whether this CPU runs the kernels (AVX-512 F and BW, or AVX2 and FMA), and
// which of those ISAs they use.
bool supported();
const char* isa();

// u: the transformed kernel, (components, c, o) in float32, components =
// 4 ** (number of Winograd axes) in (t, h, w) order.
void forward_f32(const Geometry& g, const float* x, const float* u, float* y);
void forward_bf16(const Geometry& g, const uint16_t* x, const float* u, uint16_t* y);

// du (components, c, o) in float32: the gradient of the transformed kernel for
// output gradient dy (n, t, h, w, o); the caller maps it back to the kernel's taps.
void kernel_gradient_f32(const Geometry& g, const float* x, const float* dy, float* du);
void kernel_gradient_bf16(const Geometry& g, const uint16_t* x, const uint16_t* dy, float* du);

}  // namespace flax_video_winograd
