//! Datasets and the two-view loader.
//!
//! A dataset is a set of decoded u8 RGB images (HWC, all the same size) with integer labels.
//! [`load`] turns a [`DataSpec`] (the `--data` string, e.g. `synthetic`) into train and test
//! [`ImageSet`]s; [`loader`] turns a set into batches of two independently augmented views
//! for contrastive training ([`augment`], SimCLR Appendix A) and into deterministic
//! evaluation batches for the kNN monitor.
//!
//! Adding a real dataset means one new [`DataSpec`] variant, one file that decodes it into an
//! [`ImageSet`] via [`ImageSet::new`], and one arm in [`load`].
//!
//! All randomness in this module comes from `keyed_rng`: every random stream is a pure
//! function of a seed and the indices that identify it (split, epoch, sample, view), so
//! results do not depend on thread count, batch composition or iteration order.

pub mod augment;
pub mod loader;
pub mod preview;
pub mod resize;
pub mod synthetic;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Result};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

/// A labelled set of equally sized u8 RGB images, stored contiguously so a sample is a slice.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// `len() * height * width * 3` bytes: image-major, then HWC, RGB.
    pub images: Vec<u8>,
    /// One class index in `0..num_classes` per image.
    pub labels: Vec<i64>,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Number of classes (used only for evaluation; SimCLR training ignores labels).
    pub num_classes: usize,
}

impl ImageSet {
    /// Builds a set, checking that buffer sizes and labels agree so loaders fail at load time,
    /// not deep inside a training step.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<i64>,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Self> {
        ensure!(
            height > 0 && width > 0,
            "image set: image size {height}x{width} must be positive"
        );
        let expected = labels.len() * height * width * 3;
        ensure!(
            images.len() == expected,
            "image set: {} bytes of pixels for {} labels of {height}x{width}x3 (expected {expected})",
            images.len(),
            labels.len()
        );
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= num_classes) {
            bail!("image set: label {bad} outside 0..{num_classes}");
        }
        Ok(Self {
            images,
            labels,
            height,
            width,
            num_classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps only the first `max` images (all when `None` or when there are fewer), for quick
    /// runs; classes stay balanced on the synthetic set, whose labels cycle through the classes.
    pub fn truncated(mut self, max: Option<usize>) -> Self {
        if let Some(n) = max.filter(|&n| n < self.len()) {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_bytes());
        }
        self
    }

    /// Bytes of one image (`height * width * 3`).
    pub fn image_bytes(&self) -> usize {
        self.height * self.width * 3
    }

    /// The HWC RGB bytes of image `i` (panics if `i >= len()`, like slice indexing).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.images[i * n..(i + 1) * n]
    }
}

/// Which dataset to train on; parsed from and printed as the `--data` string, and stored in
/// configs and checkpoints in that same string form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataSpec {
    /// The built-in procedural dataset ([`synthetic`]): needs no download.
    Synthetic,
}

/// The accepted forms of a [`DataSpec`], for error messages and `--help`.
pub const DATA_SPEC_FORMS: &str =
    "'synthetic', 'cifar10:DIR', 'cifar100:DIR', 'stl10:DIR', 'folder:DIR'";

impl FromStr for DataSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "synthetic" {
            return Ok(Self::Synthetic);
        }
        match s.split_once(':') {
            Some(("cifar10" | "cifar100" | "stl10" | "folder", dir)) if !dir.is_empty() => {
                bail!("dataset '{s}' is not supported yet (only 'synthetic')")
            }
            _ => bail!("unknown dataset '{s}': expected one of {DATA_SPEC_FORMS}"),
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Synthetic => f.write_str("synthetic"),
        }
    }
}

impl TryFrom<String> for DataSpec {
    type Error = anyhow::Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DataSpec> for String {
    fn from(spec: DataSpec) -> Self {
        spec.to_string()
    }
}

/// A train split (pre-training and the kNN feature bank) and a held-out test split.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Images SimCLR trains on (labels unused there).
    pub train: ImageSet,
    /// Held-out images, used only for evaluation.
    pub test: ImageSet,
}

/// Loads (or generates) the train and test splits named by `spec`; `seed` only matters for
/// generated data.
pub fn load(spec: &DataSpec, seed: u64) -> Result<Splits> {
    match spec {
        DataSpec::Synthetic => synthetic::generate(&synthetic::SyntheticConfig::default(), seed),
    }
}

