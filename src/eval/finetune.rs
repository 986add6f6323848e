//! Semi-supervised fine-tuning on a fraction of the labels (SimCLR, Section 6 and Appendix
//! B.5): "we fine-tune the pretrained network on 1% or 10% of the labeled data", sampled in a
//! class-balanced way; the encoder and a new linear classifier on h are trained together (with
//! a SimCLRv2 head, optionally from one of its layers, also trained), and top-1/top-5 are
//! reported on the test split.
//!
//! The paper fine-tunes with Nesterov momentum, "batch size 4096, learning rate 0.8 (i.e.
//! LearningRate = 0.05 x BatchSize/256) without warmup", no weight decay, random crops and
//! flips only. Here: SGD with momentum 0.9 (classic, not Nesterov), learning rate 0.05 x B/256
//! with cosine decay, no weight decay, crop + flip only; each step trains on the two augmented
//! views the loader makes of every image (so 2B examples a step).
use crate::data::augment::AugmentConfig;
use crate::data::loader::{eval_batches, EvalTransform, LoaderConfig, TwoViewLoader};
use crate::data::{Dataset, Subset};
use crate::model::SimClr;
use crate::optim::{LrScaling, OptimConfig, Optimizer, OptimizerKind, Schedule};
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::sync::Arc;
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

/// Base learning rate of fine-tuning, scaled by B/256 (the paper's 0.05).
pub const BASE_LR: f64 = 0.05;

/// What fine-tuning reports.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneResult {
    pub top1: f64,
    pub top5: f64,
    /// Labelled training images used.
    pub labelled_images: usize,
    pub epochs: usize,
}

/// A class-balanced, seeded subset of `fraction` of the labels: from every class, the same
/// share of its images (rounded, at least one), chosen by a shuffle seeded with `seed`.
/// Returned in ascending index order.
pub fn label_subset(
    labels: &[i64],
    num_classes: usize,
    fraction: f64,
    seed: u64,
) -> Result<Vec<usize>> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        bail!("--label-fraction must be in (0, 1], got {fraction}");
    }
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut chosen = Vec::new();
    for class in 0..num_classes as i64 {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        if members.is_empty() {
            continue;
        }
        members.shuffle(&mut rng);
        let take = ((members.len() as f64 * fraction).round() as usize).max(1);
        chosen.extend_from_slice(&members[..take]);
    }
    chosen.sort_unstable();
    Ok(chosen)
}

/// How fine-tuning runs.
#[derive(Debug, Clone)]
pub struct FinetuneConfig {
    /// Where the classifier sits: 0 = on h; K = after K projection-head layers, which are
    /// fine-tuned too (SimCLRv2 fine-tunes from the middle layer of its 3-layer head: K = 1).
    pub head_layer: usize,
    /// Input transform of the test split (its size is also the training views' size).
    pub transform: EvalTransform,
    pub epochs: usize,
    /// Labelled images per step (capped at the subset's size).
    pub batch_size: usize,
    pub seed: u64,
    pub workers: usize,
}

