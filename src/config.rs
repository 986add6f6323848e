//! The resolved run configuration: one serde structure with nested parts, read from an
//! optional JSON file, overridden by command-line flags, validated, and written to the run
//! directory (`config.json`) and into every checkpoint.
//!
//! The defaults are the built-in default run: a width-1/8 ResNet-18 pre-trained on the
//! synthetic dataset in a few minutes on two CPU cores, with the paper's CIFAR recipe otherwise
//! (LARS, temperature 0.5, colour strength 0.5, no blur; SimCLR Appendix B.9).
use crate::data::{augment::AugmentConfig, DataSpec};
use crate::model::ModelConfig;
use crate::objective::ObjectiveConfig;
use crate::optim::OptimConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Everything that determines a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub objective: ObjectiveConfig,
    pub optim: OptimConfig,
    pub run: RunConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: ModelConfig {
                width: 0.125,
                ..Default::default()
            },
            data: DataConfig::default(),
            objective: ObjectiveConfig::default(),
            optim: OptimConfig::default(),
            run: RunConfig::default(),
        }
    }
}

/// Dataset, input size, augmentation and loader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `synthetic` (built in), `cifar10:DIR`, `cifar100:DIR`, `stl10:DIR` or `folder:DIR`.
    pub spec: DataSpec,
    /// Side of the square views fed to the encoder.
    pub image_size: usize,
    /// Use only the first N training images (None: all).
    pub max_train_images: Option<usize>,
    /// Use only the first N test images for the kNN monitor (None: all).
    pub max_test_images: Option<usize>,
    /// Loader threads.
    pub workers: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
    /// Share of the training images that may be unreadable in one epoch (each is replaced by
    /// the next readable image and counted) before the run stops with an error.
    pub max_skipped_fraction: f64,
    pub augment: AugmentConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            spec: DataSpec::Synthetic,
            image_size: 32,
            max_train_images: None,
            max_test_images: None,
            workers: 2,
            prefetch: 4,
            max_skipped_fraction: 0.01,
            augment: AugmentConfig::default(),
        }
    }
}

/// Length, batch, seed, monitoring and hardware of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub epochs: usize,
    /// Images per step on each rank (each gives two views); the global batch is
    /// batch_size x world size, and the learning rate scales with the global batch.
    pub batch_size: usize,
    pub seed: u64,
    /// Run the kNN monitor every this many epochs (0: only before and after training).
    pub knn_every: usize,
    /// Neighbours of the kNN monitor (200 as in lightly and InstDisc).
    pub knn_k: usize,
    /// Log scalars every this many steps.
    pub log_every: usize,
    /// Keep a copy of the checkpoint every this many epochs (0: only `last.pt`).
    pub checkpoint_every: usize,
    /// Also write `last.pt` every this many steps inside epochs (0: only at epoch ends), so a
    /// killed run loses at most this many steps.
    pub checkpoint_every_steps: usize,
    /// Skip the update of a step whose loss is NaN or infinite (counted as
    /// `train/skipped_steps`) instead of stopping the run; reads the loss back every step.
    pub skip_nonfinite: bool,
    /// Keep only the newest this many periodic copies `epoch-NNNN.pt` (0: all); the initial
    /// weights `epoch-0000.pt` are always kept.
    pub keep_last: usize,
    pub device: DeviceChoice,
    pub precision: Precision,
    /// Data parallelism: batch norm over the global batch (SimCLR's "global BN"); None = on
    /// whenever there is more than one rank.
    pub sync_bn: Option<bool>,
    /// Data parallelism: every rank's projections are negatives for every other rank's
    /// anchors, so the loss is that of one device with the global batch (SimCLR, Section 2.2).
    pub global_negatives: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            epochs: 15,
            batch_size: 256,
            seed: 0,
            knn_every: 5,
            knn_k: 200,
            log_every: 10,
            checkpoint_every: 5,
            checkpoint_every_steps: 0,
            skip_nonfinite: false,
            keep_last: 0,
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
            sync_bn: None,
            global_negatives: true,
        }
    }
}

