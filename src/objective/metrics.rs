//! How well the contrastive task is solved, read from the similarity matrix of a step: each of
//! the 2N views picks its positive out of the 2N−1 other views (SimCLR, Figure B.3 and
//! Table 5 report this "contrastive accuracy").
//!
//! - `top1`, `top5`: fraction of anchors whose positive ranks first / within the first five
//!   among the 2N−1 candidates. A candidate that ties with the positive ranks above it, so a
//!   collapsed representation (every similarity equal) scores 0, not 1.
//! - `entropy`: entropy of softmax(s/τ) over the 2N−1 candidates, mean over anchors, in nats:
//!   ln(2N−1) when nothing is told apart, 0 when all mass is on one candidate. τ is the
//!   objective's temperature whatever the loss (the triplet loss has none of its own).
//!
//! These are logging-point quantities: computing them reads back from the device.
//!
//! # Shapes
//! scores `[2N, K]` (self pairs ignored, see [`Layout`]) -> three scalars.
use super::Layout;
use tch::{Kind, Tensor};

/// Contrastive accuracy and softmax entropy of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContrastMetrics {
    pub top1: f64,
    pub top5: f64,
    /// Nats, in [0, ln(2N−1)].
    pub entropy: f64,
}

/// The metrics of one step's similarity matrix (sync point: one read from the device).
///
/// # Shapes
/// `scores [2N, K]` -> scalars.
pub fn contrast_metrics(scores: &Tensor, layout: &Layout, temperature: f64) -> ContrastMetrics {
    tch::no_grad(|| {
        let candidates = scores.size()[1];
        let is_self = layout.self_mask(candidates); // [2N, K]
        let logits =
            (scores.to_kind(Kind::Float) / temperature).masked_fill(&is_self, f64::NEG_INFINITY);
        let positive = layout.positive_scores(&logits); // [2N, 1]
                                                        // Candidates scoring at least as high as the positive, the positive itself excluded.
        let above = logits
            .ge_tensor(&positive)
            .logical_and(&layout.positive_mask(candidates).logical_not())
            .sum_dim_intlist(1, false, Kind::Int64); // [2N]
        let top1 = above.eq(0).to_kind(Kind::Float).mean(Kind::Float);
        let top5 = above.lt(5).to_kind(Kind::Float).mean(Kind::Float);
        let log_p = logits
            .log_softmax(1, Kind::Float)
            .masked_fill(&is_self, 0.0); // [2N, K]
        let entropy = -(log_p.exp().masked_fill(&is_self, 0.0) * &log_p)
            .sum_dim_intlist(1, false, Kind::Float)
            .mean(Kind::Float);
        // One transfer for the three numbers.
        let values = Tensor::stack(&[top1, top5, entropy], 0).to_device(tch::Device::Cpu);
        let [top1, top5, entropy] = [0, 1, 2].map(|i| values.double_value(&[i]));
        ContrastMetrics {
            top1,
            top5,
            entropy,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Four views (two images); every row written out by hand.
    #[test]
    fn hand_computed_ranks_and_entropy() {
        // Anchor 0's positive (view 2) is its best candidate; anchor 1's (view 3) is beaten by
        // view 0; anchors 2 and 3 see their positives tie with another candidate.
        let scores = Tensor::from_slice(&[
            9.0, 0.0, 1.0, 0.0, //
            2.0, 9.0, 0.0, 1.0, //
            1.0, 1.0, 9.0, 0.0, //
            0.0, 1.0, 1.0, 9.0f64,
        ])
        .view([4, 4]);
        let m = contrast_metrics(&scores, &Layout::square(4, Device::Cpu), 1.0);
        assert_eq!(m.top1, 0.25);
        assert_eq!(m.top5, 1.0);
        let h = |logits: [f64; 3]| {
            let z: f64 = logits.iter().map(|l| l.exp()).sum();
            -logits
                .iter()
                .map(|l| l.exp() / z * (l.exp() / z).ln())
                .sum::<f64>()
        };
        let expected =
            (h([0.0, 1.0, 0.0]) + h([2.0, 0.0, 1.0]) + h([1.0, 1.0, 0.0]) + h([0.0, 1.0, 1.0]))
                / 4.0;
        assert!(
            (m.entropy - expected).abs() < 1e-6,
            "{} vs {expected}",
            m.entropy
        );
    }

    /// A collapsed batch (all similarities equal) is not solved, and has maximal entropy.
    #[test]
    fn collapse_scores_zero_with_maximal_entropy() {
        let views = 12;
        let m = contrast_metrics(
            &Tensor::ones([views, views], (Kind::Float, Device::Cpu)),
            &Layout::square(views, Device::Cpu),
            0.5,
        );
        assert_eq!((m.top1, m.top5), (0.0, 0.0));
        assert!((m.entropy - ((views - 1) as f64).ln()).abs() < 1e-5);
    }
}
