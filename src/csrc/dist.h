// What the distributed parts of the shim share (dist.cpp, sync_batch_norm.cpp): the process
// group handle that Rust holds (src/dist/mod.rs) and the collectives every autograd function
// calls. A handle is reference counted (torch::CustomClassHolder), so an autograd graph that
// needs the group in its backward pass keeps it alive (as a capsule in its saved data) even
// after Rust has dropped its own reference.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <mutex>
#include <string>

#if defined(USE_C10D_GLOO) || defined(USE_C10D_NCCL)
#define SIMCLR_DISTRIBUTED
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#endif

struct SimclrGroup : torch::CustomClassHolder {
#ifdef SIMCLR_DISTRIBUTED
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
#endif
  std::chrono::milliseconds timeout{0};
  int rank = 0;
  int size = 1;
  // Where the group's own small tensors live (the barrier's): CPU for Gloo, the GPU for NCCL.
  c10::Device device{c10::kCPU};

  // The first error of a collective run inside autograd's backward pass, where it cannot be
  // thrown through the engine into Rust; the training loop takes it after `backward()`.
  std::mutex mutex;
  std::string deferred;

  void defer(const std::string& error) {
    std::lock_guard<std::mutex> lock(mutex);
    if (deferred.empty()) deferred = error;
  }
};

// In-place sum over all ranks; throws (naming the operation) on failure or timeout.
void simclr_all_reduce_sum(SimclrGroup& group, at::Tensor& tensor);

// The ranks' equally shaped tensors concatenated along dim 0 in rank order:
// [R, ...] on every rank -> [size * R, ...].
at::Tensor simclr_all_gather_cat(SimclrGroup& group, const at::Tensor& input);

// The group saved in an autograd context (see the header comment).
inline c10::IValue simclr_group_capsule(const c10::intrusive_ptr<SimclrGroup>& group) {
  return c10::IValue::make_capsule(group);
}

inline c10::intrusive_ptr<SimclrGroup> simclr_group_from(const c10::IValue& capsule) {
  return c10::static_intrusive_pointer_cast<SimclrGroup>(capsule.toCapsule());
}

// A borrowed handle from Rust as a new counted reference.
inline c10::intrusive_ptr<SimclrGroup> simclr_group_ref(void* handle) {
  return c10::intrusive_ptr<SimclrGroup>::reclaim_copy(static_cast<SimclrGroup*>(handle));
}
