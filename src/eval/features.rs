//! Representations h of a whole split under the evaluation transform (encoder in eval mode),
//! and an on-disk cache of them keyed by checkpoint content and dataset, so that repeated
//! evaluations of the same checkpoint skip the encoder.
use crate::data::loader::{eval_batches, EvalTransform};
use crate::data::{DataSpec, Dataset};
use crate::eval::linear::Split;
use crate::model::resnet::ResNet;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

const BATCH: usize = 256;

/// h of every readable image of `set`, in order; with `flip`, followed by h of every mirrored
/// image (labels repeated), the optional flip augmentation of linear evaluation.
///
/// # Shapes
/// -> features `[N, D]` (or `[2N, D]`) f32 and labels `[N]` (or `[2N]`) i64, on `device`.
pub fn representations(
    encoder: &ResNet,
    set: &dyn Dataset,
    transform: EvalTransform,
    device: Device,
    flip: bool,
) -> Split {
    tch::no_grad(|| {
        let mut feats = Vec::new();
        let mut labels = Vec::new();
        for batch in eval_batches(set, transform, BATCH, device) {
            let (x, y) = (batch.images, batch.labels);
            feats.push(encoder.forward_t(&x, false).to_kind(Kind::Float));
            if flip {
                feats.push(encoder.forward_t(&x.flip([3]), false).to_kind(Kind::Float));
                labels.push(y.shallow_clone());
            }
            labels.push(y);
        }
        Split {
            features: Tensor::cat(&feats, 0),
            labels: Tensor::cat(&labels, 0),
        }
    })
}

/// 64-bit FNV-1a: a stable content hash for cache keys (std's hasher may change between builds).
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The cache file for (checkpoint content, dataset, image size, flip): beside the checkpoint,
/// in `feature-cache/`.
pub fn cache_path(
    checkpoint: &Path,
    spec: &DataSpec,
    image_size: usize,
    flip: bool,
) -> Result<PathBuf> {
    let bytes = std::fs::read(checkpoint)
        .with_context(|| format!("reading checkpoint {}", checkpoint.display()))?;
    let key = fnv1a(
        fnv1a(0xcbf2_9ce4_8422_2325, &bytes),
        format!("{spec}|{image_size}|{flip}").as_bytes(),
    );
    let dir = checkpoint
        .parent()
        .unwrap_or(Path::new("."))
        .join("feature-cache");
    Ok(dir.join(format!("{key:016x}.pt")))
}

/// Loads cached (train, test) features, if the cache file exists and is readable.
pub fn load_cached(path: &Path, device: Device) -> Option<(Split, Split)> {
    let named = Tensor::load_multi_with_device(path, device).ok()?;
    let get = |name: &str| {
        named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
    };
    let split = |prefix: &str| {
        Some(Split {
            features: get(&format!("{prefix}.features"))?,
            labels: get(&format!("{prefix}.labels"))?,
        })
    };
    Some((split("train")?, split("test")?))
}

/// Writes (train, test) features to the cache (atomically: a temporary file renamed).
pub fn store_cached(path: &Path, train: &Split, test: &Split) -> Result<()> {
    let named = [
        ("train.features", &train.features),
        ("train.labels", &train.labels),
        ("test.features", &test.features),
        ("test.labels", &test.labels),
    ]
    .map(|(name, t)| (name.to_string(), t.shallow_clone()));
    crate::checkpoint::write_tensors_atomically(&named, path)
        .with_context(|| format!("writing feature cache {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        assert_eq!(fnv1a(OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn cache_round_trips_and_keys_differ() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let ckpt = dir.path().join("last.pt");
        std::fs::write(&ckpt, b"weights")?;
        let a = cache_path(&ckpt, &DataSpec::Synthetic, 32, false)?;
        assert_ne!(a, cache_path(&ckpt, &DataSpec::Synthetic, 32, true)?);
        assert_ne!(a, cache_path(&ckpt, &DataSpec::Synthetic, 64, false)?);
        let split = || Split {
            features: Tensor::from_slice(&[1.0f32, 2.0]).view([2, 1]),
            labels: Tensor::from_slice(&[0i64, 1]),
        };
        store_cached(&a, &split(), &split())?;
        let (train, _test) = load_cached(&a, Device::Cpu).expect("cached");
        assert!(train.features.equal(&split().features));
        Ok(())
    }
}
