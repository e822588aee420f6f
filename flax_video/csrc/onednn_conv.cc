// flax_video._onednn: 3D convolutions over NDHWC / DHWIO arrays (forward, input
// gradient, kernel gradient) and train-mode BatchNorm (forward, backward) through
// oneDNN, as XLA FFI handlers for the CPU.
//
// libdnnl.so.3 is opened at run time (`load`), so the extension builds with only
// jaxlib's FFI headers and falls back cleanly where the library is missing. Each
// distinct conv gets a plan, made once and cached: the oneDNN primitive (its
// JIT-compiled kernel) and the reorders between the kernel's DHWIO layout and the
// blocked one the primitive wants. Activations stay channels last, as XLA holds
// them, so they are never copied.
#include <Python.h>
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "dnnl_abi.h"
#include "winograd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using namespace dnnl_abi;

namespace {

struct Library {
#define FLAX_VIDEO_DECLARE(name, ret, params) ret(*name) params = nullptr;
  FLAX_VIDEO_DNNL_FUNCTIONS(FLAX_VIDEO_DECLARE)
#undef FLAX_VIDEO_DECLARE
  engine_t engine = nullptr;
};

Library* dnnl = nullptr;  // set once by load(), never freed

enum Kind : int { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };
const char* const kKindNames[] = {"forward", "backward_data", "backward_weights"};

// A conv's geometry on one rank-5 slice: x (n, t, h, w, c), kernel (kt, kh, kw, c, o),
// y (n, to, ho, wo, o).
struct Geometry {
  int kind, dtype;
  int64_t n, c, o, in[3], k[3], out[3], stride[3], pad[3];

  std::string key() const {
    std::string s;
    for (int64_t v : {int64_t(kind), int64_t(dtype), n, c, o, in[0], in[1], in[2], k[0], k[1], k[2],
                      out[0], out[1], out[2], stride[0], stride[1], stride[2], pad[0], pad[1], pad[2]})
      s += std::to_string(v) + ",";
    return s;
  }
};

// A primitive and the layout of the scratch memory it wants.
struct Step {
  primitive_t primitive = nullptr;
  memory_desc_t scratch = nullptr;
};

struct Plan {
  Step conv;
  Step to_blocked;    // kernel DHWIO -> the primitive's layout (forward pass, input gradient)
  Step from_blocked;  // the primitive's layout -> DHWIO (kernel gradient)
  memory_desc_t x = nullptr, y = nullptr, plain_kernel = nullptr, blocked_kernel = nullptr;
  size_t scratch_bytes = 0;
  std::string description;
};

class Failure {
 public:
  explicit Failure(std::string what) : what_(std::move(what)) {}
  const std::string& what() const { return what_; }

