//! LARS: layer-wise adaptive rate scaling (You et al. 2017, <https://arxiv.org/abs/1708.03888>),
//! as the official SimCLR code implements it (`lars_optimizer.py`).
//!
//! For a parameter w with gradient g, weight decay λ, trust coefficient η, momentum m:
//!
//! ```text
//! g ← g + λ·w                                    (regularised parameters only)
//! r = η·‖w‖/‖g‖ if ‖w‖ > 0 and ‖g‖ > 0, else 1    (regularised parameters only; else r = 1)
//! v ← m·v + lr·r·g
//! w ← w − v
//! ```
//!
//! SimCLR, Appendix B.1: batch-norm and bias parameters are excluded from both weight decay and
//! the LARS adaptation (r = 1) — applying them there is a bug peers shipped.
use tch::Tensor;

/// LARS hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct Lars {
    pub momentum: f64,
    pub weight_decay: f64,
    /// η, 0.001 in the paper.
    pub trust_coefficient: f64,
}

impl Lars {
    /// Updates `param` in place from its gradient; `velocity` is its momentum buffer.
    /// `regularized` is false for batch-norm and bias parameters.
    pub fn update(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        velocity: &mut Tensor,
        lr: f64,
        regularized: bool,
    ) {
        tch::no_grad(|| {
            let ratio_times_grad = if regularized {
                let g = grad + &*param * self.weight_decay;
                let w_norm = param.norm();
                let g_norm = g.norm();
                // No host sync: the trust ratio stays a device scalar.
                let usable = w_norm.gt(0.0).logical_and(&g_norm.gt(0.0));
                let ratio = (&w_norm / &g_norm * self.trust_coefficient)
                    .where_self(&usable, &w_norm.ones_like());
                g * ratio
            } else {
                grad.shallow_clone()
            };
            let _ = velocity
                .g_mul_scalar_(self.momentum)
                .g_add_(&(ratio_times_grad * lr));
            let _ = param.g_sub_(velocity);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn vector(values: &[f64]) -> Tensor {
        Tensor::from_slice(values).to_kind(Kind::Double)
    }

    #[test]
    fn regularized_step_matches_the_formula() {
        let lars = Lars {
            momentum: 0.9,
            weight_decay: 0.1,
            trust_coefficient: 0.001,
        };
        let mut w = vector(&[3.0, 4.0]); // ‖w‖ = 5
        let g = vector(&[0.0, 0.6]); // g + λw = [0.3, 1.0]
        let mut v = vector(&[1.0, 1.0]);
        lars.update(&mut w, &g, &mut v, 2.0, true);
        let gd = [0.3f64, 1.0];
        let g_norm = (0.09f64 + 1.0).sqrt();
        let r = 0.001 * 5.0 / g_norm;
        for i in 0..2 {
            let v_expected = 0.9 + 2.0 * r * gd[i];
            assert!((v.double_value(&[i as i64]) - v_expected).abs() < 1e-12);
            let w_expected = [3.0, 4.0][i] - v_expected;
            assert!((w.double_value(&[i as i64]) - w_expected).abs() < 1e-12);
        }
    }

    /// Batch-norm and bias parameters: no weight decay, no trust ratio — plain momentum SGD.
    #[test]
    fn unregularized_parameters_skip_decay_and_adaptation() {
        let lars = Lars {
            momentum: 0.9,
            weight_decay: 0.5,
            trust_coefficient: 0.001,
        };
        let mut w = vector(&[1.0, -2.0]);
        let g = vector(&[0.5, 0.25]);
        let mut v = Tensor::zeros([2], (Kind::Double, Device::Cpu));
        lars.update(&mut w, &g, &mut v, 0.1, false);
        assert!((w.double_value(&[0]) - (1.0 - 0.05)).abs() < 1e-12);
        assert!((w.double_value(&[1]) - (-2.0 - 0.025)).abs() < 1e-12);
    }

    #[test]
    fn zero_weights_use_ratio_one() {
        let lars = Lars {
            momentum: 0.0,
            weight_decay: 0.0,
            trust_coefficient: 0.001,
        };
        let mut w = vector(&[0.0, 0.0]);
        let g = vector(&[1.0, 1.0]);
        let mut v = vector(&[0.0, 0.0]);
        lars.update(&mut w, &g, &mut v, 0.5, true);
        assert!((w.double_value(&[0]) + 0.5).abs() < 1e-12);
    }
}
