//! Optimisers over the var store's trainable parameters: LARS (SimCLR's), SGD with momentum,
//! and AdamW, with their state exposed as named tensors for checkpoints.
//!
//! Parameters are split into two groups by shape: weights of convolutions and linear layers
//! (rank >= 2) are "regularised" (weight decay, and LARS adaptation); batch-norm weights and
//! all biases (rank 1) are not — SimCLR, Appendix B.1.
pub mod lars;
pub mod loss_scale;
pub mod schedule;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{nn::VarStore, Tensor};

pub use schedule::{LrScaling, Schedule};

/// Which update rule trains the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Lars,
    Sgd,
    Adamw,
}

/// Optimisation hyper-parameters (defaults: the official CIFAR recipe's peak learning rate,
/// 1.0 x 512/256 = 2.0, reached at batch 256 with a one-epoch warm-up: the built-in default run
/// is a few hundred steps long, and LARS's small per-layer steps want the high end there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub optimizer: OptimizerKind,
    /// Base learning rate, scaled by the global batch (`lr_scaling`).
    pub lr: f64,
    pub lr_scaling: LrScaling,
    /// 1e-6 in the paper's ImageNet runs, 1e-4 in the CIFAR recipe.
    pub weight_decay: f64,
    /// 0.9 in the paper (LARS, SGD); AdamW's β1.
    pub momentum: f64,
    /// LARS η (0.001 in the paper).
    pub trust_coefficient: f64,
    /// Linear warm-up length in epochs (10 in the paper); fractional values allowed.
    pub warmup_epochs: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            optimizer: OptimizerKind::Lars,
            lr: 2.0,
            lr_scaling: LrScaling::Linear,
            weight_decay: 1e-4,
            momentum: 0.9,
            trust_coefficient: 1e-3,
            warmup_epochs: 1.0,
        }
    }
}

impl OptimConfig {
    /// Rejects values that cannot train, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("optim.lr must be a positive number, got {}", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!("optim.weight_decay must be >= 0, got {}", self.weight_decay);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("optim.momentum must be in [0, 1), got {}", self.momentum);
        }
        if !(self.trust_coefficient.is_finite() && self.trust_coefficient > 0.0) {
            bail!(
                "optim.trust_coefficient must be > 0, got {}",
                self.trust_coefficient
            );
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            bail!(
                "optim.warmup_epochs must be >= 0, got {}",
                self.warmup_epochs
            );
        }
        Ok(())
    }
}

/// A trainable tensor with its name and group.
struct Param {
    name: String,
    tensor: Tensor,
    regularized: bool,
    /// Per-parameter state: LARS/SGD momentum, or AdamW's first and second moments.
    state: Vec<Tensor>,
}

/// The optimiser: an update rule applied to every trainable parameter of a var store.
pub struct Optimizer {
    cfg: OptimConfig,
    params: Vec<Param>,
    /// Updates made so far (AdamW's bias correction needs it).
    steps: u64,
}

const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

impl Optimizer {
    /// Collects the trainable variables of `vs`, in name order, with zeroed state.
    pub fn new(vs: &VarStore, cfg: &OptimConfig) -> Optimizer {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = if cfg.optimizer == OptimizerKind::Adamw {
            2
        } else {
            1
        };
        let params = named
            .into_iter()
            .map(|(name, tensor)| Param {
                regularized: tensor.dim() >= 2,
                state: (0..buffers).map(|_| tensor.zeros_like()).collect(),
                name,
                tensor,
            })
            .collect();
        Optimizer {
            cfg: cfg.clone(),
            params,
            steps: 0,
        }
    }