 private:
  std::string what_;
};

void check(status_t status, const char* call) {
  if (status != success) throw Failure(std::string(call) + " failed with oneDNN status " + std::to_string(status));
}
#define CHECK(call) check(dnnl->call, #call)

memory_desc_t channels_last(int64_t n, int64_t c, const int64_t* spatial, int dtype) {
  dims_t dims = {n, c, spatial[0], spatial[1], spatial[2]};
  dims_t strides = {spatial[0] * spatial[1] * spatial[2] * c, 1, spatial[1] * spatial[2] * c, spatial[2] * c, c};
  memory_desc_t md;
  CHECK(dnnl_memory_desc_create_with_strides(&md, 5, dims, dtype, strides));
  return md;
}

// oneDNN's weights are (o, c, kt, kh, kw); DHWIO puts o innermost, then c.
memory_desc_t kernel_desc(const Geometry& g, bool any) {
  dims_t dims = {g.o, g.c, g.k[0], g.k[1], g.k[2]};
  memory_desc_t md;
  if (any) {
    CHECK(dnnl_memory_desc_create_with_tag(&md, 5, dims, g.dtype, format_tag_any));
  } else {
    dims_t strides = {1, g.o, g.k[1] * g.k[2] * g.c * g.o, g.k[2] * g.c * g.o, g.c * g.o};
    CHECK(dnnl_memory_desc_create_with_strides(&md, 5, dims, g.dtype, strides));
  }
  return md;
}

memory_desc_t clone(const_memory_desc_t md) {
  memory_desc_t out;
  CHECK(dnnl_memory_desc_clone(&out, md));
  return out;
}

std::string impl_name(const_primitive_desc_t pd) {
  const char* name = nullptr;
  CHECK(dnnl_primitive_desc_query(pd, query_impl_info_str, 0, &name));
  return name ? name : "?";
}

// The primitive of `pd` (destroyed here), with its scratch layout; grows `scratch_bytes`.
Step make_step(primitive_desc_t pd, size_t* scratch_bytes) {
  Step step;
  step.scratch = clone(dnnl->dnnl_primitive_desc_query_md(pd, query_scratchpad_md, 0));
  *scratch_bytes = std::max(*scratch_bytes, dnnl->dnnl_memory_desc_get_size(step.scratch));
  CHECK(dnnl_primitive_create(&step.primitive, pd));
  dnnl->dnnl_primitive_desc_destroy(pd);
  return step;
}

// A reorder between two layouts of the kernel; none when they are the same.
Step reorder(const_memory_desc_t from, const_memory_desc_t to, primitive_attr_t attr, size_t* scratch_bytes) {
  if (dnnl->dnnl_memory_desc_equal(from, to)) return Step();
  primitive_desc_t pd;
  CHECK(dnnl_reorder_primitive_desc_create(&pd, from, dnnl->engine, to, dnnl->engine, attr));
  return make_step(pd, scratch_bytes);
}

std::unique_ptr<Plan> make_plan(const Geometry& g) {
  auto plan = std::make_unique<Plan>();
  dims_t strides = {g.stride[0], g.stride[1], g.stride[2]}, dilations = {0, 0, 0};
  dims_t pad_l = {g.pad[0], g.pad[1], g.pad[2]}, pad_r;
  for (int i = 0; i < 3; i++) {
    // The right padding that gives exactly these outputs (torch's symmetric padding,
    // less what a stride never reaches).
    pad_r[i] = (g.out[i] - 1) * g.stride[i] + g.k[i] - g.in[i] - g.pad[i];
  }
  primitive_attr_t attr;
  CHECK(dnnl_primitive_attr_create(&attr));
  CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, scratchpad_mode_user));
  memory_desc_t x = channels_last(g.n, g.c, g.in, g.dtype);
  memory_desc_t y = channels_last(g.n, g.o, g.out, g.dtype);
  memory_desc_t any = kernel_desc(g, true);
  plan->plain_kernel = kernel_desc(g, false);

  primitive_desc_t forward, pd;
  CHECK(dnnl_convolution_forward_primitive_desc_create(&forward, dnnl->engine, forward_training, convolution_direct,
                                                       x, any, nullptr, y, strides, dilations, pad_l, pad_r, attr));
  if (g.kind == kForward) {
    pd = forward;
    forward = nullptr;
  } else if (g.kind == kBackwardData) {
    CHECK(dnnl_convolution_backward_data_primitive_desc_create(&pd, dnnl->engine, convolution_direct, x, any, y,
                                                               strides, dilations, pad_l, pad_r, forward, attr));
  } else {
    CHECK(dnnl_convolution_backward_weights_primitive_desc_create(&pd, dnnl->engine, convolution_direct, x, any,
                                                                  nullptr, y, strides, dilations, pad_l, pad_r,
                                                                  forward, attr));
  }
  const_memory_desc_t blocked =
      dnnl->dnnl_primitive_desc_query_md(pd, g.kind == kBackwardWeights ? query_diff_weights_md : query_weights_md, 0);
  plan->blocked_kernel = clone(blocked);
  plan->description = std::string(kKindNames[g.kind]) + " " + g.key() + " " + impl_name(pd);
  plan->conv = make_step(pd, &plan->scratch_bytes);
  if (g.kind == kBackwardWeights) {
    plan->from_blocked = reorder(plan->blocked_kernel, plan->plain_kernel, attr, &plan->scratch_bytes);
  } else {
    plan->to_blocked = reorder(plan->plain_kernel, plan->blocked_kernel, attr, &plan->scratch_bytes);
  }
  plan->x = x;
  plan->y = y;
  if (forward) dnnl->dnnl_primitive_desc_destroy(forward);
  dnnl->dnnl_memory_desc_destroy(any);
  dnnl->dnnl_primitive_attr_destroy(attr);
  return plan;
}

std::mutex plans_mutex;
std::unordered_map<std::string, std::unique_ptr<Plan>> plans;

const Plan& plan_for(const Geometry& g) {
  std::lock_guard<std::mutex> lock(plans_mutex);
  auto& slot = plans[g.key()];
  if (!slot) slot = make_plan(g);
  return *slot;
}

// Per-thread scratch memory: XLA may run two convs at once on different threads.
struct Buffer {
  void* data = nullptr;
  size_t size = 0;
  void* get(size_t bytes) {
    if (bytes > size) {
      std::free(data);
      size = (bytes + 4095) / 4096 * 4096;
      data = std::aligned_alloc(64, size);
      if (!data) throw Failure("out of memory for oneDNN scratch space");
    }
    return data;
  }
  ~Buffer() { std::free(data); }
};

struct ThreadState {
  stream_t stream = nullptr;
  Buffer scratch, kernel;
};

ThreadState& thread_state() {
  thread_local ThreadState state;
  if (!state.stream) CHECK(dnnl_stream_create(&state.stream, dnnl->engine, stream_default_flags));
  return state;
}

