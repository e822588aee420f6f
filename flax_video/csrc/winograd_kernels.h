// Winograd F(2, 3) convolution over NDHWC arrays (Lavin & Gray 2016), the
// forward pass of stride-1 convs whose kernel is 3 taps with padding 1 along
// some of (t, h, w) and 1 tap along the others: 3x3x3, 1x3x3 and 3x1x1.
//
// Each output tile of 2 positions along every Winograd axis is computed from a
// tile of 4 input positions: transformed (B^T d B per axis), multiplied per
// transform component by the transformed kernel U (a matmul over channels:
// 64 components for 3x3x3, 16 for 1x3x3, 4 for 3x1x1), and transformed back
// (A^T m A). A 3x3x3 conv then takes 64 multiplies per 8 outputs where the
// direct conv takes 216. Blocks of tiles are transformed, multiplied and
// transformed back while they are in cache, so the 8x larger transformed
// input never goes to memory. U (components, c, o) is computed by the caller.
//
// Written once over a vector type: included by winograd_avx512.cc and winograd_avx2.cc, each of which
// first defines WINOGRAD_ISA (the namespace of its entry points),
// WINOGRAD_TARGET (the ISA's function attribute) and struct V, its vector:
//   V::reg, V::kLanes (floats per register), V::kVectors (registers per row
//   of the matmul micro-kernel: 6 rows x kVectors accumulators must fit the
//   register file), zero, set1, add, sub, fmadd, and load/store of float32
//   and of bfloat16 (uint16_t) lanes.
// Everything is in an anonymous namespace, so each ISA's copy stays its own.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "winograd.h"

