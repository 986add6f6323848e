//! One SimCLR training step (Chen et al. 2020, Algorithm 1, one iteration of its loop), shared by
//! `simclr train` and `simclr bench step` so that the benchmark measures exactly what trains:
//!
//! 1. forward: both views in one pass, so batch norm sees all 2N views (as the official code
//!    does), under autocast in the run's precision, the input and the convolution weights in
//!    channels-last memory order on CUDA;
//! 2. loss: the similarity matrix and the contrastive loss over the 2N projections in f32,
//!    outside autocast;
//! 3. backward (of S·loss for fp16, [`LossScaler`]);
//! 4. update: the optimiser's step (skipped, for fp16, when the gradients overflowed).
//!
//! The caller zeroes gradients before 3 and may act on them between 3 and 4 (e.g. all-reduce).
//! Nothing here reads back from the device except fp16's overflow check.
//!
//! Precision: bf16/fp16 autocast runs convolutions and matmuls in the low-precision dtype and
//! keeps reductions (batch-norm statistics) in f32; with fp32 no autocast region is entered, so
//! the default path is exactly the ops of a plain forward.
//!
//! # Shapes
//! views 2 x `[N, 3, S, S]` f32 -> z `[2N, proj_dim]` -> loss (scalar, f32).
use crate::config::Precision;
use crate::model::SimClr;
use crate::objective::{Contrastive, Objective};
use crate::optim::loss_scale::LossScaler;
use crate::optim::Optimizer;
use crate::shim;
use anyhow::Result;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Puts the 4-D (convolution) parameters of `vs` in channels-last memory order when `vs` lives
/// on CUDA (cuDNN's NHWC kernels, tensor cores), and switches on cuDNN's benchmark mode (the
/// input shape never changes, so the fastest algorithm found on the first step is reused).
/// Does nothing on the CPU. Call it before building the optimiser, whose buffers copy the
/// parameters' layout.
pub fn prepare_for_device(vs: &VarStore) -> Result<()> {
    if !vs.device().is_cuda() {
        return Ok(());
    }
    tch::Cuda::cudnn_set_benchmark(true);
    for (_, mut param) in vs.variables().into_iter().filter(|(_, t)| t.dim() == 4) {
        let nhwc = shim::channels_last(&param)?;
        // `set_data` swaps the storage under the same variable: every handle (the model's
        // layers, the var store) sees the new layout.
        tch::no_grad(|| param.set_data(&nhwc));
    }
    Ok(())
}

/// The network, objective and precision of a training step, with fp16's loss scale.
#[derive(Debug)]
pub struct TrainStep<'a> {
    model: &'a SimClr,
    objective: &'a Objective,
    device: Device,
    autocast: Option<tch::Kind>,
    scaler: Option<LossScaler>,
}

impl<'a> TrainStep<'a> {
    /// The step of `model` and `objective` on `device` in `precision`.
    pub fn new(
        model: &'a SimClr,
        objective: &'a Objective,
        device: Device,
        precision: Precision,
    ) -> TrainStep<'a> {
        TrainStep {
            model,
            objective,
            device,
            autocast: precision.autocast_dtype(),
            scaler: (precision == Precision::Fp16).then(|| LossScaler::new(device)),
        }
    }

    /// The projections of both views, in the autocast dtype (f32 without autocast).
    ///
    /// # Shapes
    /// 2 x `[N, 3, S, S]` -> `[2N, proj_dim]`, rows `k` and `k + N` from image k.
    pub fn project(&self, views: &[Tensor; 2]) -> Result<Tensor> {
        let mut x = Tensor::cat(views, 0); // [2N, 3, S, S]
        if self.device.is_cuda() {
            x = shim::channels_last(&x)?;
        }
        let (_h, z) = shim::with_autocast(self.device, self.autocast, || {
            self.model.forward_t(&x, true)
        })?;
        Ok(z)
    }

    /// Forward pass and contrastive loss (f32) of one batch.
    pub fn forward(&self, views: &[Tensor; 2]) -> Result<Contrastive> {
        let z = self.project(views)?.chunk(2, 0); // 2 x [N, proj_dim]
        self.objective.forward(&z[0], &z[1])
    }

    /// Backward pass of `loss` (scaled by S for fp16), accumulating into the gradients.
    pub fn backward(&self, loss: &Tensor) {
        match &self.scaler {
            Some(scaler) => scaler.scale(loss).backward(),
            None => loss.backward(),
        }
    }

    /// The optimiser's update with learning rate `lr`; for fp16, first unscales the gradients,
    /// and skips the update when they overflowed (sync point), then adjusts S.
    pub fn update(&mut self, optimizer: &mut Optimizer, lr: f64) {
        let Some(scaler) = &mut self.scaler else {
            optimizer.step(lr);
            return;
        };
        if scaler.unscale(&mut optimizer.gradients()) {
            optimizer.step(lr);
        }
        scaler.update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tch::nn::ModuleT;
    use tch::Kind;

    /// bf16 autocast on the CPU runs the encoder's convolutions in bf16 (h, made of nothing but
    /// convolutions, batch norm, ReLU and pooling, comes out in bf16, and so does z), while the
    /// similarity matrix and the loss stay f32.
    #[test]
    fn bf16_runs_the_network_in_bf16_and_the_loss_in_f32() -> Result<()> {
        let cfg = Config::default();
        let vs = VarStore::new(Device::Cpu);
        let model = SimClr::new(&vs.root(), &cfg.model, 16);
        let objective = Objective::new(&vs.root(), &cfg.objective, cfg.model.proj_dim);
        let views = [0, 1].map(|_| Tensor::rand([4, 3, 16, 16], (Kind::Float, Device::Cpu)));
        let x = Tensor::cat(&views, 0);
        let autocast = Precision::Bf16.autocast_dtype();
        let h = shim::with_autocast(Device::Cpu, autocast, || model.encoder.forward_t(&x, true))?;
        assert_eq!(h.kind(), Kind::BFloat16);
        let step = TrainStep::new(&model, &objective, Device::Cpu, Precision::Bf16);
        assert_eq!(step.project(&views)?.kind(), Kind::BFloat16);
        let out = step.forward(&views)?;
        assert_eq!(
            (out.loss.kind(), out.scores.kind()),
            (Kind::Float, Kind::Float)
        );
        // Outside the step, autocast is off again.
        assert_eq!(model.encoder.forward_t(&x, true).kind(), Kind::Float);
        Ok(())
    }
}
