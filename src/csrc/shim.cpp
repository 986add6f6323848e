// The C++ shim: only what tch cannot reach. Every function is `extern "C"`, never lets a C++
// exception cross into Rust (each one is caught and returned as a heap string that the caller
// frees with simclr_free_error, see shim.h), and has a safe wrapper in src/shim.rs.
// additive_similarity.cpp holds the chunked concat/additive similarity with its own backward.
#include <torch/torch.h>
#include <torch/version.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <nccl.h>
#endif

#include "shim.h"

extern "C" {

void simclr_free_error(char* error) { free(error); }

// The libtorch version the shim was compiled against, e.g. "2.11.0".
const char* simclr_torch_version() { return TORCH_VERSION; }

// Whether the distributed backends were compiled in (see build.rs).
bool simclr_has_gloo() {
#ifdef USE_C10D_GLOO
  return true;
#else
  return false;
#endif
}

bool simclr_has_nccl() {
#ifdef USE_C10D_NCCL
  return true;
#else
  return false;
#endif
}

// NCCL version the shim was compiled against (e.g. 22809), 0 without NCCL.
int64_t simclr_nccl_version() {
#ifdef USE_C10D_NCCL
  return NCCL_VERSION_CODE;
#else
  return 0;
#endif
}

// cuDNN version seen at run time, 0 when CUDA/cuDNN is absent.
char* simclr_cudnn_version(int64_t* out) {
  *out = 0;
  SHIM_TRY
  const auto& hooks = at::detail::getCUDAHooks();
  if (hooks.hasCUDA() && hooks.hasCuDNN()) *out = hooks.versionCuDNN();
  SHIM_CATCH
}

// Autocast for one device type ("cpu" or "cuda") with the given dtype (tch only offers
// fp16 autocast on CUDA; SimCLR trains in bf16). Scalar types use c10::ScalarType codes.
char* simclr_set_autocast(const char* device_type, bool enabled, int dtype) {
  SHIM_TRY
  const auto device = c10::Device(std::string(device_type)).type();
  at::autocast::set_autocast_enabled(device, enabled);
  at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(dtype));
  if (!enabled) at::autocast::clear_cache();
  SHIM_CATCH
}

// A copy of `t` in channels-last (NHWC) memory order, the same shape and values; tensors that
// already have that layout come back as themselves. cuDNN's convolutions run on NHWC natively,
// which is what the tensor cores want.
char* simclr_channels_last(const at::Tensor* t, at::Tensor** out) {
  *out = nullptr;
  SHIM_TRY
  *out = new at::Tensor(t->contiguous(at::MemoryFormat::ChannelsLast));
  SHIM_CATCH
}

// Drops the gradient of `t` (PyTorch's zero_grad(set_to_none=True)): the next backward pass
// stores its gradient instead of adding it to a zeroed buffer, which saves a fill and an
// addition over every parameter per step. tch can only zero a gradient in place.
char* simclr_clear_grad(at::Tensor* t) {
  SHIM_TRY
  t->mutable_grad().reset();
  SHIM_CATCH
}

// The accelerator's caching allocator: the peak of allocated bytes on device `index` since the
// last reset (reset = true resets it after reading). Fails without an accelerator.
char* simclr_accelerator_peak_memory(int64_t index, bool reset, int64_t* out) {
  *out = 0;
  SHIM_TRY
  const auto device = static_cast<c10::DeviceIndex>(index);
  const auto stats = at::accelerator::getDeviceStats(device);
  *out = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  if (reset) at::accelerator::resetPeakStats(device);
  SHIM_CATCH
}

}  // extern "C"
