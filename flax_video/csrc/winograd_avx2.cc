// The Winograd kernels (winograd_kernels.h) on AVX2 with FMA: 8 floats per
// register, a 6 x 16 matmul micro-kernel (12 of the 16 registers).
#include <immintrin.h>

#include <cstdint>

#define WINOGRAD_ISA avx2
#define WINOGRAD_TARGET __attribute__((target("avx2,fma")))

namespace flax_video_winograd::avx2 {
namespace {

struct V {
  using reg = __m256;
  static constexpr int kLanes = 8, kVectors = 2;
  WINOGRAD_TARGET static inline reg zero() { return _mm256_setzero_ps(); }
  WINOGRAD_TARGET static inline reg set1(float a) { return _mm256_set1_ps(a); }
  WINOGRAD_TARGET static inline reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  WINOGRAD_TARGET static inline reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  WINOGRAD_TARGET static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  WINOGRAD_TARGET static inline reg load(const float* p) { return _mm256_loadu_ps(p); }
  WINOGRAD_TARGET static inline void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  WINOGRAD_TARGET static inline reg load(const uint16_t* p) {
    __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  WINOGRAD_TARGET static inline void store(uint16_t* p, reg v) {
    // Round to nearest even, as XLA and oneDNN convert float32 to bfloat16 (no NaNs here).
    __m256i bits = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    bits = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    // packus works per 128-bit half: [0..3 0..3 | 4..7 4..7]; gather 0..7 into the low half.
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0b1000);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
};

}  // namespace
}  // namespace flax_video_winograd::avx2

#include "winograd_kernels.h"