class Memory {
 public:
  Memory(const_memory_desc_t md, void* data) { CHECK(dnnl_memory_create(&m_, md, dnnl->engine, data)); }
  ~Memory() { dnnl->dnnl_memory_destroy(m_); }
  memory_t get() const { return m_; }

 private:
  memory_t m_;
};

void execute(primitive_t p, ThreadState& state, std::initializer_list<exec_arg_t> args) {
  CHECK(dnnl_primitive_execute(p, state.stream, int(args.size()), args.begin()));
}

// One conv on rank-5 slices. Forward: a = x, b = kernel, out = y. Input gradient:
// a = dy, b = kernel, out = dx. Kernel gradient: a = x, b = dy, out = kernel.
void run(const Geometry& g, void* a, void* b, void* out) {
  const Plan& plan = plan_for(g);
  ThreadState& state = thread_state();
  void* scratch = state.scratch.get(plan.scratch_bytes);
  bool blocked = plan.to_blocked.primitive || plan.from_blocked.primitive;
  void* kernel = blocked ? state.kernel.get(dnnl->dnnl_memory_desc_get_size(plan.blocked_kernel)) : nullptr;
  Memory conv_scratch(plan.conv.scratch, scratch);
  if (g.kind == kBackwardWeights) {
    Memory x(plan.x, a), dy(plan.y, b), dw(plan.blocked_kernel, blocked ? kernel : out);
    execute(plan.conv.primitive, state, {{arg_src, x.get()}, {arg_diff_dst, dy.get()}, {arg_diff_weights, dw.get()},
                                         {arg_scratchpad, conv_scratch.get()}});
    if (blocked) {
      Memory plain(plan.plain_kernel, out), step_scratch(plan.from_blocked.scratch, scratch);
      execute(plan.from_blocked.primitive, state, {{arg_from, dw.get()}, {arg_to, plain.get()},
                                                   {arg_scratchpad, step_scratch.get()}});
    }
  } else {
    Memory w(plan.blocked_kernel, blocked ? kernel : b);
    if (blocked) {
      Memory plain(plan.plain_kernel, b), step_scratch(plan.to_blocked.scratch, scratch);
      execute(plan.to_blocked.primitive, state, {{arg_from, plain.get()}, {arg_to, w.get()},
                                                 {arg_scratchpad, step_scratch.get()}});
    }
    if (g.kind == kForward) {
      Memory x(plan.x, a), y(plan.y, out);
      execute(plan.conv.primitive, state, {{arg_src, x.get()}, {arg_weights, w.get()}, {arg_dst, y.get()},
                                           {arg_scratchpad, conv_scratch.get()}});
    } else {
      Memory dy(plan.y, a), dx(plan.x, out);
      execute(plan.conv.primitive, state, {{arg_diff_dst, dy.get()}, {arg_weights, w.get()},
                                           {arg_diff_src, dx.get()}, {arg_scratchpad, conv_scratch.get()}});
    }
  }
  CHECK(dnnl_stream_wait(state.stream));
}


// BatchNorm in train mode over a (rows, c) view: statistics over the rows, the
// scale and shift float32, as torch's BatchNorm3d computes it (biased variance).
enum NormKind : int { kNormForward = 0, kNormBackward = 1 };

struct NormPlan {
  Step step;
  memory_desc_t data = nullptr, stats = nullptr;
  size_t scratch_bytes = 0;
  std::string implementation, description;
};

std::unordered_map<std::string, std::unique_ptr<NormPlan>> norm_plans;  // guarded by plans_mutex

const NormPlan& norm_plan_for(int kind, int dtype, int64_t rows, int64_t c, float epsilon) {
  std::string key = std::to_string(kind) + "," + std::to_string(dtype) + "," + std::to_string(rows) + "," +
                    std::to_string(c) + "," + std::to_string(epsilon);
  std::lock_guard<std::mutex> lock(plans_mutex);
  auto& slot = norm_plans[key];
  if (slot) return *slot;
  auto plan = std::make_unique<NormPlan>();
  dims_t dims = {rows, c}, strides = {c, 1}, stat_dims = {c}, stat_strides = {1};
  CHECK(dnnl_memory_desc_create_with_strides(&plan->data, 2, dims, dtype, strides));
  CHECK(dnnl_memory_desc_create_with_strides(&plan->stats, 1, stat_dims, f32, stat_strides));
  primitive_attr_t attr;
  CHECK(dnnl_primitive_attr_create(&attr));
  CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, scratchpad_mode_user));
  unsigned flags = use_scale | use_shift;
  primitive_desc_t forward, pd;
  CHECK(dnnl_batch_normalization_forward_primitive_desc_create(&forward, dnnl->engine, forward_training, plan->data,
                                                                plan->data, epsilon, flags, attr));
  if (kind == kNormForward) {
    pd = forward;
    forward = nullptr;
  } else {
    CHECK(dnnl_batch_normalization_backward_primitive_desc_create(&pd, dnnl->engine, backward, plan->data, plan->data,
                                                                   plan->data, epsilon, flags, forward, attr));
  }
  plan->implementation = impl_name(pd);
  plan->description = std::string(kind == kNormForward ? "batch_norm_forward " : "batch_norm_backward ") + key +
                      " " + plan->implementation;
  plan->step = make_step(pd, &plan->scratch_bytes);
  if (forward) dnnl->dnnl_primitive_desc_destroy(forward);
  dnnl->dnnl_primitive_attr_destroy(attr);
  slot = std::move(plan);
  return *slot;
}

