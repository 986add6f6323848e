// Process groups over libtorch's own c10d (TCPStore rendezvous, ProcessGroupGloo on CPU,
// ProcessGroupNCCL on CUDA), their collectives, and the differentiable all-gather of the
// projections for global negatives. Every extern "C" function catches C++ exceptions and
// returns them as error strings (shim.h); the safe wrappers are in src/dist/mod.rs.
#include "dist.h"
#include "shim.h"

#include <cstdlib>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#ifdef SIMCLR_DISTRIBUTED
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

#ifdef SIMCLR_DISTRIBUTED
// Waits for a collective, failing when it errs or outlives the group's timeout.
void wait_for(SimclrGroup& group, const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
  try {
    if (!work->wait(group.timeout)) {
      throw std::runtime_error("did not complete");
    }
  } catch (const std::exception& e) {
    // c10::Error's what() carries a C++ backtrace: the message alone makes the one-line error.
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    throw std::runtime_error(std::string(what) + " failed within the " +
                             std::to_string(group.timeout.count() / 1000) +
                             " s timeout (a peer rank died, hangs or left): " +
                             (c10_error ? c10_error->what_without_backtrace() : e.what()));
  }
}
#endif

[[noreturn]] void no_backend() {
  throw std::runtime_error("the shim was built without Gloo and NCCL (see build.rs)");
}

// all_gather whose backward sums the incoming gradient over the ranks (every rank's loss
// depends on every rank's rows) and returns this rank's slice of it. Returning the slice
// without the sum is the bug that anchors.md lists for several SimCLR implementations.
struct AllGatherWithGrad : public torch::autograd::Function<AllGatherWithGrad> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const c10::intrusive_ptr<SimclrGroup>& group) {
    ctx->saved_data["group"] = simclr_group_capsule(group);
    ctx->saved_data["rows"] = input.size(0);
    return simclr_all_gather_cat(*group, input);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto group = simclr_group_from(ctx->saved_data["group"]);
    const int64_t rows = ctx->saved_data["rows"].toInt();
    at::Tensor grad = grad_outputs[0].contiguous().clone();  // [size * rows, ...]
    try {
      simclr_all_reduce_sum(*group, grad);
    } catch (const std::exception& e) {
      // Thrown here, the error would abort the process from inside the autograd engine.
      group->defer(std::string("all-gather backward: ") + e.what());
    }
    return {grad.narrow(0, group->rank * rows, rows), at::Tensor()};
  }
};

}  // namespace

void simclr_all_reduce_sum(SimclrGroup& group, at::Tensor& tensor) {
#ifdef SIMCLR_DISTRIBUTED
  std::vector<at::Tensor> tensors{tensor};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::SUM;
  options.timeout = group.timeout;
  wait_for(group, group.backend->allreduce(tensors, options), "all-reduce");
#else
  no_backend();
#endif
}

at::Tensor simclr_all_gather_cat(SimclrGroup& group, const at::Tensor& input) {
#ifdef SIMCLR_DISTRIBUTED
  std::vector<at::Tensor> inputs{input.contiguous()};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < group.size; ++r) outputs[0].push_back(at::empty_like(inputs[0]));
  c10d::AllgatherOptions options;
  options.timeout = group.timeout;
  wait_for(group, group.backend->allgather(outputs, inputs, options), "all-gather");
  return at::cat(outputs[0], 0);
#else
  no_backend();
#endif
}