/// Fine-tunes `model` (whose weights live in `vs`) up to `cfg.head_layer` with a new linear
/// classifier on the labelled `indices` of `train`, then evaluates on `test`.
pub fn finetune(
    vs: &VarStore,
    model: &SimClr,
    train: Arc<dyn Dataset>,
    test: &dyn Dataset,
    indices: &[usize],
    cfg: &FinetuneConfig,
) -> Result<FinetuneResult> {
    model.check_head_layer(cfg.head_layer)?;
    let (image_size, epochs, seed) = (cfg.transform.image_size, cfg.epochs, cfg.seed);
    let num_classes = train.num_classes();
    let device = vs.device();
    let represent = |x: &Tensor, train: bool| model.representation(x, cfg.head_layer, train);
    let labelled: Arc<dyn Dataset> = Arc::new(Subset::new(train, indices.to_vec())?);
    let batch_size = cfg.batch_size.min(labelled.len());
    if batch_size < 2 {
        bail!(
            "the labelled subset holds {} image(s): raise --label-fraction",
            labelled.len()
        );
    }
    let probe = Tensor::zeros(
        [2, 3, image_size as i64, image_size as i64],
        (Kind::Float, device),
    );
    let width = tch::no_grad(|| represent(&probe, false)).size()[1];
    let classifier = nn::linear(
        &vs.root() / "finetune" / "fc",
        width,
        num_classes as i64,
        Default::default(),
    );
    // Crops and flips only, as the paper fine-tunes (no blur, whatever the image size).
    let augment = AugmentConfig {
        jitter_prob: 0.0,
        grayscale_prob: 0.0,
        blur_prob: Some(0.0),
        ..AugmentConfig::default()
    };
    let loader_cfg = LoaderConfig {
        batch_size,
        image_size,
        workers: cfg.workers,
        prefetch: 2,
        seed,
        rank: 0,
        world_size: 1,
        max_skipped_fraction: 1.0, // an unreadable image is replaced and counted, never fatal here
    };
    let loader = TwoViewLoader::new(labelled.clone(), augment, loader_cfg, device)?;
    let optim_cfg = OptimConfig {
        optimizer: OptimizerKind::Sgd,
        lr: BASE_LR,
        lr_scaling: LrScaling::Linear,
        weight_decay: 0.0,
        momentum: 0.9,
        ..OptimConfig::default()
    };
    let mut optimizer = Optimizer::new(vs, &optim_cfg);
    let steps_per_epoch = loader.batches_per_epoch() as u64;
    let schedule = Schedule {
        peak: BASE_LR * batch_size as f64 / 256.0,
        warmup_steps: 0,
        total_steps: epochs as u64 * steps_per_epoch,
    };
    let mut step = 0;
    for epoch in 0..epochs as u64 {
        for batch in loader.epoch(epoch, 0) {
            let batch = batch?;
            let labels: Vec<i64> = batch.indices.iter().map(|&i| labelled.label(i)).collect();
            let labels = Tensor::from_slice(&labels).to_device(device);
            let [view1, view2] = batch.views;
            let x = Tensor::cat(&[view1, view2], 0); // [2B, 3, S, S]
            let y = Tensor::cat(&[&labels, &labels], 0); // [2B]
            let loss = represent(&x, true)
                .apply(&classifier)
                .cross_entropy_for_logits(&y);
            optimizer.zero_grad()?;
            loss.backward();
            optimizer.step(schedule.lr(step));
            step += 1;
        }
    }
    let (top1, top5) = evaluate(
        &|x| represent(x, false),
        &classifier,
        test,
        cfg.transform,
        device,
    );
    Ok(FinetuneResult {
        top1,
        top5,
        labelled_images: labelled.len(),
        epochs,
    })
}

/// Top-1 and top-5 (capped at the class count) of representation + classifier on `test`.
fn evaluate(
    represent: &dyn Fn(&Tensor) -> Tensor,
    classifier: &nn::Linear,
    test: &dyn Dataset,
    transform: EvalTransform,
    device: Device,
) -> (f64, f64) {
    tch::no_grad(|| {
        let (mut top1, mut top5, mut n) = (0i64, 0i64, 0usize);
        for batch in eval_batches(test, transform, 256, device) {
            let (x, y) = (batch.images, batch.labels);
            n += batch.indices.len();
            let logits = represent(&x).apply(classifier);
            let k = 5.min(logits.size()[1]);
            let hits = logits.topk(k, 1, true, true).1.eq_tensor(&y.unsqueeze(1)); // [b, k]
            top1 += hits.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]);
            top5 += hits.any_dim(1, false).sum(Kind::Int64).int64_value(&[]);
        }
        let n = n.max(1) as f64;
        (top1 as f64 / n, top5 as f64 / n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(per_class: usize, classes: usize) -> Vec<i64> {
        (0..per_class * classes)
            .map(|i| (i % classes) as i64)
            .collect()
    }

    #[test]
    fn subset_is_class_balanced_and_stable_for_a_seed() -> Result<()> {
        let labels = labels(100, 10);
        let a = label_subset(&labels, 10, 0.1, 7)?;
        assert_eq!(a.len(), 100);
        for class in 0..10 {
            assert_eq!(
                a.iter().filter(|&&i| labels[i] == class).count(),
                10,
                "class {class}"
            );
        }
        assert_eq!(
            a,
            label_subset(&labels, 10, 0.1, 7)?,
            "same seed, same subset"
        );
        assert_ne!(
            a,
            label_subset(&labels, 10, 0.1, 8)?,
            "another seed, another subset"
        );
        Ok(())
    }

    #[test]
    fn every_class_keeps_at_least_one_label() -> Result<()> {
        let labels = labels(30, 10);
        let a = label_subset(&labels, 10, 0.01, 0)?;
        assert_eq!(a.len(), 10);
        assert!(label_subset(&labels, 10, 0.0, 0).is_err());
        assert!(label_subset(&labels, 10, 1.5, 0).is_err());
        Ok(())
    }
}