// The (rows, c) view of x, checking the per-channel operands' sizes.
ffi::Error norm_shape(ffi::AnyBuffer x, std::initializer_list<int64_t> channel_sizes, int* dtype, int64_t* rows,
                      int64_t* c) {
  auto dims = x.dimensions();
  if (x.element_type() != ffi::F32 && x.element_type() != ffi::BF16)
    return ffi::Error::InvalidArgument("flax_video._onednn: batch norm of float32 or bfloat16 only");
  if (dims.size() < 2) return ffi::Error::InvalidArgument("flax_video._onednn: batch norm needs rank >= 2");
  *dtype = x.element_type() == ffi::F32 ? f32 : bf16;
  *c = dims[dims.size() - 1];
  *rows = 1;
  for (size_t i = 0; i + 1 < dims.size(); i++) *rows *= dims[i];
  for (int64_t n : channel_sizes)
    if (n != *c) return ffi::Error::InvalidArgument("flax_video._onednn: per-channel operands of the wrong size");
  return ffi::Error::Success();
}

ffi::Error norm_forward(ffi::AnyBuffer x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                        ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::Buffer<ffi::F32>> mean,
                        ffi::Result<ffi::Buffer<ffi::F32>> var, float epsilon) {
  if (!dnnl) return ffi::Error::Internal("flax_video._onednn: load() was not called");
  int dtype;
  int64_t rows, c;
  ffi::Error shape = norm_shape(x, {int64_t(scale.element_count()), int64_t(shift.element_count()),
                                    int64_t(mean->element_count()), int64_t(var->element_count())},
                                &dtype, &rows, &c);
  if (shape.failure()) return shape;
  try {
    const NormPlan& plan = norm_plan_for(kNormForward, dtype, rows, c, epsilon);
    ThreadState& state = thread_state();
    Memory src(plan.data, x.untyped_data()), dst(plan.data, y->untyped_data());
    Memory sc(plan.stats, scale.typed_data()), sh(plan.stats, shift.typed_data());
    Memory m(plan.stats, mean->typed_data()), v(plan.stats, var->typed_data());
    Memory scratch(plan.step.scratch, state.scratch.get(plan.scratch_bytes));
    execute(plan.step.primitive, state, {{arg_src, src.get()}, {arg_dst, dst.get()}, {arg_scale, sc.get()},
                                         {arg_shift, sh.get()}, {arg_mean, m.get()}, {arg_variance, v.get()},
                                         {arg_scratchpad, scratch.get()}});
    CHECK(dnnl_stream_wait(state.stream));
  } catch (const Failure& f) {
    return ffi::Error::Internal("flax_video._onednn: " + f.what());
  }
  return ffi::Error::Success();
}

ffi::Error norm_backward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Buffer<ffi::F32> scale,
                         ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> var, ffi::Result<ffi::AnyBuffer> dx,
                         ffi::Result<ffi::Buffer<ffi::F32>> dscale, ffi::Result<ffi::Buffer<ffi::F32>> dshift,
                         float epsilon) {
  if (!dnnl) return ffi::Error::Internal("flax_video._onednn: load() was not called");
  int dtype;
  int64_t rows, c;
  ffi::Error shape = norm_shape(x, {int64_t(scale.element_count()), int64_t(mean.element_count()),
                                    int64_t(var.element_count()), int64_t(dscale->element_count()),
                                    int64_t(dshift->element_count())},
                                &dtype, &rows, &c);
  if (shape.failure()) return shape;
  if (dy.element_type() != x.element_type() || dy.element_count() != x.element_count())
    return ffi::Error::InvalidArgument("flax_video._onednn: batch norm gradient of another shape or dtype");
  try {
    const NormPlan& plan = norm_plan_for(kNormBackward, dtype, rows, c, epsilon);
    ThreadState& state = thread_state();
    Memory src(plan.data, x.untyped_data()), diff_dst(plan.data, dy.untyped_data());
    Memory diff_src(plan.data, dx->untyped_data()), sc(plan.stats, scale.typed_data());
    Memory m(plan.stats, mean.typed_data()), v(plan.stats, var.typed_data());
    Memory dsc(plan.stats, dscale->typed_data()), dsh(plan.stats, dshift->typed_data());
    Memory scratch(plan.step.scratch, state.scratch.get(plan.scratch_bytes));
    execute(plan.step.primitive, state, {{arg_src, src.get()}, {arg_diff_dst, diff_dst.get()}, {arg_scale, sc.get()},
                                         {arg_mean, m.get()}, {arg_variance, v.get()}, {arg_diff_src, diff_src.get()},
                                         {arg_diff_scale, dsc.get()}, {arg_diff_shift, dsh.get()},
                                         {arg_scratchpad, scratch.get()}});
    CHECK(dnnl_stream_wait(state.stream));
  } catch (const Failure& f) {
    return ffi::Error::Internal("flax_video._onednn: " + f.what());
  }
  return ffi::Error::Success();
}

