// Which ISA's Winograd kernels (winograd_kernels.h) run: AVX-512 where the
// CPU has it, else AVX2 with FMA, chosen per call from the running CPU.
#include "winograd.h"

namespace flax_video_winograd {

#define DECLARE_KERNELS(isa)                                                                  \
  namespace isa {                                                                             \
  void forward_f32(const Geometry& g, const float* x, const float* u, float* y);              \
  void forward_bf16(const Geometry& g, const uint16_t* x, const float* u, uint16_t* y);       \
  void kernel_gradient_f32(const Geometry& g, const float* x, const float* dy, float* du);     \
  void kernel_gradient_bf16(const Geometry& g, const uint16_t* x, const uint16_t* dy, float* du); \
  }
DECLARE_KERNELS(avx512)
DECLARE_KERNELS(avx2)
#undef DECLARE_KERNELS

namespace {
bool has_avx512() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"); }
bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
}  // namespace

bool supported() { return has_avx512() || has_avx2(); }
const char* isa() { return has_avx512() ? "avx512" : has_avx2() ? "avx2" : "none"; }

void forward_f32(const Geometry& g, const float* x, const float* u, float* y) {
  has_avx512() ? avx512::forward_f32(g, x, u, y) : avx2::forward_f32(g, x, u, y);
}
void forward_bf16(const Geometry& g, const uint16_t* x, const float* u, uint16_t* y) {
  has_avx512() ? avx512::forward_bf16(g, x, u, y) : avx2::forward_bf16(g, x, u, y);
}
void kernel_gradient_f32(const Geometry& g, const float* x, const float* dy, float* du) {
  has_avx512() ? avx512::kernel_gradient_f32(g, x, dy, du) : avx2::kernel_gradient_f32(g, x, dy, du);
}
void kernel_gradient_bf16(const Geometry& g, const uint16_t* x, const uint16_t* dy, float* du) {
  has_avx512() ? avx512::kernel_gradient_bf16(g, x, dy, du) : avx2::kernel_gradient_bf16(g, x, dy, du);
}

}  // namespace flax_video_winograd