namespace flax_video_winograd::WINOGRAD_ISA {
namespace {

constexpr int kRows = 6;  // tiles per matmul micro-kernel call
constexpr int64_t kBlockBytes = 768 << 10;  // transformed input + product per block, kept in L2
// For the kernel gradient, whose per-component sums are read and written once
// per block: bigger blocks, each sum reused over more tiles.
constexpr int64_t kGradientBlockBytes = 3 << 20;

int cpu_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// B^T along one axis: 4 inputs at stride s -> 4 components at stride s.
WINOGRAD_TARGET inline void input_1d(V::reg* d, int s) {
  V::reg d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s];
  d[0] = V::sub(d0, d2);
  d[s] = V::add(d1, d2);
  d[2 * s] = V::sub(d2, d1);
  d[3 * s] = V::sub(d1, d3);
}

// A^T along one axis: 4 components at stride s -> 2 outputs, at d[0] and d[s].
WINOGRAD_TARGET inline void output_1d(V::reg* m, int s) {
  V::reg m0 = m[0], m1 = m[s], m2 = m[2 * s], m3 = m[3 * s];
  m[0] = V::add(V::add(m0, m1), m2);
  m[s] = V::sub(V::sub(m1, m2), m3);
}

// A row-major-or-not matrix: element (i, p) at data[i * row + p * step].
struct Strided {
  const float* data;
  int64_t row, step;
};

// c[0..rows) x (kLanes * vectors) (+)= a[0..rows) x b over k: b's rows (k) at
// stride ldb, c's rows at stride ldc; with kAccumulate, c is added to.
template <int kRowsHere, int kVectors, bool kAccumulate>
WINOGRAD_TARGET void micro_kernel(Strided a, const float* b, int64_t ldb, float* c, int64_t ldc,
    int64_t k) {
  V::reg acc[kRowsHere][kVectors];
  for (int i = 0; i < kRowsHere; i++)
    for (int j = 0; j < kVectors; j++)
      acc[i][j] = kAccumulate ? V::load(c + i * ldc + j * V::kLanes) : V::zero();
  for (int64_t p = 0; p < k; p++) {
    V::reg bp[kVectors];
    for (int j = 0; j < kVectors; j++) bp[j] = V::load(b + p * ldb + j * V::kLanes);
    for (int i = 0; i < kRowsHere; i++) {
      V::reg ai = V::set1(a.data[i * a.row + p * a.step]);
      for (int j = 0; j < kVectors; j++) acc[i][j] = V::fmadd(ai, bp[j], acc[i][j]);
    }
  }
  for (int i = 0; i < kRowsHere; i++)
    for (int j = 0; j < kVectors; j++) V::store(c + i * ldc + j * V::kLanes, acc[i][j]);
}

template <int kRowsHere, bool kAccumulate>
WINOGRAD_TARGET void rows_kernel(Strided a, const float* b, int64_t ldb, float* c, int64_t ldc,
    int64_t k, int64_t cols) {
  int64_t j = 0;
  for (; j + V::kVectors * V::kLanes <= cols; j += V::kVectors * V::kLanes)
    micro_kernel<kRowsHere, V::kVectors, kAccumulate>(a, b + j, ldb, c + j, ldc, k);
  switch ((cols - j) / V::kLanes) {  // fewer than kVectors left
    case 3:
      if constexpr (V::kVectors > 3) micro_kernel<kRowsHere, 3, kAccumulate>(a, b + j, ldb, c + j, ldc, k);
      break;
    case 2:
      if constexpr (V::kVectors > 2) micro_kernel<kRowsHere, 2, kAccumulate>(a, b + j, ldb, c + j, ldc, k);
      break;
    case 1: micro_kernel<kRowsHere, 1, kAccumulate>(a, b + j, ldb, c + j, ldc, k); break;
  }
}

// c (rows x cols) (+)= a (rows x k) * b (k x cols); b's and c's rows at strides
// ldb and ldc; cols a multiple of V::kLanes.
template <bool kAccumulate>
WINOGRAD_TARGET void matmul(Strided a, const float* b, int64_t ldb, float* c, int64_t ldc,
    int64_t rows, int64_t k, int64_t cols) {
  int64_t i = 0;
  for (; i + kRows <= rows; i += kRows)
    rows_kernel<kRows, kAccumulate>({a.data + i * a.row, a.row, a.step}, b, ldb, c + i * ldc, ldc, k, cols);
  Strided ai{a.data + i * a.row, a.row, a.step};
  float* ci = c + i * ldc;
  switch (rows - i) {
    case 5: rows_kernel<5, kAccumulate>(ai, b, ldb, ci, ldc, k, cols); break;
    case 4: rows_kernel<4, kAccumulate>(ai, b, ldb, ci, ldc, k, cols); break;
    case 3: rows_kernel<3, kAccumulate>(ai, b, ldb, ci, ldc, k, cols); break;
    case 2: rows_kernel<2, kAccumulate>(ai, b, ldb, ci, ldc, k, cols); break;
    case 1: rows_kernel<1, kAccumulate>(ai, b, ldb, ci, ldc, k, cols); break;
  }
}

struct Layout {
  Geometry g;
  int64_t tap[3], out[3], tiles[3];  // per axis: input taps per tile (4 or 1), outputs per tile, tile count
  int64_t components, tile_count;

  explicit Layout(const Geometry& geometry) : g(geometry) {
    components = 1;
    tile_count = g.n;
    for (int i = 0; i < 3; i++) {
      tap[i] = g.winograd[i] ? 4 : 1;
      out[i] = g.winograd[i] ? 2 : 1;
      tiles[i] = (g.size[i] + out[i] - 1) / out[i];
      components *= tap[i];
      tile_count *= tiles[i];
    }
  }

