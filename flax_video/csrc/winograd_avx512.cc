// The Winograd kernels (winograd_kernels.h) on AVX-512: 16 floats per
// register, a 6 x 64 matmul micro-kernel (24 of the 32 registers).
#include <immintrin.h>

#include <cstdint>

#define WINOGRAD_ISA avx512
#define WINOGRAD_TARGET __attribute__((target("avx512f,avx512bw")))

namespace flax_video_winograd::avx512 {
namespace {

struct V {
  using reg = __m512;
  static constexpr int kLanes = 16, kVectors = 4;
  WINOGRAD_TARGET static inline reg zero() { return _mm512_setzero_ps(); }
  WINOGRAD_TARGET static inline reg set1(float a) { return _mm512_set1_ps(a); }
  WINOGRAD_TARGET static inline reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  WINOGRAD_TARGET static inline reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  WINOGRAD_TARGET static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  WINOGRAD_TARGET static inline reg load(const float* p) { return _mm512_loadu_ps(p); }
  WINOGRAD_TARGET static inline void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  WINOGRAD_TARGET static inline reg load(const uint16_t* p) {
    __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  WINOGRAD_TARGET static inline void store(uint16_t* p, reg v) {
    // Round to nearest even, as XLA and oneDNN convert float32 to bfloat16 (no NaNs here).
    __m512i bits = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
  }
};

}  // namespace
}  // namespace flax_video_winograd::avx512

#include "winograd_kernels.h"
