//! The batch norm of encoder and head: PyTorch's per-device batch norm, or, once
//! [`BatchNorm::synchronize`]d with a process group, batch norm over the global batch.
//!
//! SimCLR, Section 2.2 ("Global BN"): "In distributed training
//! with data parallelism, the BN mean and variance are typically aggregated locally per device.
//! In our contrastive learning, as positive pairs are computed in the same device, the model can
//! exploit the local information leakage to improve prediction accuracy without improving
//! representations. We address this issue by aggregating BN mean and variance over all devices
//! during the training." Evaluation (train = false) uses the running statistics either way;
//! those are updated from the global statistics, identically on every rank.
//!
//! A synchronized layer cannot return an error through [`ModuleT`]: a failed collective is
//! deferred to the group (the training loop calls `ProcessGroup::check` after the forward pass)
//! and the layer falls back to local statistics for that step.
//!
//! # Shapes
//! `[B, C]` or `[B, C, H, W]` -> the same.
use crate::dist::ProcessGroup;
use std::sync::Arc;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A batch-norm layer, local or synchronized.
#[derive(Debug)]
pub struct BatchNorm {
    local: nn::BatchNorm,
    momentum: f64,
    eps: f64,
    sync: Option<Arc<ProcessGroup>>,
}

impl BatchNorm {
    /// Wraps a tch layer built with `cfg` (its momentum and eps are kept for the synchronized
    /// path, which tch does not expose).
    pub fn new(local: nn::BatchNorm, cfg: &nn::BatchNormConfig) -> BatchNorm {
        BatchNorm {
            local,
            momentum: cfg.momentum,
            eps: cfg.eps,
            sync: None,
        }
    }

    /// From now on, training-mode statistics are taken over every rank of `group`.
    pub fn synchronize(&mut self, group: Arc<ProcessGroup>) {
        self.sync = Some(group);
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let Some(group) = self.sync.as_ref().filter(|_| train) else {
            return self.local.forward_t(xs, train);
        };
        let bn = &self.local;
        group
            .sync_batch_norm(
                xs,
                bn.ws.as_ref(),
                bn.bs.as_ref(),
                &bn.running_mean,
                &bn.running_var,
                self.momentum,
                self.eps,
            )
            .unwrap_or_else(|err| {
                group.defer(err);
                bn.forward_t(xs, train)
            })
    }
}
