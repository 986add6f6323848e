//! Datasets and the two-view loader.
//!
//! A [`Dataset`] is an indexed collection of labelled u8 RGB images (HWC, any size) that
//! loader workers read concurrently. [`load`] turns a [`DataSpec`] (the `--data` string, e.g.
//! `synthetic` or `cifar10:DIR`) into [`Splits`]; [`loader`] turns a dataset into batches of
//! two independently augmented views for contrastive training ([`augment`], SimCLR Appendix A)
//! and into deterministic evaluation batches for the kNN monitor and the evaluations.
//!
//! | spec           | reader        | storage                                   |
//! |----------------|---------------|-------------------------------------------|
//! | `synthetic`    | [`synthetic`] | generated into memory ([`ImageSet`])      |
//! | `cifar10:DIR`  | [`cifar`]     | official binary, decoded into memory      |
//! | `cifar100:DIR` | [`cifar`]     | official binary, decoded into memory      |
//! | `stl10:DIR`    | [`stl10`]     | official binary, memory-mapped            |
//! | `folder:DIR`   | [`folder`]    | JPEG/PNG files, decoded when read         |
//!
//! Adding a dataset means one new [`DataSpec`] variant, one file implementing [`Dataset`] for
//! it (or producing an [`ImageSet`]), and one arm in [`load`].
//!
//! All randomness in this module comes from `keyed_rng`: every random stream is a pure
//! function of a seed and the indices that identify it (split, epoch, sample, view), so
//! results do not depend on thread count, batch composition or iteration order.

pub mod augment;
pub mod cifar;
pub mod decode;
pub mod folder;
mod image_set;
pub mod loader;
pub mod preview;
pub mod resize;
pub mod stl10;
mod subset;
pub mod synthetic;

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

pub use image_set::ImageSet;
pub use subset::{Concat, Subset};

/// One image as a dataset hands it out: u8 RGB, HWC, borrowed when the dataset holds it
/// decoded in memory, owned when it was decoded or rearranged for this read.
#[derive(Debug, Clone)]
pub struct Image<'a> {
    /// `height * width * 3` bytes.
    pub pixels: Cow<'a, [u8]>,
    pub height: usize,
    pub width: usize,
}

/// An indexed set of labelled images, read concurrently by loader workers.
pub trait Dataset: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;

    /// The class of image `i` in `0..num_classes()`, or -1 for an unlabeled image.
    fn label(&self, i: usize) -> i64;

    /// Number of classes (used only for evaluation; SimCLR training ignores labels).
    fn num_classes(&self) -> usize;

    /// Image `i` (`i < len()`); an error (naming the file) when it cannot be read or decoded,
    /// which the loader counts and skips.
    fn image(&self, i: usize) -> Result<Image<'_>>;

    /// True when the set holds no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every label, in order.
    fn labels(&self) -> Vec<i64> {
        (0..self.len()).map(|i| self.label(i)).collect()
    }
}

/// Which dataset to train on; parsed from and printed as the `--data` string, and stored in
/// configs and checkpoints in that same string form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataSpec {
    /// The built-in procedural dataset ([`synthetic`]): needs no download.
    Synthetic,
    /// CIFAR-10, official binary version, in this directory.
    Cifar10(PathBuf),
    /// CIFAR-100 (fine labels), official binary version, in this directory.
    Cifar100(PathBuf),
    /// STL-10, official binary version, in this directory.
    Stl10(PathBuf),
    /// An ImageFolder tree with `train/` and `val/` in this directory.
    Folder(PathBuf),
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
        let (kind, dir) = match s.split_once(':') {
            Some((kind, dir)) if !dir.is_empty() => (kind, PathBuf::from(dir)),
            _ => bail!("unknown dataset '{s}': expected one of {DATA_SPEC_FORMS}"),
        };
        Ok(match kind {
            "cifar10" => Self::Cifar10(dir),
            "cifar100" => Self::Cifar100(dir),
            "stl10" => Self::Stl10(dir),
            "folder" => Self::Folder(dir),
            _ => bail!("unknown dataset '{s}': expected one of {DATA_SPEC_FORMS}"),
        })
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Synthetic => f.write_str("synthetic"),
            Self::Cifar10(dir) => write!(f, "cifar10:{}", dir.display()),
            Self::Cifar100(dir) => write!(f, "cifar100:{}", dir.display()),
            Self::Stl10(dir) => write!(f, "stl10:{}", dir.display()),
            Self::Folder(dir) => write!(f, "folder:{}", dir.display()),
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