// The leading dimensions of a rank-(5 + k) operand: the batch that vmap adds.
struct Operand {
  char* data;
  std::vector<int64_t> lead;
  const int64_t* dims;  // the last five
  size_t slice_bytes;

  Operand(void* ptr, ffi::AnyBuffer::Dimensions d, size_t item) : data(static_cast<char*>(ptr)) {
    lead.assign(d.begin(), d.end() - 5);
    dims = d.end() - 5;
    slice_bytes = item;
    for (int i = 0; i < 5; i++) slice_bytes *= dims[i];
  }
  bool unbatched() const {
    for (int64_t v : lead)
      if (v != 1) return false;
    return true;
  }
  // The slice that result slice `index` (over `shape`) reads, broadcasting size-1 dims.
  char* slice(int64_t index, const std::vector<int64_t>& shape) const {
    int64_t offset = 0, stride = 1;
    for (int i = int(shape.size()) - 1; i >= 0; i--) {
      int64_t position = index % shape[i];
      index /= shape[i];
      if (lead[i] != 1) offset += position * stride;
      stride *= lead[i];
    }
    return data + offset * slice_bytes;
  }
};

std::string shape_string(const int64_t* d, size_t n) {
  std::string s = "(";
  for (size_t i = 0; i < n; i++) s += std::to_string(d[i]) + (i + 1 < n ? ", " : ")");
  return s;
}

ffi::Error conv(Kind kind, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  if (!dnnl) return ffi::Error::Internal("flax_video._onednn: load() was not called");
  auto dtype = a.element_type();
  if (dtype != ffi::F32 && dtype != ffi::BF16)
    return ffi::Error::InvalidArgument("flax_video._onednn: only float32 and bfloat16 convs");
  if (b.element_type() != dtype || out->element_type() != dtype)
    return ffi::Error::InvalidArgument("flax_video._onednn: operands of different dtypes");
  size_t rank = a.dimensions().size();
  if (rank < 5 || b.dimensions().size() != rank || out->dimensions().size() != rank)
    return ffi::Error::InvalidArgument("flax_video._onednn: operands must have the same rank, at least 5");
  if (strides.size() != 3 || padding.size() != 3)
    return ffi::Error::InvalidArgument("flax_video._onednn: strides and padding need 3 values");
  size_t item = dtype == ffi::F32 ? 4 : 2;
  Operand A(a.untyped_data(), a.dimensions(), item), B(b.untyped_data(), b.dimensions(), item);
  Operand R(out->untyped_data(), out->dimensions(), item);
  // Which operand is x (n, t, h, w, c), the kernel (kt, kh, kw, c, o) and y (n, to, ho, wo, o).
  const int64_t *x = A.dims, *kernel = B.dims, *y = R.dims;
  if (kind == kBackwardData) x = R.dims, y = A.dims;
  if (kind == kBackwardWeights) kernel = R.dims, y = B.dims;

  Geometry g;
  g.kind = kind;
  g.dtype = dtype == ffi::F32 ? f32 : bf16;
  g.n = x[0];
  g.c = x[4];
  g.o = kernel[4];
  for (int i = 0; i < 3; i++) {
    g.in[i] = x[1 + i];
    g.k[i] = kernel[i];
    g.out[i] = y[1 + i];
    g.stride[i] = strides[i];
    g.pad[i] = padding[i];
  }
  bool consistent = kernel[3] == g.c && y[0] == g.n && y[4] == g.o;
  for (int i = 0; i < 3; i++)
    consistent = consistent && g.stride[i] > 0 && g.pad[i] >= 0 &&
                 (g.in[i] + 2 * g.pad[i] - g.k[i]) / g.stride[i] + 1 == g.out[i];
  if (!consistent)
    return ffi::Error::InvalidArgument("flax_video._onednn: conv of " + shape_string(x, 5) + " with kernel " +
                                       shape_string(kernel, 5) + " cannot give " + shape_string(y, 5));
  for (size_t i = 0; i < R.lead.size(); i++)
    if ((A.lead[i] != 1 && A.lead[i] != R.lead[i]) || (B.lead[i] != 1 && B.lead[i] != R.lead[i]))
      return ffi::Error::InvalidArgument("flax_video._onednn: batch dimensions do not broadcast");
  int64_t slices = 1;
  for (int64_t v : R.lead) slices *= v;
  try {
    if (slices == 1) {
      run(g, A.data, B.data, R.data);
    } else if (kind != kBackwardWeights && B.unbatched() && A.lead == R.lead) {
      // vmap over the batch with one kernel: one conv over all of it.
      g.n *= slices;
      run(g, A.data, B.data, R.data);
    } else {
      for (int64_t i = 0; i < slices; i++) run(g, A.slice(i, R.lead), B.slice(i, R.lead), R.slice(i, R.lead));
    }
  } catch (const Failure& f) {
    return ffi::Error::Internal("flax_video._onednn: " + f.what());
  }
  return ffi::Error::Success();
}

