//! Export of the trained encoder f as TorchScript (`encoder.pt`), for `torch.jit.load` in
//! Python or C++ and `tch::CModule` in Rust.
//!
//! Input contract: a float32 tensor `[B, 3, S, S]`, RGB, values in [0, 1], no mean/std
//! normalisation (SimCLR trains on raw [0, 1] pixels), S = the training image size (other
//! sizes work with the ImageNet stem; the CIFAR stem is meant for <= 32 px). Output: the
//! representation h `[B, D]` (before the projection head), from the network in eval mode
//! (batch-norm running statistics), for any batch size. Weights are embedded as constants.
use crate::model::resnet::ResNet;
use anyhow::{Context, Result};
use std::path::Path;
use tch::nn::{ModuleT, VarStore};
use tch::{CModule, Device, Kind, Tensor};

/// Traces `encoder` in eval mode and saves it as TorchScript at `path`.
///
/// The var store is frozen while tracing and saving (weights that require grad cannot become
/// constants) and unfrozen afterwards.
pub fn torchscript(
    vs: &mut VarStore,
    encoder: &ResNet,
    image_size: usize,
    path: &Path,
) -> Result<()> {
    vs.freeze();
    let example = Tensor::rand(
        [2, 3, image_size as i64, image_size as i64],
        (Kind::Float, vs.device()),
    );
    let saved = tch::no_grad(|| -> Result<()> {
        let mut module =
            CModule::create_by_tracing("SimClrEncoder", "forward", &[example], &mut |inputs| {
                vec![encoder.forward_t(&inputs[0], false)]
            })
            .context("tracing the encoder")?;
        module.to(Device::Cpu, Kind::Float, false);
        module
            .save(path)
            .with_context(|| format!("writing TorchScript encoder {}", path.display()))
    });
    // Only now: the module's constants are the var store's tensors themselves, and a
    // constant that requires grad cannot be serialised.
    vs.unfreeze();
    saved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, SimClr};

    /// The traced module reproduces the Rust encoder for batch sizes other than the traced one.
    #[test]
    fn traced_encoder_matches_rust_for_any_batch() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("encoder.pt");
        let mut vs = VarStore::new(Device::Cpu);
        let model = SimClr::new(
            &vs.root(),
            &ModelConfig {
                width: 0.125,
                ..Default::default()
            },
            16,
        );
        torchscript(&mut vs, &model.encoder, 16, &path)?;
        let loaded = CModule::load(&path)?;
        for batch in [1, 7] {
            let x = Tensor::rand([batch, 3, 16, 16], (Kind::Float, Device::Cpu));
            let ours = tch::no_grad(|| model.encoder.forward_t(&x, false));
            let theirs = loaded.forward_ts(&[&x])?;
            assert_eq!(theirs.size(), ours.size());
            assert!(ours.allclose(&theirs, 1e-5, 1e-5, false), "batch {batch}");
        }
        Ok(())
    }
}
