//! The linear evaluation protocol (SimCLR, Section 2.3 and Appendix B.5): a linear classifier
//! trained on frozen representations h, reported as top-1/top-5 accuracy on the test split.
//!
//! Features are standardised with the train split's mean and standard deviation, then a
//! multinomial logistic regression with an L2 penalty λ/2·‖W‖² is trained by mini-batch SGD
//! with Nesterov momentum and a cosine learning rate. λ is chosen from [`PENALTIES`] by accuracy
//! on a held-out 10% of the train split (seeded); the chosen λ is then retrained on the whole
//! train split. Everything runs on the features in memory, which are small (N x D).
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// Candidate L2 penalties (the paper sweeps the regularisation on a validation split).
pub const PENALTIES: [f64; 5] = [0.0, 1e-5, 1e-4, 1e-3, 1e-2];
const EPOCHS: usize = 60;
const BATCH: i64 = 256;
const LR: f64 = 0.1;
const MOMENTUM: f64 = 0.9;

/// What a linear evaluation reports.
#[derive(Debug, Clone, Serialize)]
pub struct LinearResult {
    pub top1: f64,
    pub top5: f64,
    /// The L2 penalty chosen on the held-out part of the train split.
    pub penalty: f64,
    /// Held-out accuracy of each candidate penalty, in [`PENALTIES`] order.
    pub validation_top1: Vec<f64>,
}

/// Features and labels of one split.
pub struct Split {
    /// `[N, D]` f32.
    pub features: Tensor,
    /// `[N]` i64.
    pub labels: Tensor,
}

/// A trained linear classifier over standardised features.
struct Classifier {
    weight: Tensor, // [D, C]
    bias: Tensor,   // [C]
}

impl Classifier {
    fn logits(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight) + &self.bias
    }
}

/// Trains softmax regression on `train` with penalty `penalty` (seeded mini-batch order).
fn fit(train: &Split, num_classes: i64, penalty: f64, seed: u64) -> Classifier {
    let (n, d) = (train.features.size()[0], train.features.size()[1]);
    let device = train.features.device();
    let weight = Tensor::zeros([d, num_classes], (Kind::Float, device)).set_requires_grad(true);
    let bias = Tensor::zeros([num_classes], (Kind::Float, device)).set_requires_grad(true);
    let mut velocity = [weight.zeros_like(), bias.zeros_like()];
    let steps_per_epoch = (n + BATCH - 1) / BATCH;
    let total = (EPOCHS as i64 * steps_per_epoch) as f64;
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut step = 0.0;
    for _ in 0..EPOCHS {
        let mut order: Vec<i64> = (0..n).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(BATCH as usize) {
            let idx = Tensor::from_slice(chunk).to_device(device);
            let (x, y) = (
                train.features.index_select(0, &idx),
                train.labels.index_select(0, &idx),
            );
            let classifier = Classifier {
                weight: weight.shallow_clone(),
                bias: bias.shallow_clone(),
            };
            let loss = classifier.logits(&x).cross_entropy_for_logits(&y)
                + weight.square().sum(Kind::Float) * (penalty / 2.0);
            for t in [&weight, &bias] {
                t.shallow_clone().zero_grad();
            }
            loss.backward();
            let lr = 0.5 * LR * (1.0 + (std::f64::consts::PI * step / total).cos());
            tch::no_grad(|| {
                for (param, v) in [&weight, &bias].into_iter().zip(velocity.iter_mut()) {
                    // Nesterov: v ← m·v + g; w ← w − lr·(g + m·v).
                    let g = param.grad();
                    let _ = v.g_mul_scalar_(MOMENTUM).g_add_(&g);
                    let _ = param.shallow_clone().g_sub_(&((&g + &*v * MOMENTUM) * lr));
                }
            });
            step += 1.0;
        }
    }
    Classifier {
        weight: weight.detach(),
        bias: bias.detach(),
    }
}