extern "C" {

// Rendezvous at host:port (rank 0 runs the TCPStore server there) and create the backend:
// "gloo" (CPU tensors) or "nccl" (tensors on cuda:device_index, which becomes the current
// device). `out` receives one counted reference, released by simclr_group_free.
char* simclr_group_new(const char* backend, const char* host, int port, int rank, int size,
                       int64_t timeout_ms, int device_index, void** out) {
  SHIM_TRY
  *out = nullptr;
  auto group = c10::make_intrusive<SimclrGroup>();
  group->timeout = std::chrono::milliseconds(timeout_ms);
  group->rank = rank;
  group->size = size;
  const std::string name(backend);
#ifdef SIMCLR_DISTRIBUTED
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(port);
  store_options.isServer = rank == 0;
  store_options.numWorkers = size;
  store_options.waitWorkers = true;
  store_options.timeout = group->timeout;
  group->store = c10::make_intrusive<c10d::TCPStore>(std::string(host), store_options);
#endif
  if (name == "gloo") {
#ifdef USE_C10D_GLOO
    auto options = c10d::ProcessGroupGloo::Options::create(group->timeout);
    // GLOO_SOCKET_IFNAME picks the network interface, as in PyTorch; otherwise the address
    // this host's name resolves to (loopback when it resolves to none).
    const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
    options->devices.push_back(
        interface != nullptr && interface[0] != '\0'
            ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
            : c10d::ProcessGroupGloo::createDefaultDevice());
    group->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, rank, size, options);
#else
    throw std::runtime_error("the shim was built without Gloo (libgloo-dev headers missing)");
#endif
  } else if (name == "nccl") {
#ifdef USE_C10D_NCCL
    group->device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device_index));
    // The current device of this process (through the registered CUDA guard: libc10_cuda is
    // not linked directly).
    c10::impl::getDeviceGuardImpl(c10::kCUDA)->setDevice(group->device);
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = group->timeout;
    group->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(group->store, rank, size, options);
#else
    throw std::runtime_error("the shim was built without NCCL (CUDA/NCCL headers missing)");
#endif
  } else {
    throw std::runtime_error("unknown backend '" + name + "' (gloo or nccl)");
  }
  *out = group.release();
  SHIM_CATCH
}

void simclr_group_free(void* handle) {
  if (handle != nullptr) {
    c10::intrusive_ptr<SimclrGroup>::reclaim(static_cast<SimclrGroup*>(handle));
  }
}

// The error deferred by a collective inside a backward pass (null if none); clears it.
char* simclr_group_take_error(void* handle) {
  auto* group = static_cast<SimclrGroup*>(handle);
  std::lock_guard<std::mutex> lock(group->mutex);
  if (group->deferred.empty()) return nullptr;
  char* error = simclr_error_string(group->deferred.c_str());
  group->deferred.clear();
  return error;
}

// In-place broadcast of `tensor` from rank `root`.
char* simclr_group_broadcast(void* handle, at::Tensor* tensor, int root) {
  SHIM_TRY
#ifdef SIMCLR_DISTRIBUTED
  auto& group = *static_cast<SimclrGroup*>(handle);
  std::vector<at::Tensor> tensors{*tensor};
  c10d::BroadcastOptions options;
  options.rootRank = root;
  options.timeout = group.timeout;
  wait_for(group, group.backend->broadcast(tensors, options), "broadcast");
#else
  no_backend();
#endif
  SHIM_CATCH
}

// In-place reduction over the ranks: op 0 = sum, 1 = max.
char* simclr_group_all_reduce(void* handle, at::Tensor* tensor, int op) {
  SHIM_TRY
#ifdef SIMCLR_DISTRIBUTED
  auto& group = *static_cast<SimclrGroup*>(handle);
  std::vector<at::Tensor> tensors{*tensor};
  c10d::AllreduceOptions options;
  options.reduceOp = op == 1 ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
  options.timeout = group.timeout;
  wait_for(group, group.backend->allreduce(tensors, options), "all-reduce");
#else
  no_backend();
#endif
  SHIM_CATCH
}

// The ranks' tensors concatenated along dim 0 (no gradient).
char* simclr_group_all_gather(void* handle, at::Tensor* input, at::Tensor** out) {
  SHIM_TRY
  *out = new at::Tensor(simclr_all_gather_cat(*static_cast<SimclrGroup*>(handle), *input));
  SHIM_CATCH
}

// Returns once every rank has called it (an all-reduce of one element on the group's device,
// which works alike on Gloo and NCCL and honours the timeout).
char* simclr_group_barrier(void* handle) {
  SHIM_TRY
  auto& group = *static_cast<SimclrGroup*>(handle);
  at::Tensor token = at::zeros({1}, at::TensorOptions().device(group.device));
  simclr_all_reduce_sum(group, token);
  SHIM_CATCH
}

// The differentiable all-gather: [R, ...] -> [size * R, ...] (AllGatherWithGrad above).
char* simclr_all_gather_with_grad(void* handle, at::Tensor* input, at::Tensor** out) {
  SHIM_TRY
  *out = new at::Tensor(AllGatherWithGrad::apply(*input, simclr_group_ref(handle)));
  SHIM_CATCH
}

}  // extern "C"