impl DataSpec {
    /// The share of the shorter side the evaluation transform keeps (centre crop, then resize):
    /// the official 0.875 for photographs; none for the CIFAR-size sets, whose objects fill the
    /// 32 px frame (as lightly and solo-learn evaluate CIFAR, and the synthetic shapes would
    /// otherwise be cut).
    pub fn eval_crop_fraction(&self) -> f64 {
        match self {
            Self::Synthetic | Self::Cifar10(_) | Self::Cifar100(_) => 1.0,
            Self::Stl10(_) | Self::Folder(_) => 0.875,
        }
    }
}

/// A labelled train split (the kNN feature bank, linear evaluation and fine-tuning), a
/// held-out test split, and the unlabeled images some datasets add for pre-training.
#[derive(Clone)]
pub struct Splits {
    /// Labelled training images.
    pub train: Arc<dyn Dataset>,
    /// Held-out images, used only for evaluation.
    pub test: Arc<dyn Dataset>,
    /// Extra unlabeled images (STL-10's 100,000), pre-training only.
    pub unlabeled: Option<Arc<dyn Dataset>>,
}

impl Splits {
    /// What SimCLR pre-trains on: the train split followed by the unlabeled images, if any.
    pub fn pretraining(&self) -> Result<Arc<dyn Dataset>> {
        Ok(match &self.unlabeled {
            Some(extra) => Arc::new(Concat::new(vec![self.train.clone(), extra.clone()])?),
            None => self.train.clone(),
        })
    }
}

/// Loads (or generates) the splits named by `spec`, refusing a malformed dataset with one line
/// naming the path and what is wrong; `seed` only matters for generated data.
pub fn load(spec: &DataSpec, seed: u64) -> Result<Splits> {
    match spec {
        DataSpec::Synthetic => {
            Ok(synthetic::generate(&synthetic::SyntheticConfig::default(), seed)?.into())
        }
        DataSpec::Cifar10(dir) => cifar::load(cifar::Variant::Cifar10, dir),
        DataSpec::Cifar100(dir) => cifar::load(cifar::Variant::Cifar100, dir),
        DataSpec::Stl10(dir) => stl10::load(dir),
        DataSpec::Folder(dir) => folder::load(dir),
    }
}

/// The folder holding a dataset's files: `dir` itself or the sub-folder `archive_dir` its
/// official archive unpacks into, whichever contains `marker`; else an error listing the
/// `expected` files.
fn locate_files(dir: &Path, archive_dir: &str, marker: &str, expected: &str) -> Result<PathBuf> {
    ensure!(dir.is_dir(), "{}: no such directory", dir.display());
    let nested = dir.join(archive_dir);
    for candidate in [dir.to_path_buf(), nested] {
        if candidate.join(marker).is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{}: missing {marker} (expected the official binary files {expected}, here or in {archive_dir}/)",
        dir.display()
    )
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
    fn real_dataset_specs_parse_and_round_trip() {
        for s in [
            "cifar10:/d",
            "cifar100:data/c",
            "stl10:x",
            "folder:imgs/a:b",
        ] {
            let spec: DataSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert_eq!(
            "folder:imgs".parse::<DataSpec>().unwrap(),
            DataSpec::Folder("imgs".into())
        );
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
    fn keyed_rng_depends_on_every_key_and_the_domain() {
        let draw = |d, k: &[u64]| keyed_rng(d, k).random::<u64>();
        let base = draw(domain::AUGMENT, &[1, 2, 3, 0]);
        assert_eq!(base, draw(domain::AUGMENT, &[1, 2, 3, 0]));
        assert_ne!(base, draw(domain::AUGMENT, &[1, 2, 3, 1]));
        assert_ne!(base, draw(domain::AUGMENT, &[1, 3, 2, 0]));
        assert_ne!(base, draw(domain::SHUFFLE, &[1, 2, 3, 0]));
    }
}
