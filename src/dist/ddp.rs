//! Data parallelism over a [`ProcessGroup`]: every rank starts from rank 0's parameters and
//! buffers, and after every backward pass the ranks average their gradients, so that the
//! optimiser takes the same step everywhere and the replicas never drift apart.
//!
//! Gradients travel in buckets (PyTorch DDP's scheme): the trainable variables, in name order
//! (the same on every rank), are cut into groups of about [`BUCKET_BYTES`], each group's
//! gradients are flattened into one tensor, averaged with one all-reduce, and copied back.
//! Few large messages instead of one per parameter: the per-message latency is paid about
//! (model size / bucket size) times. The all-reduces follow the backward pass instead of
//! overlapping it: tch offers no gradient hooks to start a bucket as soon as it is ready.
//!
//! The average is the right reduction because each rank's loss is the mean over its own
//! anchors (the global negatives' all-gather and the synchronized batch norm send each rank
//! the gradient of its inputs with that scaling; see [`ProcessGroup::all_gather_with_grad`]).
use super::{ProcessGroup, ReduceOp};
use anyhow::Result;
use tch::nn::VarStore;
use tch::Tensor;

/// Gradient bytes per all-reduce (PyTorch DDP's default `bucket_cap_mb` is 25).
pub const BUCKET_BYTES: usize = 25 << 20;

/// The variables of `vs` in name order: the same order on every rank.
fn sorted_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

/// Overwrites every variable of `vs` (parameters and batch-norm buffers) with rank 0's.
pub fn broadcast_variables(vs: &VarStore, group: &ProcessGroup) -> Result<()> {
    tch::no_grad(|| {
        for (_, mut tensor) in sorted_variables(vs) {
            group.broadcast(&mut tensor, 0)?;
        }
        Ok(())
    })
}

/// The trainable variables of a var store in buckets, ready to average their gradients.
#[derive(Debug)]
pub struct GradientBuckets {
    buckets: Vec<Vec<Tensor>>,
}

impl GradientBuckets {
    /// Buckets of at most `bucket_bytes` (a larger variable gets a bucket of its own).
    pub fn new(vs: &VarStore, bucket_bytes: usize) -> GradientBuckets {
        let mut buckets: Vec<Vec<Tensor>> = Vec::new();
        let mut bytes = 0;
        for (_, tensor) in sorted_variables(vs) {
            if !tensor.requires_grad() {
                continue;
            }
            let size = tensor.numel() * tensor.kind().elt_size_in_bytes();
            match buckets.last_mut() {
                Some(bucket) if bytes + size <= bucket_bytes => bucket.push(tensor),
                _ => {
                    buckets.push(vec![tensor]);
                    bytes = 0;
                }
            }
            bytes += size;
        }
        GradientBuckets { buckets }
    }

    /// Number of all-reduces per step.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether there is nothing to reduce.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Replaces every gradient with its average over the ranks. A variable without a gradient
    /// on this rank contributes zeros (and keeps having none).
    pub fn average_gradients(&self, group: &ProcessGroup) -> Result<()> {
        tch::no_grad(|| {
            for bucket in &self.buckets {
                let grads: Vec<Tensor> = bucket.iter().map(Tensor::grad).collect();
                let flat: Vec<Tensor> = grads
                    .iter()
                    .zip(bucket)
                    .map(|(grad, var)| {
                        if grad.defined() {
                            grad.reshape([-1])
                        } else {
                            Tensor::zeros([var.numel() as i64], (var.kind(), var.device()))
                        }
                    })
                    .collect();
                let mut flat = Tensor::cat(&flat, 0); // [bucket elements]
                group.all_reduce(&mut flat, ReduceOp::Avg)?;
                let mut offset = 0;
                for (mut grad, var) in grads.into_iter().zip(bucket) {
                    let numel = var.numel() as i64;
                    if grad.defined() {
                        grad.copy_(&flat.narrow(0, offset, numel).view_as(&grad));
                    }
                    offset += numel;
                }
            }
            Ok(())
        })
    }
}
