//! The contrastive objective (SimCLR, Chen et al. 2020, Section 2.1 and Algorithm 1; the
//! comparison of losses and similarities of Section 5.1 / Table 2, after the method notes):
//! the 2N projections of a batch (views k and k+N come from image k) are compared through one
//! similarity matrix S = s(z, z) `[2N, 2N]` ([`similarity`]), and a loss over it ([`loss`]),
//! each anchor's positive being the other view of its image and its negatives the 2N−2 views of
//! the other images; the self pair s(z_i, z_i) takes no part.
//!
//! Default: cosine similarity with NT-Xent at τ = 0.5 (the CIFAR recipe), SimCLR's objective:
//! "the cross-entropy loss works best for the downstream classification tasks when coupling
//! with the cosine similarity" (the notes, after SimCLR Table 2).
//!
//! Precision: the similarity and the loss run in f32 whatever produced z (z from a bf16
//! autocast forward is cast up first; `train` calls this outside the autocast region, and the
//! concat similarity excludes autocast itself), or in f64 when z and the var store are f64 (the
//! tests). [`Contrastive::metrics`] reads the step's quality at logging points only.
//!
//! # Shapes
//! z1, z2 `[N, D]` -> loss (scalar), scores `[2N, 2N]`.
pub mod layout;
pub mod loss;
pub mod metrics;
pub mod similarity;

use crate::dist::ProcessGroup;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

pub use layout::Layout;
pub use loss::LossKind;
pub use metrics::ContrastMetrics;
pub use similarity::{Similarity, SimilarityKind};

/// The contrastive objective's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// τ of NT-Xent and NT-Logistic (and of the softmax behind `train/contrast_entropy`):
    /// 0.1 on ImageNet, 0.5 in the CIFAR recipe.
    pub temperature: f64,
    pub similarity: SimilarityKind,
    /// L2-normalise z before a dot, bilinear or concat similarity (cosine always does).
    pub normalize: bool,
    pub loss: LossKind,
    /// m of the margin triplet loss. 1.0: with cosine similarity the gap s⁺ − s⁻ lies in
    /// [−2, 2] and about 0 at initialisation; m = 1 asks the positive to beat every negative
    /// by half that range (e.g. s⁺ = 0.9 against s⁻ = −0.1), met only once positives align and
    /// negatives are pushed to orthogonal, so the loss keeps working through training.
    pub margin: f64,
    /// Hidden width H of the concat similarity (None: the projection width).
    pub concat_hidden: Option<i64>,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            temperature: 0.5,
            similarity: SimilarityKind::Cosine,
            normalize: false,
            loss: LossKind::NtXent,
            margin: 1.0,
            concat_hidden: None,
        }
    }
}

impl ObjectiveConfig {
    /// Rejects values that cannot train, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!(
                "objective.temperature must be > 0, got {}",
                self.temperature
            );
        }
        if !(self.margin >= 0.0 && self.margin.is_finite()) {
            bail!("objective.margin must be >= 0, got {}", self.margin);
        }
        if let Some(hidden) = self.concat_hidden.filter(|&h| h < 1) {
            bail!("objective.concat_hidden must be >= 1, got {hidden}");
        }
        Ok(())
    }
}

/// The similarity and loss of a run, with the similarity's learned parameters (if any) under
/// `similarity.` in the var store.
#[derive(Debug)]
pub struct Objective {
    similarity: Similarity,
    loss: LossKind,
    temperature: f64,
    margin: f64,
}

/// One step's loss, and what its quality is read from at logging points.
#[derive(Debug)]
pub struct Contrastive {
    /// Mean loss over the 2N anchors (scalar, f32; f64 for f64 inputs).
    pub loss: Tensor,
    /// s(z_i, z_j) of every anchor and candidate, detached (`[2N, 2N]` on one device,
    /// `[2N, 2N·W]` with global negatives; self pairs meaningless).
    pub scores: Tensor,
    /// Where each anchor's self pair and positive sit in `scores`.
    pub layout: Layout,
    temperature: f64,
}

impl Contrastive {
    /// Contrastive top-1/top-5 accuracy and softmax entropy (sync point).
    pub fn metrics(&self) -> ContrastMetrics {
        metrics::contrast_metrics(&self.scores, &self.layout, self.temperature)
    }
}

impl Objective {
    /// Var-store prefix of the similarity's learned parameters (not exported with the encoder).
    pub const SIMILARITY: &'static str = "similarity";

