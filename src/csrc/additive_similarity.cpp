// The pairwise part of the concat/additive similarity (Bahdanau et al. 2015; "concat" in the
// SimCLR method notes), s(u, v) = w^T tanh(W_u u + W_v v), for all pairs at once, as an
// autograd function with its own backward that recomputes instead of storing.
//
// Given a = U W_u^T [M, H] and b = V W_v^T [K, H] (computed by the caller with ordinary
// autograd), it returns S [M, K] with S_ij = sum_h w_h tanh(a_ih + b_jh).
//
// Memory: the pre-activations of a block of anchor rows, [rows, K, H], are the only large
// temporaries, and `rows` is chosen so that rows * K * H <= chunk_elements (at least one row).
// Plain autograd would keep every block's tanh for the backward pass, i.e. the whole
// [M, K, H] tensor; here the forward keeps only a, b and w, and the backward recomputes each
// block's tanh. Gradients, with G = dL/dS and T = tanh(a_i + b_j):
//   dL/da_i = sum_j G_ij w * (1 - T_ij^2),  dL/db_j = sum_i G_ij w * (1 - T_ij^2),
//   dL/dw = sum_ij G_ij T_ij.
// Autocast is excluded inside, so the scores are computed in the inputs' precision (f32 in
// training, f64 in the tests).
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "shim.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Anchor rows per block so that a [rows, k, h] block holds at most `budget` elements.
int64_t rows_per_block(int64_t k, int64_t h, int64_t budget) {
  return std::max<int64_t>(1, budget / std::max<int64_t>(1, k * h));
}

// tanh(a_i + b_j) for the anchor rows [start, start + len): [len, K, H].
at::Tensor block_tanh(const at::Tensor& a, const at::Tensor& b, int64_t start, int64_t len) {
  return (a.narrow(0, start, len).unsqueeze(1) + b.unsqueeze(0)).tanh_();
}

struct AdditiveScores : public torch::autograd::Function<AdditiveScores> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                            const at::Tensor& w, int64_t budget) {
    TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && w.dim() == 1 && a.size(1) == b.size(1) &&
                    w.size(0) == a.size(1),
                "additive similarity: expected a [M, H], b [K, H], w [H], got ", a.sizes(), ", ",
                b.sizes(), ", ", w.sizes());
    TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.scalar_type() == w.scalar_type(),
                "additive similarity: a, b and w must share a dtype");
    TORCH_CHECK(budget >= 1, "additive similarity: chunk budget must be >= 1, got ", budget);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    ctx->save_for_backward({a, b, w});
    ctx->saved_data["budget"] = budget;
    const int64_t m = a.size(0);
    const int64_t rows = rows_per_block(b.size(0), b.size(1), budget);
    auto scores = at::empty({m, b.size(0)}, a.options());  // [M, K]
    for (int64_t start = 0; start < m; start += rows) {
      const int64_t len = std::min(rows, m - start);
      scores.narrow(0, start, len).copy_(at::matmul(block_tanh(a, b, start, len), w));
    }
    return scores;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto saved = ctx->get_saved_variables();
    const auto &a = saved[0], &b = saved[1], &w = saved[2];
    const auto g = grads[0].to(a.scalar_type());  // [M, K]
    const int64_t budget = ctx->saved_data["budget"].toInt();
    const int64_t m = a.size(0), k = b.size(0), h = b.size(1);
    const int64_t rows = rows_per_block(k, h, budget);
    auto grad_a = at::empty_like(a);
    auto grad_b = at::zeros_like(b);
    auto grad_w = at::zeros_like(w);
    for (int64_t start = 0; start < m; start += rows) {
      const int64_t len = std::min(rows, m - start);
      auto t = block_tanh(a, b, start, len);             // [len, K, H]
      const auto g_block = g.narrow(0, start, len);      // [len, K]
      grad_w += at::matmul(g_block.reshape({1, len * k}), t.reshape({len * k, h})).squeeze(0);
      // In place: t becomes G_ij * w * (1 - T_ij^2), the gradient of the pre-activation.
      t.square_().neg_().add_(1.0).mul_(w).mul_(g_block.unsqueeze(2));
      grad_a.narrow(0, start, len).copy_(t.sum(1));
      grad_b += t.sum(0);
    }
    return {grad_a, grad_b, grad_w, at::Tensor()};
  }
};

}  // namespace

extern "C" {

// S [M, K] = additive scores of a [M, H], b [K, H], w [H], blocks of at most `budget`
// elements; differentiable in a, b and w. On success *out is a new tensor owned by the caller.
char* simclr_additive_scores(const at::Tensor* a, const at::Tensor* b, const at::Tensor* w,
                             int64_t budget, at::Tensor** out) {
  *out = nullptr;
  SHIM_TRY
  *out = new at::Tensor(AdditiveScores::apply(*a, *b, *w, budget));
  SHIM_CATCH
}

}  // extern "C"