/// Where to train: the first GPU when there is one (`auto`), the CPU, or a given GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// The tch device, failing when CUDA is asked for but absent.
    pub fn resolve(self) -> Result<tch::Device> {
        let gpus = tch::Cuda::device_count() as usize;
        match self {
            DeviceChoice::Auto => Ok(if gpus > 0 {
                tch::Device::Cuda(0)
            } else {
                tch::Device::Cpu
            }),
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Cuda(i) if i < gpus => Ok(tch::Device::Cuda(i)),
            DeviceChoice::Cuda(i) => {
                bail!("device cuda:{i} requested but {gpus} CUDA device(s) are visible")
            }
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(DeviceChoice::Cuda(i)),
                _ => bail!("unknown device '{s}' (expected auto, cpu, cuda or cuda:N)"),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

/// Numeric precision of the forward/backward pass; the similarity matrix and the loss are
/// always computed in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Full f32 everywhere (the reference numerics).
    Fp32,
    /// bf16 autocast (convolutions and matmuls in bf16, reductions in f32); bf16 has f32's
    /// exponent range, so gradients need no loss scaling.
    Bf16,
    /// fp16 autocast with dynamic loss scaling: fp16's narrow range would flush small
    /// gradients to zero without it.
    Fp16,
}

impl Precision {
    /// The autocast dtype of the forward pass (`None`: no autocast).
    pub fn autocast_dtype(self) -> Option<tch::Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(tch::Kind::BFloat16),
            Precision::Fp16 => Some(tch::Kind::Half),
        }
    }
}

/// Settings a resumed run may change: its length, monitoring, checkpointing and hardware.
/// Changing `run.epochs` re-plans the cosine schedule from the current step on.
pub const RESUMABLE_CHANGES: &[&str] = &[
    "run.epochs",
    "run.knn_every",
    "run.knn_k",
    "run.log_every",
    "run.checkpoint_every",
    "run.checkpoint_every_steps",
    "run.keep_last",
    "run.skip_nonfinite",
    "run.device",
    "run.precision",
    "data.workers",
    "data.prefetch",
    "data.max_test_images",
    "data.max_skipped_fraction",
];