    /// The objective of `cfg` for projections of width `dim`, its parameters under `root`.
    pub fn new(root: &nn::Path, cfg: &ObjectiveConfig, dim: i64) -> Objective {
        Objective {
            similarity: Similarity::new(
                &(root / Self::SIMILARITY),
                cfg.similarity,
                cfg.normalize,
                dim,
                cfg.concat_hidden.unwrap_or(dim),
            ),
            loss: cfg.loss,
            temperature: cfg.temperature,
            margin: cfg.margin,
        }
    }

    /// The loss of two batches of projections, `z1[k]` and `z2[k]` being views of image k.
    ///
    /// # Shapes
    /// `z1`, `z2`: `[N, D]`, N >= 1 (N = 1 has no negatives) -> loss scalar, scores `[2N, 2N]`.
    pub fn forward(&self, z1: &Tensor, z2: &Tensor) -> Result<Contrastive> {
        self.contrast(z1, z2, None)
    }

    /// As [`Objective::forward`] with global negatives: this rank's 2N views are the anchors,
    /// the 2N·W views of all ranks (all-gathered, differentiably) the candidates. The loss is
    /// the mean over this rank's anchors; averaged over the ranks it is the loss of one device
    /// with the whole global batch, and so are the averaged gradients
    /// ([`ProcessGroup::all_gather_with_grad`]).
    ///
    /// # Shapes
    /// `z1`, `z2`: `[N, D]`, the same N on every rank -> loss scalar, scores `[2N, 2N·W]`.
    pub fn forward_global(
        &self,
        z1: &Tensor,
        z2: &Tensor,
        group: &ProcessGroup,
    ) -> Result<Contrastive> {
        self.contrast(z1, z2, Some(group))
    }

    fn contrast(
        &self,
        z1: &Tensor,
        z2: &Tensor,
        group: Option<&ProcessGroup>,
    ) -> Result<Contrastive> {
        let kind = if z1.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let z = Tensor::cat(&[z1, z2], 0).to_kind(kind); // [2N, D]
        let views = z.size()[0];
        let (scores, layout) = match group {
            None => (
                self.similarity.within(&z)?,
                Layout::square(views, z.device()),
            ), // [2N, 2N]
            Some(group) => {
                let candidates = group.all_gather_with_grad(&z)?; // [2N·W, D]
                (
                    self.similarity.scores(&z, &candidates)?, // [2N, 2N·W]
                    Layout::global(views, group.rank(), z.device()),
                )
            }
        };
        let loss = loss::mean(self.loss, &scores, &layout, self.temperature, self.margin);
        Ok(Contrastive {
            loss,
            scores: scores.detach(),
            layout,
            temperature: self.temperature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    fn objective(vs: &VarStore, cfg: ObjectiveConfig) -> Objective {
        Objective::new(&vs.root(), &cfg, 2)
    }

    /// Two images, unit vectors at right angles; each view's positive is identical to it.
    /// Row i: logits to the 3 others are 1/τ (positive), 0 and 0 (the negatives), so
    /// ℓ = −log(e^{1/τ} / (e^{1/τ} + 2)). Without the self-mask the denominator would gain
    /// another e^{1/τ}.
    #[test]
    fn hand_computed_nt_xent_with_masking() -> Result<()> {
        let vs = VarStore::new(Device::Cpu);
        let tau = 0.5;
        let cfg = ObjectiveConfig {
            temperature: tau,
            ..Default::default()
        };
        let z1 = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let z2 = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 3.0]).view([2, 2]);
        let out = objective(&vs, cfg).forward(&z1, &z2)?;
        let e = (1.0f64 / tau).exp();
        assert!((out.loss.double_value(&[]) - -(e / (e + 2.0)).ln()).abs() < 1e-6);
        assert_eq!(out.metrics().top1, 1.0);
        Ok(())
    }

    /// bf16 projections (what an autocast forward yields) give an f32 loss and scores.
    #[test]
    fn bf16_projections_give_an_f32_loss() -> Result<()> {
        for similarity in [SimilarityKind::Cosine, SimilarityKind::Concat] {
            let vs = VarStore::new(Device::Cpu);
            let cfg = ObjectiveConfig {
                similarity,
                ..Default::default()
            };
            let z = Tensor::randn([4, 2], (Kind::BFloat16, Device::Cpu));
            let out = objective(&vs, cfg).forward(&z, &z.flip([0]))?;
            assert_eq!(
                (out.loss.kind(), out.scores.kind()),
                (Kind::Float, Kind::Float)
            );
        }
        Ok(())
    }

    #[test]
    fn bad_values_name_the_field() {
        for (cfg, field) in [
            (
                ObjectiveConfig {
                    margin: -0.1,
                    ..Default::default()
                },
                "objective.margin",
            ),
            (
                ObjectiveConfig {
                    concat_hidden: Some(0),
                    ..Default::default()
                },
                "objective.concat_hidden",
            ),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
