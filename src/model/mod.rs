//! The SimCLR network: encoder f (a ResNet) and projection head g, with h = f(x) and
//! z = g(h) kept separately reachable (h is evaluated and exported, z feeds the loss).
pub mod head;
pub mod norm;
pub mod resnet;

use crate::dist::ProcessGroup;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// ResNet depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
}

/// First layer: ImageNet's 7x7/2 conv + max-pool, or CIFAR's 3x3/1 conv without pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// CIFAR stem for images of at most 32 px, ImageNet stem above.
    Auto,
    Cifar,
    Imagenet,
}

/// Architecture of encoder and projection head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Width multiplier on every layer's channels (SimCLR trains 1x, 2x and 4x ResNet-50s).
    pub width: f64,
    pub stem: Stem,
    /// Linear layers in the projection head (2 = SimCLRv1, 3 = SimCLRv2).
    pub head_layers: usize,
    /// Hidden width of the head; `None` = the width of h, as in the paper.
    pub head_hidden: Option<i64>,
    /// Output width of the head (128 in the paper).
    pub proj_dim: i64,
    /// Batch norm on every head layer, the last one included, without bias before it
    /// (SimCLRv2's head; false: SimCLRv1's, whose last layer is a plain Linear).
    pub head_bn: bool,
    /// Standardise the input with ImageNet's channel mean and std as the encoder's first step
    /// (for weights meant for torchvision-style normalised pipelines). Inside the encoder, so
    /// the loader, every evaluation and the exported `encoder.pt` all still take RGB in [0, 1].
    /// Off by default, as in the official code.
    pub normalize_input: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: Arch::Resnet18,
            width: 1.0,
            stem: Stem::Auto,
            head_layers: 2,
            head_hidden: None,
            proj_dim: 128,
            head_bn: false,
            normalize_input: false,
        }
    }
}

impl ModelConfig {
    /// Channels of the stem and first stage: 64 x width, at least 1.
    pub fn base_channels(&self) -> i64 {
        ((64.0 * self.width).round() as i64).max(1)
    }

    /// Rejects values that cannot build a network, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.width > 0.0 && self.width <= 16.0) {
            bail!("model.width must be in (0, 16], got {}", self.width);
        }
        if self.head_layers == 0 || self.head_layers > 8 {
            bail!(
                "model.head_layers must be in 1..=8, got {}",
                self.head_layers
            );
        }
        if self.proj_dim < 1 {
            bail!("model.proj_dim must be >= 1, got {}", self.proj_dim);
        }
        if let Some(hidden) = self.head_hidden.filter(|&h| h < 1) {
            bail!("model.head_hidden must be >= 1, got {hidden}");
        }
        Ok(())
    }
}

/// Encoder f and projection head g, under the var-store paths `encoder` and `head`.
#[derive(Debug)]
pub struct SimClr {
    pub encoder: resnet::ResNet,
    pub head: head::ProjectionHead,
}

impl SimClr {
    /// Var-store prefix of the encoder's parameters (stripped on export).
    pub const ENCODER: &'static str = "encoder";

    /// Builds the network for `image_size` inputs.
    pub fn new(root: &nn::Path, cfg: &ModelConfig, image_size: usize) -> SimClr {
        let encoder = resnet::ResNet::new(&(root / Self::ENCODER), cfg, image_size);
        let head = head::ProjectionHead::new(&(root / "head"), encoder.out_dim(), cfg);
        SimClr { encoder, head }
    }

    /// Global batch norm: every batch-norm layer of encoder and head takes its training
    /// statistics over all ranks of `group` ([`norm::BatchNorm`]).
    pub fn synchronize_batch_norm(&mut self, group: &Arc<ProcessGroup>) {
        let layers = self
            .encoder
            .batch_norms_mut()
            .chain(self.head.batch_norms_mut());
        for bn in layers {
            bn.synchronize(group.clone());
        }
    }

    /// `[B, 3, S, S]` -> (h `[B, h_dim]`, z `[B, proj_dim]`).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let h = self.encoder.forward_t(xs, train);
        let z = self.head.forward_t(&h, train);
        (h, z)
    }

    /// Fails, naming the value, unless the head has a layer `head_layer` (0 = h is always
    /// there).
    pub fn check_head_layer(&self, head_layer: usize) -> Result<()> {
        let depth = self.head.depth();
        if head_layer > depth {
            bail!("head layer {head_layer} does not exist: the projection head has {depth} layers (model.head_layers; 0 = the encoder output h)");
        }
        Ok(())
    }

    /// The representation taken after `head_layer` layers of the head: 0 = h (what SimCLR
    /// evaluates), 1 = SimCLRv2's fine-tuning point (the middle of a 3-layer head), the head's
    /// depth (or more) = z. See [`SimClr::check_head_layer`].
    ///
    /// # Shapes
    /// `[B, 3, S, S]` -> `[B, h_dim]`, `[B, head_hidden]` or `[B, proj_dim]`.
    pub fn representation(&self, xs: &Tensor, head_layer: usize, train: bool) -> Tensor {
        let h = self.encoder.forward_t(xs, train);
        self.head.forward_to(&h, head_layer, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn build(arch: Arch, image_size: usize) -> (nn::VarStore, SimClr) {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            arch,
            width: 0.125,
            ..Default::default()
        };
        let model = SimClr::new(&vs.root(), &cfg, image_size);
        (vs, model)
    }

    #[test]
    fn shapes_of_h_and_z() {
        for (arch, h_dim) in [(Arch::Resnet18, 64), (Arch::Resnet50, 256)] {
            let (_vs, model) = build(arch, 32);
            let x = Tensor::rand([3, 3, 32, 32], (Kind::Float, Device::Cpu));
            let (h, z) = model.forward_t(&x, true);
            assert_eq!(h.size(), [3, h_dim]);
            assert_eq!(z.size(), [3, 128]);
        }
    }

    #[test]
    fn imagenet_stem_downsamples_by_32() {
        let (_vs, model) = build(Arch::Resnet18, 64);
        let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let (h, _) = model.forward_t(&x, false);
        assert_eq!(h.size(), [2, 64]);
    }

    #[test]
    fn normalize_input_standardises_inside_the_encoder() {
        let (plain_vs, plain) = build(Arch::Resnet18, 32);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            width: 0.125,
            normalize_input: true,
            ..Default::default()
        };
        let normalizing = SimClr::new(&vs.root(), &cfg, 32);
        vs.copy(&plain_vs).expect("same variables");
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let channel = |v: [f32; 3]| Tensor::from_slice(&v).view([1, 3, 1, 1]);
        let by_hand = (&x - channel(resnet::IMAGENET_MEAN)) / channel(resnet::IMAGENET_STD);
        let h = normalizing.encoder.forward_t(&x, false);
        assert!(h.allclose(&plain.encoder.forward_t(&by_hand, false), 1e-6, 1e-6, false));
        assert!(!h.allclose(&plain.encoder.forward_t(&x, false), 1e-3, 1e-3, false));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cfg = ModelConfig {
            width: 0.0,
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("model.width"), "{err}");
    }
}