/// Domain tags that keep the random streams of different uses of [`keyed_rng`] apart.
pub(crate) mod domain {
    /// Synthetic image generation: keys `[seed, split, index]`.
    pub const SYNTHETIC: u64 = 0x5359_4e54;
    /// Per-epoch shuffle: keys `[seed, epoch]`.
    pub const SHUFFLE: u64 = 0x5348_5546;
    /// Per-view augmentation: keys `[seed, epoch, index, view]`.
    pub const AUGMENT: u64 = 0x4155_474d;
}

/// A generator that depends only on `domain` and `keys`, by chaining splitmix64 over them, so
/// each sample's randomness is reproducible in isolation (any thread, any batch, any order).
pub(crate) fn keyed_rng(domain: u64, keys: &[u64]) -> Pcg64Mcg {
    let mut h = splitmix64(domain);
    for &k in keys {
        h = splitmix64(h ^ k);
    }
    let hi = splitmix64(h ^ 0x9e37_79b9_7f4a_7c15);
    Pcg64Mcg::new(((hi as u128) << 64) | h as u128)
}

/// Steele, Lea and Flood's splitmix64 finaliser: a bijective, well-mixing 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn spec_parses_and_round_trips() {
        let spec: DataSpec = "synthetic".parse().unwrap();
        assert_eq!(spec, DataSpec::Synthetic);
        assert_eq!(spec.to_string().parse::<DataSpec>().unwrap(), spec);
    }

    #[test]
    fn spec_serde_uses_the_string_form() {
        let json = serde_json::to_string(&DataSpec::Synthetic).unwrap();
        assert_eq!(json, "\"synthetic\"");
        assert_eq!(
            serde_json::from_str::<DataSpec>(&json).unwrap(),
            DataSpec::Synthetic
        );
        let err = serde_json::from_str::<DataSpec>("\"mnist\"").unwrap_err();
        assert!(err.to_string().contains("unknown dataset 'mnist'"), "{err}");
    }

    #[test]
    fn real_datasets_are_named_as_not_yet_supported() {
        for s in ["cifar10:/d", "cifar100:data/c", "stl10:x", "folder:imgs"] {
            let err = s.parse::<DataSpec>().unwrap_err().to_string();
            assert_eq!(
                err,
                format!("dataset '{s}' is not supported yet (only 'synthetic')")
            );
        }
    }

    #[test]
    fn unknown_specs_list_the_valid_forms() {
        for s in [
            "",
            "mnist",
            "cifar10",
            "cifar10:",
            "synthetic:3",
            "Synthetic",
        ] {
            let err = s.parse::<DataSpec>().unwrap_err().to_string();
            assert!(err.contains(&format!("'{s}'")), "{err}");
            assert!(
                err.contains("'cifar10:DIR'") && err.contains("'synthetic'"),
                "{err}"
            );
        }
    }

    #[test]
    fn image_set_checks_sizes_and_labels() {
        assert!(ImageSet::new(vec![0; 2 * 12], vec![0, 1], 2, 2, 2).is_ok());
        let err = ImageSet::new(vec![0; 23], vec![0, 1], 2, 2, 2).unwrap_err();
        assert!(err.to_string().contains("23 bytes"), "{err}");
        let err = ImageSet::new(vec![0; 24], vec![0, 2], 2, 2, 2).unwrap_err();
        assert!(err.to_string().contains("label 2"), "{err}");
        let set = ImageSet::new((0..24).collect(), vec![0, 1], 2, 2, 2).unwrap();
        assert_eq!(set.image(1), &(12..24).collect::<Vec<u8>>()[..]);
        assert_eq!(set.clone().truncated(None), set);
        assert_eq!(set.clone().truncated(Some(5)), set);
        let one = set.truncated(Some(1));
        assert_eq!(
            (one.len(), one.images.len(), one.image(0)),
            (1, 12, &[0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11][..])
        );
    }

    #[test]
    fn keyed_rng_depends_on_every_key_and_the_domain() {
        let draw = |d, k: &[u64]| keyed_rng(d, k).random::<u64>();
        let base = draw(domain::AUGMENT, &[1, 2, 3, 0]);
        assert_eq!(base, draw(domain::AUGMENT, &[1, 2, 3, 0]));
        assert_ne!(base, draw(domain::AUGMENT, &[1, 2, 3, 1]));
        assert_ne!(base, draw(domain::AUGMENT, &[1, 3, 2, 0]));
        assert_ne!(base, draw(domain::SHUFFLE, &[1, 2, 3, 0]));
    }
}
