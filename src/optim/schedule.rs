//! Learning-rate scaling and schedule (SimCLR, Section B.1 / Appendix B.6).
//!
//! Peak learning rate: `base × B/256` (linear scaling) or `base × sqrt(B)` (square-root scaling),
//! B being the global batch. "We use linear warmup for the first 10 epochs, and decay the
//! learning rate with the cosine decay schedule without restarts." The schedule is a pure
//! function of the global step, so it survives resumption and is right per step (not per epoch).
use serde::{Deserialize, Serialize};

/// How the peak learning rate grows with the global batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// `base × B / 256` (the paper's default with LARS, base 0.3).
    Linear,
    /// `base × sqrt(B)` (the paper's choice for small batches and long training, base 0.075).
    Sqrt,
}

/// The peak learning rate for a global batch of `batch` images.
pub fn scaled_lr(base: f64, batch: usize, scaling: LrScaling) -> f64 {
    match scaling {
        LrScaling::Linear => base * batch as f64 / 256.0,
        LrScaling::Sqrt => base * (batch as f64).sqrt(),
    }
}

/// Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to 0 at `total_steps`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// The learning rate of the update made at `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        0.5 * self.peak * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_rules() {
        assert!((scaled_lr(0.3, 4096, LrScaling::Linear) - 4.8).abs() < 1e-12);
        assert!((scaled_lr(0.075, 4096, LrScaling::Sqrt) - 4.8).abs() < 1e-12);
    }

    #[test]
    fn warmup_then_cosine_to_zero() {
        let s = Schedule {
            peak: 2.0,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 1.0).abs() < 1e-12);
        assert!(
            (s.lr(10) - 2.0).abs() < 1e-12,
            "peak exactly at the end of warm-up"
        );
        assert!(
            (s.lr(60) - 1.0).abs() < 1e-12,
            "half-way through the cosine"
        );
        assert!(s.lr(109) > 0.0 && s.lr(109) < 1e-3);
        assert!(s.lr(110).abs() < 1e-12, "zero at the end");
        let lrs: Vec<f64> = (10..=110).map(|k| s.lr(k)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "monotone decay");
    }

    #[test]
    fn no_warmup() {
        let s = Schedule {
            peak: 1.0,
            warmup_steps: 0,
            total_steps: 4,
        };
        assert_eq!(s.lr(0), 1.0);
        assert!((s.lr(2) - 0.5).abs() < 1e-12);
    }
}
