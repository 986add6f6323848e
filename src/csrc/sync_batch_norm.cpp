// Synchronized batch norm: batch statistics over the whole global batch, as PyTorch's
// SyncBatchNorm (torch/nn/modules/_functions.py) computes them, and its backward pass.
//
// Forward: per-rank mean and invstd (batch_norm_stats), all-gathered with the per-rank counts
// in one [2C+1] message, merged into the global mean/invstd (and the running statistics, the
// same on every rank) by batch_norm_gather_stats_with_counts, then applied by batch_norm_elemt.
// Backward: per-rank sum(dy) and sum(dy * (x - mean)) (batch_norm_backward_reduce), all-reduced
// (summed), then dx by batch_norm_backward_elemt; the weight and bias gradients stay local, to be
// averaged with every other gradient by the data-parallel all-reduce.
//
// The five ATen kernels exist for CUDA only; on CPU (Gloo) the same five steps run as plain
// tensor ops in `cpu` below, with the kernels' signatures and semantics, so both devices share
// one protocol and one autograd function.
#include "dist.h"
#include "shim.h"

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// CPU versions of the five CUDA-only kernels; statistics in f32 (f64 for f64 inputs).
namespace cpu {

std::vector<int64_t> reduce_dims(const at::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

// A per-channel vector [C] shaped to broadcast over x [N, C, ...].
at::Tensor per_channel(const at::Tensor& v, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return v.reshape(shape);
}

at::Tensor widened(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? x : x.to(at::kFloat);
}

std::tuple<at::Tensor, at::Tensor> stats(const at::Tensor& input, double eps) {
  const auto x = widened(input);
  const auto dims = reduce_dims(x);
  auto mean = x.mean(dims);
  auto var = at::var(x, dims, /*unbiased=*/false, /*keepdim=*/false);
  return {mean, (var + eps).rsqrt()};
}

std::tuple<at::Tensor, at::Tensor> gather_stats_with_counts(
    const at::Tensor& mean_all, const at::Tensor& invstd_all, at::Tensor running_mean,
    at::Tensor running_var, double momentum, double eps, const at::Tensor& counts) {
  const auto n = counts.sum();                                          // []
  const auto weights = counts.unsqueeze(1);                             // [W, 1]
  const auto mean = (mean_all * weights).sum(0) / n;                    // [C]
  const auto var_all = invstd_all.pow(-2) - eps;                        // [W, C]
  const auto var = ((var_all + (mean_all - mean).pow(2)) * weights).sum(0) / n;
  if (running_mean.defined()) {
    running_mean.mul_(1 - momentum).add_((mean * momentum).to(running_mean.scalar_type()));
  }
  if (running_var.defined()) {
    const auto unbiased = var * n / (n - 1);
    running_var.mul_(1 - momentum).add_((unbiased * momentum).to(running_var.scalar_type()));
  }
  return {mean, (var + eps).rsqrt()};
}

at::Tensor elemt(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                 const at::Tensor& mean, const at::Tensor& invstd) {
  const auto x = widened(input);
  auto y = (x - per_channel(mean, x)) * per_channel(invstd, x);
  if (weight.defined()) y = y * per_channel(weight, x);
  if (bias.defined()) y = y + per_channel(bias, x);
  return y.to(input.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_reduce(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& invstd) {
  const auto x = widened(input);
  const auto dy = widened(grad_out);
  const auto dims = reduce_dims(x);
  auto sum_dy = dy.sum(dims);
  auto sum_dy_xmu = (dy * (x - per_channel(mean, x))).sum(dims);
  return {sum_dy, sum_dy_xmu, sum_dy_xmu * invstd, sum_dy};
}

at::Tensor backward_elemt(const at::Tensor& grad_out, const at::Tensor& input,
                          const at::Tensor& mean, const at::Tensor& invstd,
                          const at::Tensor& weight, const at::Tensor& sum_dy,
                          const at::Tensor& sum_dy_xmu, const at::Tensor& counts) {
  const auto x = widened(input);
  const auto dy = widened(grad_out);
  const auto n = counts.sum().to(x.scalar_type());
  const auto mean_dy = sum_dy / n;
  const auto factor_xmu = invstd * invstd * (sum_dy_xmu / n);
  const auto scale = weight.defined() ? weight * invstd : invstd;
  const auto dx = (dy - per_channel(mean_dy, x) -
                   (x - per_channel(mean, x)) * per_channel(factor_xmu, x)) *
                  per_channel(scale, x);
  return dx.to(input.scalar_type());
}

}  // namespace cpu

struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input_, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& running_mean,
                            const at::Tensor& running_var, double momentum, double eps,
                            const c10::intrusive_ptr<SimclrGroup>& group) {
    const auto input = input_.contiguous();
    const bool cuda = input.is_cuda();
    const int64_t channels = input.size(1);
    auto [mean, invstd] = cuda ? at::batch_norm_stats(input, eps) : cpu::stats(input, eps);
    const auto count = at::full({1}, input.numel() / channels, mean.options());
    // One message per rank: [mean (C), invstd (C), count (1)] -> [W, 2C+1].
    const auto gathered =
        simclr_all_gather_cat(*group, at::cat({mean, invstd, count}).unsqueeze(0));
    const auto parts = gathered.split_with_sizes({channels, channels, 1}, 1);
    const auto counts = parts[2].reshape({-1});  // [W]
    std::tie(mean, invstd) =
        cuda ? at::batch_norm_gather_stats_with_counts(input, parts[0], parts[1], running_mean,
                                                       running_var, momentum, eps, counts)
             : cpu::gather_stats_with_counts(parts[0], parts[1], running_mean, running_var,
                                             momentum, eps, counts);
    ctx->save_for_backward({input, weight, mean, invstd, counts.to(at::kInt)});
    ctx->saved_data["group"] = simclr_group_capsule(group);
    ctx->saved_data["has_bias"] = bias.defined();
    return cuda ? at::batch_norm_elemt(input, weight, bias, mean, invstd, eps)
                : cpu::elemt(input, weight, bias, mean, invstd);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto &input = saved[0], &weight = saved[1], &mean = saved[2], &invstd = saved[3],
               &counts = saved[4];
    auto group = simclr_group_from(ctx->saved_data["group"]);
    const auto grad_out = grad_outputs[0].contiguous();
    const bool cuda = input.is_cuda();
    const bool input_g = ctx->needs_input_grad(0);
    const bool weight_g = weight.defined() && ctx->needs_input_grad(1);
    const bool bias_g = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    auto [sum_dy, sum_dy_xmu, grad_weight, grad_bias] =
        cuda ? at::batch_norm_backward_reduce(grad_out, input, mean, invstd, weight, input_g,
                                              weight_g, bias_g)
             : cpu::backward_reduce(grad_out, input, mean, invstd);
    at::Tensor grad_input;
    if (input_g) {
      auto sums = at::cat({sum_dy, sum_dy_xmu});  // [2C]
      try {
        simclr_all_reduce_sum(*group, sums);
      } catch (const std::exception& e) {
        group->defer(std::string("sync batch norm backward: ") + e.what());
      }
      const auto parts = sums.chunk(2);
      grad_input = cuda ? at::batch_norm_backward_elemt(grad_out, input, mean, invstd, weight,
                                                        parts[0], parts[1], counts)
                        : cpu::backward_elemt(grad_out, input, mean, invstd, weight, parts[0],
                                              parts[1], counts);
    }
    return {grad_input, weight_g ? grad_weight : at::Tensor(), bias_g ? grad_bias : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// Batch norm of `input` [N, C, ...] in training mode with statistics over every rank's batch;
// weight and bias may be null (no scale / no shift); the running statistics are updated in
// place. Differentiable in input, weight and bias.
char* simclr_sync_batch_norm(void* handle, at::Tensor* input, at::Tensor* weight,
                             at::Tensor* bias, at::Tensor* running_mean, at::Tensor* running_var,
                             double momentum, double eps, at::Tensor** out) {
  SHIM_TRY
  if (input->dim() < 2) throw std::runtime_error("sync batch norm needs input [N, C, ...]");
  const at::Tensor none;
  *out = new at::Tensor(SyncBatchNorm::apply(*input, weight ? *weight : none, bias ? *bias : none,
                                             *running_mean, *running_var, momentum, eps,
                                             simclr_group_ref(handle)));
  SHIM_CATCH
}

}  // extern "C"