/// Top-k accuracy of `classifier` on `split`, for k = 1 and 5 (5 capped at the class count).
fn accuracy(classifier: &Classifier, split: &Split) -> (f64, f64) {
    tch::no_grad(|| {
        let logits = classifier.logits(&split.features);
        let k = 5.min(logits.size()[1]);
        let (_, top) = logits.topk(k, 1, true, true); // [N, k]
        let hits = top.eq_tensor(&split.labels.unsqueeze(1)); // [N, k]
        let n = split.labels.size()[0].max(1) as f64;
        let top1 = hits.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]) as f64 / n;
        let top5 = hits.any_dim(1, false).sum(Kind::Int64).int64_value(&[]) as f64 / n;
        (top1, top5)
    })
}

/// Standardises both splits with the train split's per-dimension statistics.
fn standardise(train: &Split, test: &Split) -> (Split, Split) {
    let mean = train.features.mean_dim(0, true, Kind::Float);
    let std = train.features.std_dim(0, false, true).clamp_min(1e-6);
    let apply = |s: &Split| Split {
        features: (&s.features - &mean) / &std,
        labels: s.labels.shallow_clone(),
    };
    (apply(train), apply(test))
}

/// Runs the protocol: penalty chosen on a held-out 10% of `train`, retrained on all of it,
/// evaluated on `test`.
pub fn evaluate(train: &Split, test: &Split, num_classes: i64, seed: u64) -> LinearResult {
    let (train, test) = standardise(train, test);
    let n = train.labels.size()[0];
    let mut order: Vec<i64> = (0..n).collect();
    order.shuffle(&mut rand_pcg::Pcg64Mcg::seed_from_u64(seed ^ 0x6c69_6e65));
    let held_out = (n / 10).max(1);
    let device: Device = train.features.device();
    let pick = |idx: &[i64]| {
        let idx = Tensor::from_slice(idx).to_device(device);
        Split {
            features: train.features.index_select(0, &idx),
            labels: train.labels.index_select(0, &idx),
        }
    };
    let (fit_part, val_part) = (
        pick(&order[held_out as usize..]),
        pick(&order[..held_out as usize]),
    );
    let validation_top1: Vec<f64> = PENALTIES
        .iter()
        .map(|&p| accuracy(&fit(&fit_part, num_classes, p, seed), &val_part).0)
        .collect();
    let best = validation_top1
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let classifier = fit(&train, num_classes, PENALTIES[best], seed);
    let (top1, top5) = accuracy(&classifier, &test);
    LinearResult {
        top1,
        top5,
        penalty: PENALTIES[best],
        validation_top1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three Gaussian blobs in 4-D: linearly separable, so the probe must get them all.
    fn blobs(n_per_class: i64, seed: i64) -> Split {
        tch::manual_seed(seed);
        let centres = Tensor::from_slice(&[
            4.0f32, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0,
        ])
        .view([3, 4]);
        let labels = Tensor::arange(3, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(
            n_per_class,
            0,
            None,
        );
        let features = centres.index_select(0, &labels)
            + Tensor::randn([3 * n_per_class, 4], (Kind::Float, Device::Cpu)) * 0.5;
        Split { features, labels }
    }

    #[test]
    fn separable_classes_are_learned() {
        let result = evaluate(&blobs(60, 1), &blobs(20, 2), 3, 0);
        assert!(result.top1 > 0.97, "{result:?}");
        assert_eq!(result.top5, 1.0, "top-5 over 3 classes is always right");
        assert_eq!(result.validation_top1.len(), PENALTIES.len());
    }

    /// Labels unrelated to the features: accuracy stays near chance.
    #[test]
    fn random_labels_give_chance_accuracy() {
        let train = Split {
            labels: Tensor::randint(4, [400], (Kind::Int64, Device::Cpu)),
            ..blobs(400 / 3 + 1, 3)
        };
        let train = Split {
            features: train.features.narrow(0, 0, 400),
            labels: train.labels,
        };
        let test = Split {
            features: Tensor::randn([400, 4], (Kind::Float, Device::Cpu)),
            labels: Tensor::randint(4, [400], (Kind::Int64, Device::Cpu)),
        };
        let result = evaluate(&train, &test, 4, 0);
        assert!(result.top1 < 0.4, "{result:?}");
    }
}