ffi::Error forward(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  return conv(kForward, x, kernel, y, strides, padding);
}
ffi::Error backward_data(ffi::AnyBuffer dy, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> dx,
                         ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  return conv(kBackwardData, dy, kernel, dx, strides, padding);
}
ffi::Error backward_weights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dkernel,
                            ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  return conv(kBackwardWeights, x, dy, dkernel, strides, padding);
}

// winograd_forward(x, u) -> y: the Winograd F(2, 3) forward conv (winograd.cc);
// u is the transformed kernel (components, c, o). vmap's leading dimensions fold
// into the batch where u is shared, else each slice is one call.
ffi::Error winograd_forward(ffi::AnyBuffer x, ffi::Buffer<ffi::F32> u, ffi::Result<ffi::AnyBuffer> y,
                            ffi::Span<const int64_t> axes) {
  auto dtype = x.element_type();
  if ((dtype != ffi::F32 && dtype != ffi::BF16) || y->element_type() != dtype)
    return ffi::Error::InvalidArgument("flax_video._onednn: Winograd convs take float32 or bfloat16");
  if (!flax_video_winograd::supported())
    return ffi::Error::Internal("flax_video._onednn: Winograd convs need AVX-512 (F, BW) or AVX2 with FMA");
  auto xd = x.dimensions(), ud = u.dimensions(), yd = y->dimensions();
  if (xd.size() < 5 || yd.size() != xd.size() || ud.size() != xd.size() - 2 || axes.size() != 3)
    return ffi::Error::InvalidArgument("flax_video._onednn: Winograd operands of the wrong rank");
  const size_t lead = xd.size() - 5;
  flax_video_winograd::Geometry g;
  g.n = xd[lead];
  g.c = xd[lead + 4];
  g.o = yd[lead + 4];
  int64_t components = 1;
  for (int i = 0; i < 3; i++) {
    g.size[i] = xd[lead + 1 + i];
    g.winograd[i] = axes[i] != 0;
    components *= g.winograd[i] ? 4 : 1;
  }
  bool consistent = g.c % 16 == 0 && g.o % 16 == 0 && ud[lead] == components && ud[lead + 1] == g.c &&
                    ud[lead + 2] == g.o;
  for (size_t i = lead; i < lead + 4; i++) consistent = consistent && xd[i] == yd[i];
  int64_t slices = 1, x_slices = 1, u_slices = 1;
  for (size_t i = 0; i < lead; i++) {
    consistent = consistent && (xd[i] == 1 || xd[i] == yd[i]) && (ud[i] == 1 || ud[i] == yd[i]);
    slices *= yd[i];
    x_slices *= xd[i];
    u_slices *= ud[i];
  }
  // Mixed broadcasting over several vmap axes is not met by the models.
  consistent = consistent && (x_slices == 1 || x_slices == slices) && (u_slices == 1 || u_slices == slices);
  if (!consistent)
    return ffi::Error::InvalidArgument("flax_video._onednn: Winograd conv of " + shape_string(xd.end() - 5, 5) +
                                       " cannot give " + shape_string(yd.end() - 5, 5));
  const int64_t x_size = g.n * g.size[0] * g.size[1] * g.size[2] * g.c, y_size = x_size / g.c * g.o;
  const int64_t u_size = components * g.c * g.o;
  if (u_slices == 1 && x_slices == slices) {  // one kernel for the whole batch: one call
    g.n *= slices;
    slices = 1;
  }
  for (int64_t i = 0; i < slices; i++) {
    const int64_t xi = x_slices == 1 ? 0 : i * x_size;
    const float* ui = u.typed_data() + (u_slices == 1 ? 0 : i * u_size);
    if (dtype == ffi::F32)
      flax_video_winograd::forward_f32(g, static_cast<const float*>(x.untyped_data()) + xi, ui,
                                       static_cast<float*>(y->untyped_data()) + i * y_size);
    else
      flax_video_winograd::forward_bf16(g, static_cast<const uint16_t*>(x.untyped_data()) + xi, ui,
                                        static_cast<uint16_t*>(y->untyped_data()) + i * y_size);
  }
  return ffi::Error::Success();
}

