//! Export of the trained encoder f: as TorchScript (`encoder.pt`), for `torch.jit.load` in
//! Python or C++ and `tch::CModule` in Rust; and as safetensors weights under torchvision's
//! names, for `torchvision.models.resnetXX().load_state_dict(..., strict=False)` (only `fc.*`
//! and `num_batches_tracked` are missing). A CIFAR-stem encoder's `conv1.weight` is 3x3, so it
//! loads only into a torchvision ResNet whose `conv1` was replaced by a 3x3 stride-1 conv and
//! whose `maxpool` by `nn.Identity()`.
//!
//! TorchScript contract:
//! Input contract: a float32 tensor `[B, 3, S, S]`, RGB, values in [0, 1], no mean/std
//! normalisation (SimCLR trains on raw [0, 1] pixels), S = the training image size (other
//! sizes work with the ImageNet stem; the CIFAR stem is meant for <= 32 px). Output: the
//! representation h `[B, D]` (before the projection head), or, with `head_layer` K > 0, the
//! output of the head's first K layers (SimCLRv2 fine-tunes from the middle layer of its
//! 3-layer head: K = 1), from the network in eval mode (batch-norm running statistics), for
//! any batch size. Weights are embedded as constants; the head's later layers and the
//! objective's learned similarity are not part of the module.
use crate::model::SimClr;
use anyhow::{Context, Result};
use std::path::Path;
use tch::nn::VarStore;
use tch::{CModule, Device, Kind, Tensor};

/// Traces the network up to `head_layer` (0: the encoder alone) in eval mode and saves it as
/// TorchScript at `path`.
///
/// The var store is frozen while tracing and saving (weights that require grad cannot become
/// constants) and unfrozen afterwards.
pub fn torchscript(
    vs: &mut VarStore,
    model: &SimClr,
    head_layer: usize,
    image_size: usize,
    path: &Path,
) -> Result<()> {
    model.check_head_layer(head_layer)?;
    vs.freeze();
    let example = Tensor::rand(
        [2, 3, image_size as i64, image_size as i64],
        (Kind::Float, vs.device()),
    );
    let saved = tch::no_grad(|| -> Result<()> {
        let mut module =
            CModule::create_by_tracing("SimClrEncoder", "forward", &[example], &mut |inputs| {
                vec![model.representation(&inputs[0], head_layer, false)]
            })
            .context("tracing the encoder")?;
        module.to(Device::Cpu, Kind::Float, false);
        // libtorch's file writer aborts the process when a write fails (a full disk), so the
        // space is checked first; the file is written beside `path` and renamed over it.
        let weights: usize = vs.variables().values().map(|t| t.numel() * 4).sum();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        ensure_free_space(dir, weights as u64 + (8 << 20))?;
        let tmp = path.with_extension("pt.tmp");
        module
            .save(&tmp)
            .with_context(|| format!("writing TorchScript encoder {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    // Only now: the module's constants are the var store's tensors themselves, and a
    // constant that requires grad cannot be serialised.
    vs.unfreeze();
    saved
}

/// Fails, naming `dir`, when its file system has less than `needed` bytes free for this user
/// (where the free space cannot be read, it is not checked).
fn ensure_free_space(dir: &Path, needed: u64) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_dir) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return Ok(());
    };
    // SAFETY: statvfs only writes the struct it is given; `c_dir` is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_dir.as_ptr(), &mut stat) } != 0 {
        return Ok(());
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    anyhow::ensure!(
        free >= needed,
        "not enough space in {} to export the encoder: about {} MiB needed, {} MiB free",
        dir.display(),
        needed >> 20,
        free >> 20
    );
    Ok(())
}

/// Writes the encoder's weights and batch-norm statistics, named as torchvision names them
/// (the var store's `encoder.` prefix removed), as float32 safetensors at `path`.
pub fn safetensors(vs: &VarStore, path: &Path) -> Result<()> {
    let prefix = format!("{}.", SimClr::ENCODER);
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter_map(|(name, t)| {
            name.strip_prefix(&prefix).map(|n| {
                (
                    n.to_string(),
                    t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous(),
                )
            })
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, path)
        .with_context(|| format!("writing safetensors {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_checked_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_free_space(dir.path(), 1).is_ok());
        let err = ensure_free_space(dir.path(), u64::MAX / 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not enough space") && err.contains("MiB free"),
            "{err}"
        );
    }
    use crate::model::{ModelConfig, SimClr};

    /// The traced module reproduces the Rust forward, of the encoder (K = 0) and up to each
    /// head layer K (SimCLRv1 and SimCLRv2 heads), for batch sizes other than the traced one.
    #[test]
    fn traced_module_matches_rust_for_any_batch_and_head_layer() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("encoder.pt");
        for (head_layers, head_bn, head_layer) in [
            (2, false, 0),
            (2, false, 1),
            (2, false, 2),
            (3, true, 1),
            (3, true, 3),
        ] {
            let mut vs = VarStore::new(Device::Cpu);
            let cfg = ModelConfig {
                width: 0.125,
                head_layers,
                head_bn,
                ..Default::default()
            };
            let model = SimClr::new(&vs.root(), &cfg, 16);
            // Move the batch-norm running statistics away from their initial values.
            let warm = Tensor::rand([8, 3, 16, 16], (Kind::Float, Device::Cpu));
            let _ = tch::no_grad(|| model.forward_t(&warm, true));
            torchscript(&mut vs, &model, head_layer, 16, &path)?;
            let loaded = CModule::load(&path)?;
            for batch in [1, 7] {
                let x = Tensor::rand([batch, 3, 16, 16], (Kind::Float, Device::Cpu));
                let ours = tch::no_grad(|| model.representation(&x, head_layer, false));
                let theirs = loaded.forward_ts(&[&x])?;
                assert_eq!(theirs.size(), ours.size());
                assert!(
                    ours.allclose(&theirs, 1e-5, 1e-5, false),
                    "{head_layers} layers, K = {head_layer}, batch {batch}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn a_head_layer_beyond_the_head_is_refused() {
        let mut vs = VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            width: 0.125,
            ..Default::default()
        };
        let model = SimClr::new(&vs.root(), &cfg, 16);
        let path = std::env::temp_dir().join("never-written.pt");
        let err = torchscript(&mut vs, &model, 3, 16, &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("head layer 3"), "{err}");
        assert!(!path.exists());
    }
}
