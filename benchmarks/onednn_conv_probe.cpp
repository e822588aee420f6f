// Probe: one of r3d_18's convolutions (layer1, 64->64, 3x3x3, 4x16x56x56, channels last) through oneDNN's own
// primitive, to size the oneDNN-from-JAX route of issue #30. Not built by the package or CI.
//
//   apt-get install libdnnl-dev          # Debian's oneDNN 2.6 (CPU runtime); PyPI's `onednn` wheel is a SYCL build
//                                        # that cannot create a plain CPU engine here
//   g++ -O2 -std=c++17 benchmarks/onednn_conv_probe.cpp -ldnnl -o /tmp/onednn_conv_probe
//   OMP_NUM_THREADS=2 /tmp/onednn_conv_probe [bf16]
#include <oneapi/dnnl/dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <vector>
using namespace dnnl;
int main(int argc, char** argv) {
  bool bf16 = argc > 1;
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  memory::dims src{4, 64, 16, 56, 56}, wei{64, 64, 3, 3, 3}, dst{4, 64, 16, 56, 56};
  memory::dims strides{1, 1, 1}, pad{1, 1, 1};
  auto dt = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  auto src_md = memory::desc(src, dt, memory::format_tag::ndhwc);   // channels last, as JAX holds it
  auto wei_md = memory::desc(wei, dt, memory::format_tag::any);
  auto dst_md = memory::desc(dst, dt, memory::format_tag::ndhwc);
  auto desc = convolution_forward::desc(prop_kind::forward_inference, algorithm::convolution_direct,
                                        src_md, wei_md, dst_md, strides, pad, pad);
  auto pd = convolution_forward::primitive_desc(desc, eng);
  printf("impl: %s\n", pd.impl_info_str());
  memory s_m(src_md, eng), w_m(pd.weights_desc(), eng), d_m(dst_md, eng);
  auto conv = convolution_forward(pd);
  std::vector<double> times;
  for (int i = 0; i < 6; i++) {
    auto t = std::chrono::steady_clock::now();
    conv.execute(s, {{DNNL_ARG_SRC, s_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DST, d_m}});
    s.wait();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
  }
  printf("%s forward: first %.1f ms, then %.1f %.1f %.1f %.1f %.1f ms\n", bf16 ? "bf16" : "f32", times[0], times[1],
         times[2], times[3], times[4], times[5]);
}