// winograd_kernel_gradient(x, dy) -> du: the gradient of the Winograd conv's
// transformed kernel (components, c, o), in float32 (winograd.cc). Rank 5 only
// (vmap calls it per slice).
ffi::Error winograd_kernel_gradient(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::Buffer<ffi::F32>> du,
                                    ffi::Span<const int64_t> axes) {
  auto dtype = x.element_type();
  if ((dtype != ffi::F32 && dtype != ffi::BF16) || dy.element_type() != dtype)
    return ffi::Error::InvalidArgument("flax_video._onednn: Winograd convs take float32 or bfloat16");
  if (!flax_video_winograd::supported())
    return ffi::Error::Internal("flax_video._onednn: Winograd convs need AVX-512 (F, BW) or AVX2 with FMA");
  auto xd = x.dimensions(), yd = dy.dimensions(), ud = du->dimensions();
  if (xd.size() != 5 || yd.size() != 5 || ud.size() != 3 || axes.size() != 3)
    return ffi::Error::InvalidArgument("flax_video._onednn: Winograd gradient operands of the wrong rank");
  flax_video_winograd::Geometry g;
  g.n = xd[0];
  g.c = xd[4];
  g.o = yd[4];
  int64_t components = 1;
  for (int i = 0; i < 3; i++) {
    g.size[i] = xd[1 + i];
    g.winograd[i] = axes[i] != 0;
    components *= g.winograd[i] ? 4 : 1;
  }
  bool consistent = g.c % 16 == 0 && g.o % 16 == 0 && ud[0] == components && ud[1] == g.c && ud[2] == g.o;
  for (int i = 0; i < 4; i++) consistent = consistent && xd[i] == yd[i];
  if (!consistent)
    return ffi::Error::InvalidArgument("flax_video._onednn: no Winograd kernel gradient for x " +
                                       shape_string(xd.begin(), 5) + " and dy " + shape_string(yd.begin(), 5));
  if (dtype == ffi::F32)
    flax_video_winograd::kernel_gradient_f32(g, static_cast<const float*>(x.untyped_data()),
                                             static_cast<const float*>(dy.untyped_data()), du->typed_data());
  else
    flax_video_winograd::kernel_gradient_bf16(g, static_cast<const uint16_t*>(x.untyped_data()),
                                              static_cast<const uint16_t*>(dy.untyped_data()), du->typed_data());
  return ffi::Error::Success();
}

#define FLAX_VIDEO_BINDING                                                                            \
  ffi::Ffi::Bind()                                                                                    \
      .Arg<ffi::AnyBuffer>()                                                                          \
      .Arg<ffi::AnyBuffer>()                                                                          \
      .Ret<ffi::AnyBuffer>()                                                                          \
      .Attr<ffi::Span<const int64_t>>("strides")                                                      \
      .Attr<ffi::Span<const int64_t>>("padding")

XLA_FFI_DEFINE_HANDLER(forward_handler, forward, FLAX_VIDEO_BINDING);
XLA_FFI_DEFINE_HANDLER(backward_data_handler, backward_data, FLAX_VIDEO_BINDING);
XLA_FFI_DEFINE_HANDLER(backward_weights_handler, backward_weights, FLAX_VIDEO_BINDING);
XLA_FFI_DEFINE_HANDLER(winograd_forward_handler, winograd_forward,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::Buffer<ffi::F32>>()
                           .Ret<ffi::AnyBuffer>()
                           .Attr<ffi::Span<const int64_t>>("axes"));
XLA_FFI_DEFINE_HANDLER(winograd_kernel_gradient_handler, winograd_kernel_gradient,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Ret<ffi::Buffer<ffi::F32>>()
                           .Attr<ffi::Span<const int64_t>>("axes"));