  // The tile's batch index and first output position per axis.
  void origin(int64_t tile, int64_t* n, int64_t* pos) const {
    for (int i = 2; i >= 0; i--) {
      pos[i] = tile % tiles[i] * out[i];
      tile /= tiles[i];
    }
    *n = tile;
  }
};

// Transforms the input tiles [first, first + count) into v (count, components, c).
// AT, AH, AW: input taps per tile along t, h, w (4 on Winograd axes, else 1).
template <int AT, int AH, int AW, typename T>
WINOGRAD_TARGET void transform_input(const Layout& l, const T* x, int64_t first,
    int64_t count, float* v) {
  const Geometry& g = l.g;
  constexpr int kComponents = AT * AH * AW;
  const int64_t sw = g.c, sh = g.size[2] * sw, st = g.size[1] * sh;
  V::reg d[kComponents];
  for (int64_t b = 0; b < count; b++) {
    int64_t n, pos[3];
    l.origin(first + b, &n, pos);
    // The tile's first input position (Winograd axes start one before the output: padding 1).
    const int64_t t0 = pos[0] - (AT == 4), h0 = pos[1] - (AH == 4), w0 = pos[2] - (AW == 4);
    const bool interior = t0 >= 0 && t0 + AT <= g.size[0] && h0 >= 0 && h0 + AH <= g.size[1] && w0 >= 0 &&
                          w0 + AW <= g.size[2];
    const T* base = x + n * g.size[0] * st + t0 * st + h0 * sh + w0 * sw;
    float* out = v + b * kComponents * g.c;
    for (int64_t c = 0; c < g.c; c += V::kLanes) {
      if (interior) {
        for (int i = 0; i < AT; i++)
          for (int j = 0; j < AH; j++)
            for (int k = 0; k < AW; k++) d[(i * AH + j) * AW + k] = V::load(base + i * st + j * sh + k * sw + c);
      } else {
        for (int i = 0; i < AT; i++)
          for (int j = 0; j < AH; j++)
            for (int k = 0; k < AW; k++) {
              bool inside = t0 + i >= 0 && t0 + i < g.size[0] && h0 + j >= 0 && h0 + j < g.size[1] &&
                            w0 + k >= 0 && w0 + k < g.size[2];
              d[(i * AH + j) * AW + k] = inside ? V::load(base + i * st + j * sh + k * sw + c) : V::zero();
            }
      }
      if (AW == 4)
        for (int i = 0; i < AT * AH; i++) input_1d(d + i * 4, 1);
      if (AH == 4)
        for (int i = 0; i < AT; i++)
          for (int k = 0; k < AW; k++) input_1d(d + i * 4 * AW + k, AW);
      if (AT == 4)
        for (int jk = 0; jk < AH * AW; jk++) input_1d(d + jk, AH * AW);
      for (int e = 0; e < kComponents; e++) V::store(out + e * g.c + c, d[e]);
    }
  }
}

// Transforms the products m (count, components, o) back into the output tiles.
template <int AT, int AH, int AW, typename T>
WINOGRAD_TARGET void transform_output(const Layout& l, const float* m,
    int64_t first, int64_t count, T* y) {
  const Geometry& g = l.g;
  constexpr int kComponents = AT * AH * AW;
  constexpr int RT = AT == 4 ? 2 : 1, RH = AH == 4 ? 2 : 1, RW = AW == 4 ? 2 : 1;
  const int64_t sw = g.o, sh = g.size[2] * sw, st = g.size[1] * sh;
  V::reg d[kComponents];
  for (int64_t b = 0; b < count; b++) {
    int64_t n, pos[3];
    l.origin(first + b, &n, pos);
    // Tiles at the far edges of odd sizes hang over by one output.
    const int64_t lt = std::min<int64_t>(RT, g.size[0] - pos[0]), lh = std::min<int64_t>(RH, g.size[1] - pos[1]),
                  lw = std::min<int64_t>(RW, g.size[2] - pos[2]);
    T* base = y + n * g.size[0] * st + pos[0] * st + pos[1] * sh + pos[2] * sw;
    const float* in = m + b * kComponents * g.o;
    for (int64_t o = 0; o < g.o; o += V::kLanes) {
      for (int e = 0; e < kComponents; e++) d[e] = V::load(in + e * g.o + o);
      // Outputs land at the first 1 or 2 entries of each axis.
      if (AW == 4)
        for (int i = 0; i < AT * AH; i++) output_1d(d + i * 4, 1);
      if (AH == 4)
        for (int i = 0; i < AT; i++)
          for (int k = 0; k < RW; k++) output_1d(d + i * 4 * AW + k, AW);
      if (AT == 4)
        for (int j = 0; j < RH; j++)
          for (int k = 0; k < RW; k++) output_1d(d + j * AW + k, AH * AW);
      for (int i = 0; i < lt; i++)
        for (int j = 0; j < lh; j++)
          for (int k = 0; k < lw; k++) V::store(base + i * st + j * sh + k * sw + o, d[(i * AH + j) * AW + k]);
    }
  }
}

template <int AT, int AH, int AW, typename T>
void run_tiles(const Layout& l, const T* x, const float* u, T* y) {
  const Geometry& g = l.g;
  int64_t block = kBlockBytes / (l.components * (g.c + g.o) * int64_t(sizeof(float)));
  block = std::max<int64_t>(kRows, block / kRows * kRows);
  const int64_t blocks = (l.tile_count + block - 1) / block;
  std::atomic<int64_t> next{0};
  auto work = [&] {
    std::vector<float> v(l.components * block * g.c), m(l.components * block * g.o);
    for (int64_t i; (i = next.fetch_add(1)) < blocks;) {
      int64_t first = i * block, count = std::min(block, l.tile_count - first);
      transform_input<AT, AH, AW>(l, x, first, count, v.data());
      // Per component e: m[:, e] (count x o) = v[:, e] (count x c) * u[e] (c x o).
      for (int64_t e = 0; e < l.components; e++)
        matmul<false>({v.data() + e * g.c, l.components * g.c, 1}, u + e * g.c * g.o, g.o, m.data() + e * g.o,
                      l.components * g.o, count, g.c, g.o);
      transform_output<AT, AH, AW>(l, m.data(), first, count, y);
    }
  };
  const int64_t threads = std::min<int64_t>(cpu_count(), blocks);
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < threads; t++) helpers.emplace_back(work);
  work();
  for (auto& t : helpers) t.join();
}