/// Every leaf of a JSON object by its dotted path (`run.epochs`), nulls and arrays included.
pub fn leaves(json: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    fn walk(
        prefix: &str,
        json: &serde_json::Value,
        out: &mut std::collections::BTreeMap<String, serde_json::Value>,
    ) {
        match json.as_object() {
            Some(map) => {
                for (key, value) in map {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&name, value, out);
                }
            }
            None => {
                out.insert(prefix.to_string(), json.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk("", json, &mut out);
    out
}

impl Config {
    /// Reads a JSON configuration; absent keys take their defaults, unknown keys are refused.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a JSON configuration read from `origin` (named in errors); absent keys take
    /// their defaults, unknown keys are refused with the nearest valid name suggested.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        serde_json::from_str(text).map_err(|err| {
            let hint = suggestion(&err.to_string())
                .map(|name| format!(" (did you mean `{name}`?)"))
                .unwrap_or_default();
            anyhow::anyhow!("config {origin} is not a valid configuration: {err}{hint}")
        })
    }

    /// Refuses to continue a run saved with `saved` under this configuration when a setting
    /// that defines the run differs (architecture, objective, data, batch, seed, ...): one
    /// line listing each such field with both values. Only [`RESUMABLE_CHANGES`] may differ.
    pub fn check_resumable_from(&self, saved: &Config) -> Result<()> {
        let (now, then) = (
            leaves(&serde_json::to_value(self)?),
            leaves(&serde_json::to_value(saved)?),
        );
        let conflicts: Vec<String> = now
            .iter()
            .filter(|(key, value)| {
                then.get(*key) != Some(value) && !RESUMABLE_CHANGES.contains(&key.as_str())
            })
            .map(|(key, value)| {
                let saved = then.get(key).map_or("absent".into(), |v| v.to_string());
                format!("{key} {value} (the run has {saved})")
            })
            .collect();
        if !conflicts.is_empty() {
            bail!(
                "cannot resume with a different {}: these settings are fixed for a run (start a new one with --out)",
                conflicts.join(", ")
            );
        }
        Ok(())
    }

    /// Rejects values that cannot train, naming the field and the value.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.optim.validate()?;
        self.data.augment.validate()?;
        self.objective.validate()?;
        let (data, run) = (&self.data, &self.run);
        if data.image_size < 8 {
            bail!("data.image_size must be >= 8, got {}", data.image_size);
        }
        if data.workers == 0 || data.prefetch == 0 {
            bail!(
                "data.workers and data.prefetch must be >= 1, got {} and {}",
                data.workers,
                data.prefetch
            );
        }
        if !(0.0..=1.0).contains(&data.max_skipped_fraction) {
            bail!(
                "data.max_skipped_fraction must be in [0, 1], got {}",
                data.max_skipped_fraction
            );
        }
        if run.batch_size < 2 {
            bail!(
                "run.batch_size must be >= 2 (the other images are the negatives), got {}",
                run.batch_size
            );
        }
        if run.epochs == 0 {
            bail!("run.epochs must be >= 1");
        }
        if run.knn_k == 0 || run.log_every == 0 {
            bail!(
                "run.knn_k and run.log_every must be >= 1, got {} and {}",
                run.knn_k,
                run.log_every
            );
        }
        Ok(())
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" message, the expected name
/// closest to `x` by edit distance (if it is close enough to be a likely typo).
fn suggestion(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected one of ")?.1;
    let names = expected.split('`').skip(1).step_by(2);
    let (distance, best) = names
        .map(|name| (edit_distance(unknown, name), name))
        .min()?;
    (distance <= unknown.len().max(3) / 3 + 1).then(|| best.to_string())
}

/// Levenshtein distance between two strings (by chars).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() -> Result<()> {
        let cfg = Config::default();
        cfg.validate()?;
        let back: Config = serde_json::from_str(&serde_json::to_string(&cfg)?)?;
        assert_eq!(back, cfg);
        Ok(())
    }

    #[test]
    fn partial_file_takes_defaults_and_unknown_keys_fail() -> Result<()> {
        let cfg: Config =
            serde_json::from_str(r#"{"run": {"epochs": 3}, "model": {"arch": "resnet50"}}"#)?;
        assert_eq!(cfg.run.epochs, 3);
        assert_eq!(cfg.run.batch_size, RunConfig::default().batch_size);
        let err = serde_json::from_str::<Config>(r#"{"run": {"epochz": 3}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("epochz"), "{err}");
        Ok(())
    }

    /// A configuration written before the objective and head options existed still loads,
    /// as SimCLR's objective and SimCLRv1's head; the new options are spelled as on the CLI.
    #[test]
    fn older_files_load_and_objective_names_match_the_flags() -> Result<()> {
        let old: Config = serde_json::from_str(r#"{"objective": {"temperature": 0.2}}"#)?;
        assert_eq!(
            old.objective,
            ObjectiveConfig {
                temperature: 0.2,
                ..Default::default()
            }
        );
        assert!(!old.model.head_bn);
        let new: Config = serde_json::from_str(
            r#"{"objective": {"loss": "margin-triplet", "similarity": "concat", "normalize": true},
                "model": {"head_layers": 3, "head_bn": true}}"#,
        )?;
        assert_eq!(
            new.objective.loss,
            crate::objective::LossKind::MarginTriplet
        );
        assert_eq!(
            new.objective.similarity,
            crate::objective::SimilarityKind::Concat
        );
        assert!(new.objective.normalize && new.model.head_bn);
        Ok(())
    }

    #[test]
    fn unknown_keys_get_the_nearest_valid_name() {
        let err = serde_json::from_str::<Config>(r#"{"run": {"epochz": 3}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(suggestion(&err).as_deref(), Some("epochs"));
        let err = serde_json::from_str::<Config>(r#"{"optim": {"learning_rate": 3}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(suggestion(&err), None, "nothing close enough: {err}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn devices_parse() -> Result<()> {
        assert_eq!("cuda:3".parse::<DeviceChoice>()?, DeviceChoice::Cuda(3));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        Ok(())
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut cfg = Config::default();
        cfg.objective.temperature = 0.0;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("objective.temperature"));
        let mut cfg = Config::default();
        cfg.run.batch_size = 1;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("run.batch_size"));
    }
}