    /// Names of the parameters excluded from weight decay and LARS adaptation.
    pub fn unregularized(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| !p.regularized)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Clears every gradient before the next backward pass: drops it (as PyTorch's
    /// `zero_grad()` does) rather than filling it with zeros, so backward writes the new one
    /// directly; a parameter that gets no gradient is then skipped by [`Optimizer::step`].
    pub fn zero_grad(&mut self) -> Result<()> {
        for p in &mut self.params {
            crate::shim::clear_grad(&mut p.tensor)?;
        }
        Ok(())
    }

    /// The gradients of the last backward pass (shared storage: changing them in place changes
    /// what the next [`Optimizer::step`] sees), e.g. for unscaling an fp16 backward.
    pub fn gradients(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Applies one update with learning rate `lr` from the gradients of the last backward.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let cfg = &self.cfg;
        for p in &mut self.params {
            let grad = p.tensor.grad();
            if !grad.defined() {
                continue;
            }
            let wd = if p.regularized { cfg.weight_decay } else { 0.0 };
            match cfg.optimizer {
                OptimizerKind::Lars => {
                    let lars = lars::Lars {
                        momentum: cfg.momentum,
                        weight_decay: cfg.weight_decay,
                        trust_coefficient: cfg.trust_coefficient,
                    };
                    lars.update(&mut p.tensor, &grad, &mut p.state[0], lr, p.regularized);
                }
                OptimizerKind::Sgd => tch::no_grad(|| {
                    // PyTorch's SGD: v ← m·v + (g + λw); w ← w − lr·v.
                    let _ = p.state[0]
                        .g_mul_scalar_(cfg.momentum)
                        .g_add_(&(&grad + &p.tensor * wd));
                    let _ = p.tensor.g_sub_(&(&p.state[0] * lr));
                }),
                OptimizerKind::Adamw => tch::no_grad(|| {
                    // Loshchilov & Hutter: decoupled decay, w ← w − lr·(m̂/(√v̂+ε) + λw).
                    let (b1, t) = (cfg.momentum, self.steps as i32);
                    let _ = p.state[0].g_mul_scalar_(b1).g_add_(&(&grad * (1.0 - b1)));
                    let _ = p.state[1]
                        .g_mul_scalar_(ADAM_BETA2)
                        .g_add_(&(grad.square() * (1.0 - ADAM_BETA2)));
                    let m_hat = &p.state[0] / (1.0 - b1.powi(t));
                    let v_hat = &p.state[1] / (1.0 - ADAM_BETA2.powi(t));
                    let update = m_hat / (v_hat.sqrt() + ADAM_EPS) + &p.tensor * wd;
                    let _ = p.tensor.g_sub_(&(update * lr));
                }),
            }
        }
    }

    /// The optimiser's state as named tensors (for checkpoints), plus its step count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        let tensors = self
            .params
            .iter()
            .flat_map(|p| {
                p.state
                    .iter()
                    .enumerate()
                    .map(move |(i, t)| (format!("{i}.{}", p.name), t.shallow_clone()))
            })
            .collect();
        (tensors, self.steps)
    }