// A along one axis, the transpose of output_1d: 2 output gradients at d[0] and
// d[s] -> 4 components at stride s.
WINOGRAD_TARGET inline void output_gradient_1d(V::reg* d, int s) {
  V::reg y0 = d[0], y1 = d[s];
  d[s] = V::add(y0, y1);
  d[2 * s] = V::sub(y0, y1);
  d[3 * s] = V::sub(V::zero(), y1);
}

// Transforms the output gradient's tiles [first, first + count) into
// m (count, components, o): the transpose of transform_output, outputs beyond
// the frame taken as zero.
template <int AT, int AH, int AW, typename T>
WINOGRAD_TARGET void transform_output_gradient(const Layout& l, const T* dy,
    int64_t first, int64_t count, float* m) {
  const Geometry& g = l.g;
  constexpr int kComponents = AT * AH * AW;
  constexpr int RT = AT == 4 ? 2 : 1, RH = AH == 4 ? 2 : 1, RW = AW == 4 ? 2 : 1;
  const int64_t sw = g.o, sh = g.size[2] * sw, st = g.size[1] * sh;
  V::reg d[kComponents];
  for (int64_t b = 0; b < count; b++) {
    int64_t n, pos[3];
    l.origin(first + b, &n, pos);
    const int64_t lt = std::min<int64_t>(RT, g.size[0] - pos[0]), lh = std::min<int64_t>(RH, g.size[1] - pos[1]),
                  lw = std::min<int64_t>(RW, g.size[2] - pos[2]);
    const T* base = dy + n * g.size[0] * st + pos[0] * st + pos[1] * sh + pos[2] * sw;
    float* out = m + b * kComponents * g.o;
    for (int64_t o = 0; o < g.o; o += V::kLanes) {
      for (int i = 0; i < RT; i++)
        for (int j = 0; j < RH; j++)
          for (int k = 0; k < RW; k++)
            d[(i * AH + j) * AW + k] =
                i < lt && j < lh && k < lw ? V::load(base + i * st + j * sh + k * sw + o) : V::zero();
      if (AT == 4)
        for (int j = 0; j < RH; j++)
          for (int k = 0; k < RW; k++) output_gradient_1d(d + j * AW + k, AH * AW);
      if (AH == 4)
        for (int i = 0; i < AT; i++)
          for (int k = 0; k < RW; k++) output_gradient_1d(d + i * AH * AW + k, AW);
      if (AW == 4)
        for (int i = 0; i < AT * AH; i++) output_gradient_1d(d + i * AW, 1);
      for (int e = 0; e < kComponents; e++) V::store(out + e * g.o + o, d[e]);
    }
  }
}