XLA_FFI_DEFINE_HANDLER(norm_forward_handler, norm_forward,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::Buffer<ffi::F32>>()
                           .Arg<ffi::Buffer<ffi::F32>>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::Buffer<ffi::F32>>()
                           .Ret<ffi::Buffer<ffi::F32>>()
                           .Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER(norm_backward_handler, norm_backward,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::Buffer<ffi::F32>>()
                           .Arg<ffi::Buffer<ffi::F32>>()
                           .Arg<ffi::Buffer<ffi::F32>>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::Buffer<ffi::F32>>()
                           .Ret<ffi::Buffer<ffi::F32>>()
                           .Attr<float>("epsilon"));

// load(path) -> description: opens libdnnl.so.3 and makes the CPU engine.
PyObject* load(PyObject*, PyObject* args) {
  const char* path;
  if (!PyArg_ParseTuple(args, "s", &path)) return nullptr;
  if (dnnl) return PyUnicode_FromFormat("oneDNN %d.%d.%d", dnnl->dnnl_version()->major,
                                        dnnl->dnnl_version()->minor, dnnl->dnnl_version()->patch);
  void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!handle) return PyErr_Format(PyExc_OSError, "cannot open %s: %s", path, dlerror());
  auto lib = std::make_unique<Library>();
#define FLAX_VIDEO_RESOLVE(name, ret, params)                                                      \
  lib->name = reinterpret_cast<ret(*) params>(dlsym(handle, #name));                              \
  if (!lib->name) return PyErr_Format(PyExc_OSError, "%s lacks %s: not oneDNN 3.x", path, #name);
  FLAX_VIDEO_DNNL_FUNCTIONS(FLAX_VIDEO_RESOLVE)
#undef FLAX_VIDEO_RESOLVE
  const version_t* v = lib->dnnl_version();
  if (v->major != 3) return PyErr_Format(PyExc_OSError, "%s is oneDNN %d.%d, not 3.x", path, v->major, v->minor);
  if (lib->dnnl_engine_create(&lib->engine, cpu, 0) != success)
    return PyErr_Format(PyExc_OSError, "%s cannot create a CPU engine", path);
  dnnl = lib.release();
  return PyUnicode_FromFormat("oneDNN %d.%d.%d", v->major, v->minor, v->patch);
}

// targets() -> {FFI target name: capsule of its handler}.
PyObject* targets(PyObject*, PyObject*) {
  PyObject* out = PyDict_New();
  auto add = [out](const char* name, XLA_FFI_Handler* fn) {
    PyObject* capsule = PyCapsule_New(reinterpret_cast<void*>(fn), nullptr, nullptr);
    PyDict_SetItemString(out, name, capsule);
    Py_DECREF(capsule);
  };
  add("flax_video_onednn_conv_forward", forward_handler);
  add("flax_video_onednn_conv_backward_data", backward_data_handler);
  add("flax_video_onednn_conv_backward_weights", backward_weights_handler);
  add("flax_video_onednn_batch_norm_forward", norm_forward_handler);
  add("flax_video_winograd_forward", winograd_forward_handler);
  add("flax_video_winograd_kernel_gradient", winograd_kernel_gradient_handler);
  add("flax_video_onednn_batch_norm_backward", norm_backward_handler);
  return out;
}

// plans() -> [str]: each cached conv and the oneDNN implementation it runs.
PyObject* list_plans(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(plans_mutex);
  PyObject* out = PyList_New(0);
  auto append = [out](const std::string& description) {
    PyObject* s = PyUnicode_FromString(description.c_str());
    PyList_Append(out, s);
    Py_DECREF(s);
  };
  for (auto& [key, plan] : plans) append(plan->description);
  for (auto& [key, plan] : norm_plans) append(plan->description);
  return out;
}

// batch_norm_implementations(dtype, rows, c, epsilon) -> (forward, backward): the oneDNN
// implementations a BatchNorm of this shape gets (planned now, kept for its calls).
PyObject* batch_norm_implementations(PyObject*, PyObject* args) {
  const char* dtype_name;
  long long rows, c;
  float epsilon;
  if (!PyArg_ParseTuple(args, "sLLf", &dtype_name, &rows, &c, &epsilon)) return nullptr;
  if (!dnnl) return PyErr_Format(PyExc_RuntimeError, "load() was not called");
  std::string name = dtype_name;
  if (name != "float32" && name != "bfloat16") return PyErr_Format(PyExc_ValueError, "dtype %s", dtype_name);
  int dtype = name == "float32" ? f32 : bf16;
  try {
    const std::string& forward = norm_plan_for(kNormForward, dtype, rows, c, epsilon).implementation;
    const std::string& backward = norm_plan_for(kNormBackward, dtype, rows, c, epsilon).implementation;
    return Py_BuildValue("(ss)", forward.c_str(), backward.c_str());
  } catch (const Failure& f) {
    return PyErr_Format(PyExc_RuntimeError, "%s", f.what().c_str());
  }
}

// The one place flax_video asks which vector ISA the CPU has (flax_video.onednn.isa()
// reads it): the Winograd kernels dispatch on the same answer.
PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(flax_video_winograd::isa()); }

PyMethodDef methods[] = {
    {"load", load, METH_VARARGS, "Open libdnnl.so.3 at this path; returns its version."},
    {"targets", targets, METH_NOARGS, "The XLA FFI handlers, by target name."},
    {"cpu_isa", cpu_isa, METH_NOARGS, "The vector ISA flax_video's kernels use here: avx512, avx2 or none."},
    {"plans", list_plans, METH_NOARGS, "The convs planned so far and their oneDNN implementations."},
    {"batch_norm_implementations", batch_norm_implementations, METH_VARARGS,
     "The oneDNN implementations of a BatchNorm's forward and backward pass."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_onednn", "3D convolutions through oneDNN (XLA FFI).", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__onednn() { return PyModule_Create(&module); }