    /// Restores what `state` returned; every buffer must be present with the right shape.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for p in &mut self.params {
            for (i, buffer) in p.state.iter_mut().enumerate() {
                let key = format!("{i}.{}", p.name);
                let saved = tensors
                    .get(&key)
                    .with_context(|| format!("optimizer state '{key}' missing from checkpoint"))?;
                if saved.size() != buffer.size() {
                    bail!(
                        "optimizer state '{key}' has shape {:?}, the model needs {:?}",
                        saved.size(),
                        buffer.size()
                    );
                }
                tch::no_grad(|| buffer.copy_(saved));
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    fn tiny_model(vs: &VarStore) -> (nn::Conv2D, nn::BatchNorm, nn::Linear) {
        let root = vs.root();
        let conv = nn::conv2d(&root / "conv", 3, 4, 3, Default::default());
        let bn = nn::batch_norm2d(&root / "bn", 4, Default::default());
        let fc = nn::linear(&root / "fc", 4, 2, Default::default());
        (conv, bn, fc)
    }

    #[test]
    fn batch_norm_and_biases_are_unregularized() {
        let vs = VarStore::new(Device::Cpu);
        let _model = tiny_model(&vs);
        let opt = Optimizer::new(&vs, &OptimConfig::default());
        assert_eq!(
            opt.unregularized(),
            ["bn.bias", "bn.weight", "conv.bias", "fc.bias"]
        );
    }

    /// With a zero gradient, only weight decay moves a parameter: BN and biases must not move.
    #[test]
    fn weight_decay_skips_batch_norm_and_biases() {
        for optimizer in [
            OptimizerKind::Lars,
            OptimizerKind::Sgd,
            OptimizerKind::Adamw,
        ] {
            let vs = VarStore::new(Device::Cpu);
            let (conv, bn, fc) = tiny_model(&vs);
            let cfg = OptimConfig {
                optimizer,
                weight_decay: 0.1,
                ..Default::default()
            };
            let mut opt = Optimizer::new(&vs, &cfg);
            let before: HashMap<String, Tensor> = vs
                .variables()
                .into_iter()
                .map(|(k, t)| (k, t.copy()))
                .collect();
            // A loss whose gradient is zero everywhere, so every parameter gets a defined zero grad.
            let x = Tensor::rand([2, 3, 5, 5], (Kind::Float, Device::Cpu));
            let y = x
                .apply(&conv)
                .apply_t(&bn, true)
                .mean_dim(&[2i64, 3][..], false, Kind::Float)
                .apply(&fc);
            (y.sum(Kind::Float) * 0.0).backward();
            opt.step(0.5);
            for (name, t) in vs
                .variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
            {
                let moved = (&t - &before[&name]).abs().max().double_value(&[]) > 0.0;
                let regularized = t.dim() >= 2;
                assert_eq!(moved, regularized, "{optimizer:?}: {name} moved={moved}");
            }
        }
    }

    /// Dropping gradients between steps gives exactly the updates that zeroing them gave
    /// (0 + g = g), bit for bit, so runs from before the change reproduce.
    #[test]
    fn dropped_gradients_update_like_zeroed_ones() -> Result<()> {
        // Weights and inputs from a formula, not the global RNG that parallel tests share.
        let wave = |shape: &[i64], phase: f64| {
            let n: i64 = shape.iter().product();
            (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37 + phase)
                .sin()
                .view(shape)
        };
        let train = |drop: bool| -> Result<Vec<Tensor>> {
            let vs = VarStore::new(Device::Cpu);
            let (conv, bn, fc) = tiny_model(&vs);
            let mut vars = vs.variables().into_iter().collect::<Vec<_>>();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (i, (_, t)) in vars.iter_mut().enumerate() {
                tch::no_grad(|| t.copy_(&wave(&t.size(), i as f64)));
            }
            let mut opt = Optimizer::new(&vs, &OptimConfig::default());
            for step in 0..3 {
                let x = wave(&[4, 3, 5, 5], 10.0 * step as f64);
                let y = x
                    .apply(&conv)
                    .apply_t(&bn, true)
                    .mean_dim(&[2i64, 3][..], false, Kind::Float)
                    .apply(&fc);
                if drop {
                    opt.zero_grad()?;
                } else {
                    opt.params.iter_mut().for_each(|p| p.tensor.zero_grad());
                }
                y.square().sum(Kind::Float).backward();
                opt.step(0.5);
            }
            Ok(vars.into_iter().map(|(_, t)| t).collect())
        };
        let (dropped, zeroed) = (train(true)?, train(false)?);
        for (a, b) in dropped.iter().zip(&zeroed) {
            assert!(a.equal(b));
        }
        Ok(())
    }

    #[test]
    fn state_round_trips() -> Result<()> {
        let vs = VarStore::new(Device::Cpu);
        let _model = tiny_model(&vs);
        let cfg = OptimConfig {
            optimizer: OptimizerKind::Adamw,
            ..Default::default()
        };
        let mut opt = Optimizer::new(&vs, &cfg);
        for p in &mut opt.params {
            let _ = p.state[1].fill_(3.0);
        }
        let (tensors, _) = opt.state();
        let map: HashMap<String, Tensor> =
            tensors.into_iter().map(|(k, t)| (k, t.copy())).collect();
        let mut fresh = Optimizer::new(&vs, &cfg);
        fresh.load_state(&map, 7)?;
        assert_eq!(fresh.steps, 7);
        assert_eq!(fresh.params[0].state[1].double_value(&[0]), 3.0);
        Ok(())
    }
}