// du (components, c, o) = sum over tiles of v[tile, e]^T m[tile, e]: the
// gradient of the transformed kernel. Each thread sums a fixed set of blocks
// and the threads' sums are added in order, so the result is deterministic.
template <int AT, int AH, int AW, typename T>
void kernel_gradient_tiles(const Layout& l, const T* x, const T* dy, float* du) {
  const Geometry& g = l.g;
  const int64_t block = std::max<int64_t>(1, kGradientBlockBytes / (l.components * (g.c + g.o) * 4));
  const int64_t blocks = (l.tile_count + block - 1) / block, size = l.components * g.c * g.o;
  const int64_t threads = std::min<int64_t>(cpu_count(), blocks);
  std::vector<std::vector<float>> sums(threads);
  auto work = [&](int64_t thread) {
    std::vector<float>& sum = sums[thread];
    sum.assign(size, 0.0f);
    std::vector<float> v(l.components * block * g.c), m(l.components * block * g.o);
    for (int64_t i = thread; i < blocks; i += threads) {
      int64_t first = i * block, count = std::min(block, l.tile_count - first);
      transform_input<AT, AH, AW>(l, x, first, count, v.data());
      transform_output_gradient<AT, AH, AW>(l, dy, first, count, m.data());
      // Per component e: du[e] (c x o) += v[:, e]^T (c x count) * m[:, e] (count x o).
      for (int64_t e = 0; e < l.components; e++)
        matmul<true>({v.data() + e * g.c, 1, l.components * g.c}, m.data() + e * g.o, l.components * g.o,
                     sum.data() + e * g.c * g.o, g.o, g.c, count, g.o);
    }
  };
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < threads; t++) helpers.emplace_back(work, t);
  work(0);
  for (auto& t : helpers) t.join();
  std::copy(sums[0].begin(), sums[0].end(), du);
  for (int64_t t = 1; t < threads; t++)
    for (int64_t i = 0; i < size; i++) du[i] += sums[t][i];
}

template <typename T>
void run(const Geometry& g, const T* x, const float* u, T* y) {
  const Layout l(g);
  const auto [t, h, w] = g.winograd;
  if (t && h && w) return run_tiles<4, 4, 4>(l, x, u, y);
  if (!t && h && w) return run_tiles<1, 4, 4>(l, x, u, y);
  if (t && !h && !w) return run_tiles<4, 1, 1>(l, x, u, y);
  if (t && h) return run_tiles<4, 4, 1>(l, x, u, y);
  if (t && w) return run_tiles<4, 1, 4>(l, x, u, y);
  if (h) return run_tiles<1, 4, 1>(l, x, u, y);
  return run_tiles<1, 1, 4>(l, x, u, y);
}

template <typename T>
void kernel_gradient(const Geometry& g, const T* x, const T* dy, float* du) {
  const Layout l(g);
  const auto [t, h, w] = g.winograd;
  if (t && h && w) return kernel_gradient_tiles<4, 4, 4>(l, x, dy, du);
  if (!t && h && w) return kernel_gradient_tiles<1, 4, 4>(l, x, dy, du);
  if (t && !h && !w) return kernel_gradient_tiles<4, 1, 1>(l, x, dy, du);
  if (t && h) return kernel_gradient_tiles<4, 4, 1>(l, x, dy, du);
  if (t && w) return kernel_gradient_tiles<4, 1, 4>(l, x, dy, du);
  if (h) return kernel_gradient_tiles<1, 4, 1>(l, x, dy, du);
  return kernel_gradient_tiles<1, 1, 4>(l, x, dy, du);
}

}  // namespace

void forward_f32(const Geometry& g, const float* x, const float* u, float* y) { run(g, x, u, y); }
void forward_bf16(const Geometry& g, const uint16_t* x, const float* u, uint16_t* y) { run(g, x, u, y); }
void kernel_gradient_f32(const Geometry& g, const float* x, const float* dy, float* du) {
  kernel_gradient(g, x, dy, du);
}
void kernel_gradient_bf16(const Geometry& g, const uint16_t* x, const uint16_t* dy, float* du) {
  kernel_gradient(g, x, dy, du);
}

}  // namespace flax_video_winograd::WINOGRAD_ISA
