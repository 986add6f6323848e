//! Dynamic loss scaling for fp16 training (Micikevicius et al. 2018, "Mixed Precision
//! Training", <https://arxiv.org/abs/1710.03740>, Section 3.2), as PyTorch's
//! `torch.amp.GradScaler` does it, with the same defaults.
//!
//! fp16 represents nothing below about 6e-8, so small gradients of an fp16 backward pass
//! flush to zero. The loss is multiplied by a scale S before the backward pass, which shifts
//! every gradient up by S; before the update the gradients are divided by S again and checked:
//!
//! ```text
//! g ← g / S; if any g is inf or NaN: skip the update, S ← S·0.5
//!            else: update; after 2000 updates in a row without overflow, S ← S·2
//! ```
//!
//! starting from S = 2^16. Unscaling, the overflow check and the new scale are computed on the
//! device; whether to skip is one read of a scalar per step (a sync point, as in PyTorch).
use tch::{Device, Kind, Tensor};

/// S at the start (PyTorch's `init_scale`).
const INITIAL_SCALE: f64 = 65536.0;
/// S grows by this after `GROWTH_INTERVAL` overflow-free steps.
const GROWTH_FACTOR: f64 = 2.0;
/// S shrinks by this on an overflow.
const BACKOFF_FACTOR: f64 = 0.5;
/// Overflow-free steps before S grows.
const GROWTH_INTERVAL: i64 = 2000;

/// The loss scale S and its bookkeeping, all on the training device.
#[derive(Debug)]
pub struct LossScaler {
    /// S, f32 `[1]`.
    scale: Tensor,
    /// Overflow-free steps since S last changed, i32 `[1]`.
    growth_tracker: Tensor,
    /// 1.0 when the last unscaled gradients held an inf or NaN, f32 `[1]`.
    found_inf: Tensor,
}

impl LossScaler {
    /// A scaler at S = 2^16 on `device`.
    pub fn new(device: Device) -> LossScaler {
        LossScaler {
            scale: Tensor::full([1], INITIAL_SCALE, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([1], (Kind::Int, device)),
            found_inf: Tensor::zeros([1], (Kind::Float, device)),
        }
    }

    /// S·loss, the tensor to call `backward` on.
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        loss * &self.scale
    }

    /// Divides `grads` by S in place and reports whether they are all finite (sync point).
    pub fn unscale(&mut self, grads: &mut [Tensor]) -> bool {
        tch::no_grad(|| {
            let inv_scale = self.scale.reciprocal();
            for grad in grads.iter_mut() {
                grad.internal_amp_non_finite_check_and_unscale(&mut self.found_inf, &inv_scale);
            }
        });
        self.found_inf.double_value(&[0]) == 0.0
    }

    /// Adjusts S after a step from what the last [`LossScaler::unscale`] found.
    pub fn update(&mut self) {
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            &self.found_inf,
            GROWTH_FACTOR,
            BACKOFF_FACTOR,
            GROWTH_INTERVAL,
        );
        let _ = self.found_inf.zero_();
    }

    /// The current S (sync point).
    pub fn current(&self) -> f64 {
        self.scale.double_value(&[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unscaling divides by S; an inf halves S, and GROWTH_INTERVAL clean steps double it.
    #[test]
    fn scale_backs_off_on_overflow_and_grows_after_clean_steps() {
        let mut scaler = LossScaler::new(Device::Cpu);
        let loss = Tensor::from_slice(&[3.0f32]);
        assert_eq!(scaler.scale(&loss).double_value(&[0]), 3.0 * INITIAL_SCALE);

        let mut grads = [Tensor::from_slice(&[
            INITIAL_SCALE as f32,
            2.0 * INITIAL_SCALE as f32,
        ])];
        assert!(scaler.unscale(&mut grads));
        assert!(grads[0].equal(&Tensor::from_slice(&[1.0f32, 2.0])));
        scaler.update();
        assert_eq!(scaler.current(), INITIAL_SCALE);

        let mut overflowed = [Tensor::from_slice(&[1.0f32, f32::INFINITY])];
        assert!(!scaler.unscale(&mut overflowed));
        scaler.update();
        assert_eq!(scaler.current(), INITIAL_SCALE * BACKOFF_FACTOR);

        for _ in 0..GROWTH_INTERVAL {
            assert!(scaler.unscale(&mut [Tensor::ones([2], (Kind::Float, Device::Cpu))]));
            scaler.update();
        }
        assert_eq!(scaler.current(), INITIAL_SCALE);
    }
}
