// The part of oneDNN's v3 C API that onednn_conv.cc calls, declared here so that
// the extension builds without oneDNN's headers or library: libdnnl.so.3 (the
// `onednn-cpu-gomp` wheel) is opened at run time. oneDNN keeps its ABI within a
// major version; tests/test_onednn.py checks the values below against the
// oneDNN 3.x headers that torch ships.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dnnl_abi {
constexpr int kMaxDims = 12;
typedef int64_t dims_t[kMaxDims];
typedef int status_t;

typedef struct engine* engine_t;
typedef struct stream* stream_t;
typedef struct memory_desc* memory_desc_t;
typedef const struct memory_desc* const_memory_desc_t;
typedef struct memory* memory_t;
typedef struct primitive_desc* primitive_desc_t;
typedef const struct primitive_desc* const_primitive_desc_t;
typedef struct primitive* primitive_t;
typedef const struct primitive* const_primitive_t;
typedef struct primitive_attr* primitive_attr_t;
typedef const struct primitive_attr* const_primitive_attr_t;

struct exec_arg_t {
  int arg;
  memory_t memory;
};

struct version_t {
  int major, minor, patch;
  const char* hash;
  unsigned cpu_runtime, gpu_runtime;
};

// Enum values, passed as ints.
enum : int {
  success = 0,
  bf16 = 2,                  // dnnl_data_type_t
  f32 = 3,
  cpu = 1,                   // dnnl_engine_kind_t
  stream_default_flags = 1,  // dnnl_stream_in_order
  format_tag_any = 1,
  forward_training = 64,     // dnnl_prop_kind_t
  backward = 128,
  convolution_direct = 1,    // dnnl_alg_kind_t
  scratchpad_mode_user = 1,
  use_scale = 2,             // dnnl_normalization_flags_t
  use_shift = 4,
  query_impl_info_str = 8,   // dnnl_query_t
  query_src_md = 129,
  query_diff_src_md = 130,
  query_weights_md = 131,
  query_diff_weights_md = 132,
  query_dst_md = 133,
  query_diff_dst_md = 134,
  query_scratchpad_md = 136,
  arg_src = 1,               // DNNL_ARG_*
  arg_dst = 17,
  arg_weights = 33,
  arg_mean = 49,
  arg_variance = 50,
  arg_scale = 51,
  arg_shift = 52,
  arg_scratchpad = 80,
  arg_diff_src = 129,
  arg_diff_dst = 145,
  arg_diff_weights = 161,
  arg_diff_scale = 255,
  arg_diff_shift = 256,
  arg_from = arg_src,
  arg_to = arg_dst,
};
}  // namespace dnnl_abi

// Each function onednn_conv.cc resolves from libdnnl: X(name, return type, parameters).
#define FLAX_VIDEO_DNNL_FUNCTIONS(X)                                                                   \
  X(dnnl_version, const version_t*, (void))                                                           \
  X(dnnl_get_effective_cpu_isa, int, (void))                                                          \
  X(dnnl_engine_create, status_t, (engine_t*, int, size_t))                                           \
  X(dnnl_stream_create, status_t, (stream_t*, engine_t, unsigned))                                    \
  X(dnnl_stream_wait, status_t, (stream_t))                                                           \
  X(dnnl_memory_desc_create_with_tag, status_t, (memory_desc_t*, int, const dims_t, int, int))        \
  X(dnnl_memory_desc_create_with_strides, status_t,                                                   \
    (memory_desc_t*, int, const dims_t, int, const dims_t))                                           \
  X(dnnl_memory_desc_clone, status_t, (memory_desc_t*, const_memory_desc_t))                          \
  X(dnnl_memory_desc_destroy, status_t, (memory_desc_t))                                              \
  X(dnnl_memory_desc_equal, int, (const_memory_desc_t, const_memory_desc_t))                          \
  X(dnnl_memory_desc_get_size, size_t, (const_memory_desc_t))                                         \
  X(dnnl_memory_create, status_t, (memory_t*, const_memory_desc_t, engine_t, void*))                  \
  X(dnnl_memory_destroy, status_t, (memory_t))                                                        \
  X(dnnl_primitive_attr_create, status_t, (primitive_attr_t*))                                        \
  X(dnnl_primitive_attr_destroy, status_t, (primitive_attr_t))                                        \
  X(dnnl_primitive_attr_set_scratchpad_mode, status_t, (primitive_attr_t, int))                       \
  X(dnnl_convolution_forward_primitive_desc_create, status_t,                                         \
    (primitive_desc_t*, engine_t, int, int, const_memory_desc_t, const_memory_desc_t,                 \
     const_memory_desc_t, const_memory_desc_t, const dims_t, const dims_t, const dims_t,              \
     const dims_t, const_primitive_attr_t))                                                           \
  X(dnnl_convolution_backward_data_primitive_desc_create, status_t,                                   \
    (primitive_desc_t*, engine_t, int, const_memory_desc_t, const_memory_desc_t,                      \
     const_memory_desc_t, const dims_t, const dims_t, const dims_t, const dims_t,                     \
     const_primitive_desc_t, const_primitive_attr_t))                                                 \
  X(dnnl_convolution_backward_weights_primitive_desc_create, status_t,                                \
    (primitive_desc_t*, engine_t, int, const_memory_desc_t, const_memory_desc_t,                      \
     const_memory_desc_t, const_memory_desc_t, const dims_t, const dims_t, const dims_t,              \
     const dims_t, const_primitive_desc_t, const_primitive_attr_t))                                   \
  X(dnnl_batch_normalization_forward_primitive_desc_create, status_t,                                 \
    (primitive_desc_t*, engine_t, int, const_memory_desc_t, const_memory_desc_t, float, unsigned,     \
     const_primitive_attr_t))                                                                         \
  X(dnnl_batch_normalization_backward_primitive_desc_create, status_t,                                \
    (primitive_desc_t*, engine_t, int, const_memory_desc_t, const_memory_desc_t, const_memory_desc_t, \
     float, unsigned, const_primitive_desc_t, const_primitive_attr_t))                                \
  X(dnnl_reorder_primitive_desc_create, status_t,                                                     \
    (primitive_desc_t*, const_memory_desc_t, engine_t, const_memory_desc_t, engine_t,                 \
     const_primitive_attr_t))                                                                         \
  X(dnnl_primitive_desc_query, status_t, (const_primitive_desc_t, int, int, void*))                   \
  X(dnnl_primitive_desc_query_md, const_memory_desc_t, (const_primitive_desc_t, int, int))            \
  X(dnnl_primitive_desc_destroy, status_t, (primitive_desc_t))                                        \
  X(dnnl_primitive_create, status_t, (primitive_t*, const_primitive_desc_t))                          \
  X(dnnl_primitive_destroy, status_t, (primitive_t))                                                  \
  X(dnnl_primitive_execute, status_t, (const_primitive_t, stream_t, int, const exec_arg_t*))
