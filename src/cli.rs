//! The command-line interface: clap definitions and what each command does with them.
//! `--json` prints one JSON object as the last line of stdout; human text goes to stderr.
use crate::bench;
use crate::checkpoint;
use crate::config::{Config, DeviceChoice, Precision};
use crate::data::augment::AugmentConfig;
use crate::data::loader::EvalTransform;
use crate::data::resize::ResizeFilter;
use crate::data::DataSpec;
use crate::dist::{launcher, ProcessGroup, Rendezvous};
use crate::eval::{features, finetune, knn, linear};
use crate::export;
use crate::interrupt::StopRequest;
use crate::logging::MetricsLogger;
use crate::model::{Arch, Stem};
use crate::objective::{LossKind, SimilarityKind};
use crate::optim::{LrScaling, OptimizerKind};
use crate::shim;
use crate::train::{self, Outcome};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "simclr",
    version,
    about = "SimCLR contrastive pre-training of image encoders on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the libtorch build, devices and compiled-in backends.
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pre-train an encoder (flags override --config; the resolved config goes to OUT/config.json).
    Train(Box<TrainArgs>),
    /// Evaluate the representation of a checkpoint.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Fine-tune the encoder with a linear classifier on a class-balanced fraction of the labels
    /// (SimCLR's 1% / 10% semi-supervised protocol); top-1/top-5 on the test split.
    Finetune(FinetuneArgs),
    /// Write a preview of the augmentation: rows of original | view 1 | view 2.
    Augment {
        /// Dataset whose first training images are shown.
        #[arg(long, default_value = "synthetic")]
        data: DataSpec,
        /// Output PNG file.
        #[arg(long)]
        out: PathBuf,
        /// Images (rows) shown.
        #[arg(long, default_value_t = 8)]
        count: usize,
        /// Side of the views in pixels.
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        /// Augmentation settings from this configuration file, under the flags below [default: the defaults].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seed of the views (the same views as epoch 0 of a run with this seed).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        augment: AugmentArgs,
    },
    /// Measure the throughput of a part of training (images/s and peak memory, after warm-up;
    /// the figures of README's Performance section).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Export the encoder of a checkpoint (or the network up to a projection-head layer).
    Export {
        /// Checkpoint file (a run's checkpoints/last.pt or epoch-NNNN.pt).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Torchscript)]
        format: ExportFormat,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Representation to export: 0 = encoder output h; K = output of projection-head
        /// layer K (SimCLRv2 fine-tunes from 1, the middle of its 3-layer head).
        #[arg(long, default_value_t = 0)]
        head_layer: usize,
        /// Export through the whole projection head: the output is z (as --head-layer = depth).
        #[arg(long, conflicts_with = "head_layer")]
        with_head: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Images/s of the two-view training loader alone (read, decode, two augmented views,
    /// u8 -> f32 NCHW); compare with scripts/bench/loader_torchvision.py (scripts/bench/loader.sh).
    Loader(BenchLoaderArgs),
    /// The full training step (two views, forward, loss, backward, LARS) on synthetic input;
    /// scripts/bench/step.sh compares it with the same step in PyTorch.
    Step(bench::step::StepArgs),
}

#[derive(Args)]
struct BenchLoaderArgs {
    /// Dataset whose pre-training images are loaded.
    #[arg(long, default_value = "synthetic")]
    data: DataSpec,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Side of the views in pixels.
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Batches timed.
    #[arg(long, default_value_t = 20)]
    batches: usize,
    /// Untimed batches first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Augmentation settings from this configuration file [default: the defaults].
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    augment: AugmentArgs,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// Traced encoder f, up to --head-layer (eval mode), for torch.jit.load / tch::CModule.
    Torchscript,
    /// Encoder weights under torchvision's names, for torchvision.models.resnet*.
    Safetensors,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Linear evaluation protocol: a linear classifier on frozen features (L2 penalty chosen on
    /// a held-out 10% of train), top-1/top-5 on the test split. Features are cached beside the
    /// checkpoint (feature-cache/).
    Linear {
        /// Checkpoint file (a run's checkpoints/last.pt or epoch-NNNN.pt).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Dataset with train and test splits [default: the run's].
        #[arg(long)]
        data: Option<DataSpec>,
        /// Add horizontally flipped copies of the train images.
        #[arg(long)]
        flip: bool,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Weighted kNN (cosine, exp(sim/0.1) votes) of the encoder's representation h.
    Knn {
        /// Checkpoint file (a run's checkpoints/last.pt or epoch-NNNN.pt).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Dataset whose train split is the bank and test split is queried [default: the run's].
        #[arg(long)]
        data: Option<DataSpec>,
        /// Neighbours.
        #[arg(long, default_value_t = 200)]
        k: usize,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `simclr finetune` flags.
#[derive(Args)]
struct FinetuneArgs {
    /// Checkpoint file (a run's checkpoints/last.pt or epoch-NNNN.pt).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset with train and test splits [default: the run's].
    #[arg(long)]
    data: Option<DataSpec>,
    /// Fraction of the train labels to use, per class (e.g. 0.01 or 0.1).
    #[arg(long)]
    label_fraction: f64,
    /// Classifier on h (0) or after K projection-head layers, fine-tuned too (SimCLRv2: 1).
    #[arg(long, default_value_t = 0)]
    head_layer: usize,
    /// Epochs over the labelled subset.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Labelled images per step (capped at the subset's size).
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Seed of the subset, the classifier's initialisation and the augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// `simclr train` flags; each one overrides the same field of the configuration.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("overrides").multiple(true))]
struct TrainArgs {
    /// JSON configuration file (absent keys take the defaults).
    #[arg(long, group = "overrides")]
    config: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint, with its saved config;
    /// flags may change only its length, monitoring, checkpointing and hardware (e.g.
    /// --epochs to train longer).
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Run directory [default: runs/<date>-<time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Dataset: synthetic (built in), cifar10:DIR, cifar100:DIR, stl10:DIR or folder:DIR
    /// [default: synthetic].
    #[arg(long, group = "overrides")]
    data: Option<DataSpec>,
    /// Encoder architecture [default: resnet18].
    #[arg(long, group = "overrides", value_enum)]
    arch: Option<Arch>,
    /// Width multiplier of the encoder [default: 0.125].
    #[arg(long, group = "overrides")]
    width: Option<f64>,
    /// First layer: auto = CIFAR stem for images <= 32 px [default: auto].
    #[arg(long, group = "overrides", value_enum)]
    stem: Option<Stem>,
    /// Linear layers in the projection head [default: 2].
    #[arg(long, group = "overrides")]
    head_layers: Option<usize>,
    /// Hidden width of the projection head [default: width of h].
    #[arg(long, group = "overrides")]
    head_hidden: Option<i64>,
    /// Output width of the projection head [default: 128].
    #[arg(long, group = "overrides")]
    proj_dim: Option<i64>,
    /// Batch norm on every head layer incl. the last (SimCLRv2: --head-layers 3 --head-bn) [default: false].
    #[arg(long, group = "overrides", num_args = 0..=1, default_missing_value = "true")]
    head_bn: Option<bool>,
    /// Epochs [default: 15].
    #[arg(long, group = "overrides")]
    epochs: Option<usize>,
    /// Images per step; the loss sees twice as many views [default: 256].
    #[arg(long, group = "overrides")]
    batch_size: Option<usize>,
    /// Side of the square training views in pixels [default: 32].
    #[arg(long, group = "overrides")]
    image_size: Option<usize>,
    /// Train on the first N images only [default: all].
    #[arg(long, group = "overrides")]
    max_train_images: Option<usize>,
    /// Monitor on the first N test images only [default: all].
    #[arg(long, group = "overrides")]
    max_test_images: Option<usize>,
    /// Base learning rate, scaled by the batch (see --lr-scaling) [default: 2.0].
    #[arg(long, group = "overrides")]
    lr: Option<f64>,
    /// linear: lr x B/256; sqrt: lr x sqrt(B) [default: linear].
    #[arg(long, group = "overrides", value_enum)]
    lr_scaling: Option<LrScaling>,
    /// Optimiser [default: lars].
    #[arg(long, group = "overrides", value_enum)]
    optimizer: Option<OptimizerKind>,
    /// Weight decay, not applied to batch-norm and bias parameters [default: 1e-4].
    #[arg(long, group = "overrides")]
    weight_decay: Option<f64>,
    /// Linear warm-up length in epochs [default: 1].
    #[arg(long, group = "overrides")]
    warmup_epochs: Option<f64>,
    /// Contrastive loss [default: nt-xent].
    #[arg(long, group = "overrides", value_enum)]
    loss: Option<LossKind>,
    /// Similarity of projections [default: cosine].
    #[arg(long, group = "overrides", value_enum)]
    similarity: Option<SimilarityKind>,
    /// L2-normalise z before a dot, bilinear or concat similarity [default: false].
    #[arg(long, group = "overrides", num_args = 0..=1, default_missing_value = "true")]
    normalize: Option<bool>,
    /// Temperature of nt-xent and nt-logistic [default: 0.5].
    #[arg(long, group = "overrides")]
    temperature: Option<f64>,
    /// Margin m of margin-triplet [default: 1.0].
    #[arg(long, group = "overrides")]
    margin: Option<f64>,
    /// Hidden width of the concat similarity [default: --proj-dim].
    #[arg(long, group = "overrides")]
    concat_hidden: Option<i64>,
    /// Seed of initialisation, shuffling and augmentation [default: 0].
    #[arg(long, group = "overrides")]
    seed: Option<u64>,
    /// Loader threads [default: 2].
    #[arg(long, group = "overrides")]
    workers: Option<usize>,
    /// Share of training images that may be unreadable in one epoch (each is replaced and
    /// counted) before the run stops [default: 0.01].
    #[arg(long, group = "overrides")]
    max_skipped_fraction: Option<f64>,
    /// kNN monitor every N epochs, 0 = only before and after training [default: 5].
    #[arg(long, group = "overrides")]
    knn_every: Option<usize>,
    /// Keep a copy of the checkpoint every N epochs, 0 = only last.pt [default: 5].
    #[arg(long, group = "overrides")]
    checkpoint_every: Option<usize>,
    /// Also write last.pt every N steps inside epochs, 0 = only at epoch ends [default: 0].
    #[arg(long, group = "overrides")]
    ckpt_every_steps: Option<usize>,
    /// Standardise inputs with ImageNet's channel mean/std inside the encoder (encoder.pt still
    /// takes RGB in [0, 1]; safetensors weights then expect normalised inputs) [default: false].
    #[arg(long, group = "overrides")]
    normalize_input: bool,
    /// Skip the update of a step whose loss is NaN/Inf (counted as train/skipped_steps) instead
    /// of stopping the run; reads the loss back every step [default: false].
    #[arg(long, group = "overrides")]
    skip_nonfinite: bool,
    /// Keep only the newest K periodic epoch-NNNN.pt copies, 0 = all; epoch-0000.pt (the
    /// initial weights) is always kept [default: 0].
    #[arg(long, group = "overrides")]
    keep_last: Option<usize>,
    /// Log scalars every N steps [default: 10].
    #[arg(long, group = "overrides")]
    log_every: Option<usize>,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long, group = "overrides")]
    device: Option<DeviceChoice>,
    /// Forward/backward precision; the loss is always f32 [default: fp32].
    #[arg(long, group = "overrides", value_enum)]
    precision: Option<Precision>,
    #[command(flatten)]
    augment: AugmentArgs,
    /// Data parallel: batch norm over the global batch [default: on with more than one rank].
    #[arg(long, group = "overrides", num_args = 0..=1, default_missing_value = "true")]
    sync_bn: Option<bool>,
    /// Data parallel: every rank's projections are negatives for all anchors [default: true].
    #[arg(long, group = "overrides", num_args = 0..=1, default_missing_value = "true")]
    global_negatives: Option<bool>,
    /// Start this many worker processes on this node, one per GPU (CPU processes with Gloo
    /// under --device cpu); --batch-size is per process [default: one process, no launcher].
    #[arg(long)]
    nproc_per_node: Option<usize>,
    /// Nodes of a multi-node run (start the same command on each, with its --node-rank).
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index in 0..--nnodes.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of node 0, where rank 0 serves the rendezvous store.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Port of the rendezvous store [default: a free port; required with --nnodes > 1].
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds a collective (or the rendezvous) may wait for the other ranks before the run
    /// fails, naming the rank.
    #[arg(long, default_value_t = 600)]
    dist_timeout: u64,
    /// Print a JSON summary as the last line of stdout.
    #[arg(long)]
    json: bool,
}

impl TrainArgs {
    /// The configuration with every given flag applied over `cfg`.
    fn apply(&self, mut cfg: Config) -> Config {
        fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
            if let Some(v) = flag {
                *field = v.clone();
            }
        }
        set(&mut cfg.data.spec, &self.data);
        set(&mut cfg.model.arch, &self.arch);
        set(&mut cfg.model.width, &self.width);
        set(&mut cfg.model.stem, &self.stem);
        set(&mut cfg.model.head_layers, &self.head_layers);
        if self.head_hidden.is_some() {
            cfg.model.head_hidden = self.head_hidden;
        }
        set(&mut cfg.model.proj_dim, &self.proj_dim);
        set(&mut cfg.model.head_bn, &self.head_bn);
        set(&mut cfg.run.epochs, &self.epochs);
        set(&mut cfg.run.batch_size, &self.batch_size);
        set(&mut cfg.data.image_size, &self.image_size);
        if self.max_train_images.is_some() {
            cfg.data.max_train_images = self.max_train_images;
        }
        if self.max_test_images.is_some() {
            cfg.data.max_test_images = self.max_test_images;
        }
        set(&mut cfg.optim.lr, &self.lr);
        set(&mut cfg.optim.lr_scaling, &self.lr_scaling);
        set(&mut cfg.optim.optimizer, &self.optimizer);
        set(&mut cfg.optim.weight_decay, &self.weight_decay);
        set(&mut cfg.optim.warmup_epochs, &self.warmup_epochs);
        set(&mut cfg.objective.loss, &self.loss);
        set(&mut cfg.objective.similarity, &self.similarity);
        set(&mut cfg.objective.normalize, &self.normalize);
        set(&mut cfg.objective.temperature, &self.temperature);
        set(&mut cfg.objective.margin, &self.margin);
        if self.concat_hidden.is_some() {
            cfg.objective.concat_hidden = self.concat_hidden;
        }
        set(&mut cfg.run.seed, &self.seed);
        set(&mut cfg.data.workers, &self.workers);
        set(
            &mut cfg.data.max_skipped_fraction,
            &self.max_skipped_fraction,
        );
        set(&mut cfg.run.knn_every, &self.knn_every);
        set(&mut cfg.run.log_every, &self.log_every);
        set(&mut cfg.run.checkpoint_every, &self.checkpoint_every);
        set(&mut cfg.run.checkpoint_every_steps, &self.ckpt_every_steps);
        set(&mut cfg.run.keep_last, &self.keep_last);
        cfg.run.skip_nonfinite |= self.skip_nonfinite;
        cfg.model.normalize_input |= self.normalize_input;
        set(&mut cfg.run.device, &self.device);
        set(&mut cfg.run.precision, &self.precision);
        self.augment.apply(&mut cfg.data.augment);
        // "auto" settings written out, so config.json shows what the run does.
        cfg.data.augment = cfg.data.augment.resolved(cfg.data.image_size);
        if self.sync_bn.is_some() {
            cfg.run.sync_bn = self.sync_bn;
        }
        set(&mut cfg.run.global_negatives, &self.global_negatives);
        cfg
    }
}

/// The augmentation flags of `simclr train` and `simclr augment`; each overrides the same
/// field of `data.augment` (SimCLR Appendix A). Values are checked as they are parsed, so an
/// error names the flag.
#[derive(Args)]
#[group(id = "augment_overrides", multiple = true)]
struct AugmentArgs {
    /// Smallest crop area as a fraction of the image [default: 0.08].
    #[arg(long, value_parser = positive_fraction, allow_negative_numbers = true)]
    crop_scale_min: Option<f64>,
    /// Largest crop area as a fraction of the image [default: 1.0].
    #[arg(long, value_parser = positive_fraction, allow_negative_numbers = true)]
    crop_scale_max: Option<f64>,
    /// Resize filter of the crop (the official code uses bicubic) [default: bilinear].
    #[arg(long, value_enum)]
    resize_filter: Option<ResizeFilter>,
    /// Probability of a horizontal flip [default: 0.5].
    #[arg(long, value_parser = probability, allow_negative_numbers = true)]
    flip_prob: Option<f64>,
    /// Colour strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s (ImageNet 1.0,
    /// CIFAR 0.5) [default: 0.5].
    #[arg(long, value_parser = non_negative, allow_negative_numbers = true)]
    jitter_strength: Option<f64>,
    /// Probability of the colour jitter [default: 0.8].
    #[arg(long, value_parser = probability, allow_negative_numbers = true)]
    jitter_prob: Option<f64>,
    /// Probability of grayscale [default: 0.2].
    #[arg(long, value_parser = probability, allow_negative_numbers = true)]
    grayscale_prob: Option<f64>,
    /// Probability of the Gaussian blur, or auto: 0.5 for views >= 96 px, 0 below (on for
    /// ImageNet, off for CIFAR) [default: auto].
    #[arg(long, value_parser = auto_or_probability, value_name = "P|auto", allow_negative_numbers = true)]
    blur_prob: Option<AutoOr>,
    /// Smallest standard deviation of the blur in view pixels [default: 0.1].
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    blur_sigma_min: Option<f64>,
    /// Largest standard deviation of the blur in view pixels [default: 2.0].
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    blur_sigma_max: Option<f64>,
}

/// A flag value that is a number or "auto" (`None`).
#[derive(Clone, Copy)]
struct AutoOr(Option<f64>);

impl AugmentArgs {
    /// Sets every given flag's field of `cfg`.
    fn apply(&self, cfg: &mut AugmentConfig) {
        let set = |field: &mut f64, flag: Option<f64>| {
            if let Some(v) = flag {
                *field = v;
            }
        };
        set(&mut cfg.crop_scale_min, self.crop_scale_min);
        set(&mut cfg.crop_scale_max, self.crop_scale_max);
        set(&mut cfg.flip_prob, self.flip_prob);
        set(&mut cfg.jitter_strength, self.jitter_strength);
        set(&mut cfg.jitter_prob, self.jitter_prob);
        set(&mut cfg.grayscale_prob, self.grayscale_prob);
        set(&mut cfg.blur_sigma_min, self.blur_sigma_min);
        set(&mut cfg.blur_sigma_max, self.blur_sigma_max);
        if let Some(AutoOr(p)) = self.blur_prob {
            cfg.blur_prob = p;
        }
        if let Some(filter) = self.resize_filter {
            cfg.resize_filter = filter;
        }
    }
}

/// Parses a finite number that satisfies `ok`, else says it is not `what`.
fn number_where(s: &str, ok: fn(f64) -> bool, what: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        _ => Err(format!("{s} is not {what}")),
    }
}

fn probability(s: &str) -> Result<f64, String> {
    number_where(s, |v| (0.0..=1.0).contains(&v), "a probability in [0, 1]")
}

fn positive_fraction(s: &str) -> Result<f64, String> {
    number_where(s, |v| v > 0.0 && v <= 1.0, "a fraction in (0, 1]")
}

fn non_negative(s: &str) -> Result<f64, String> {
    number_where(s, |v| v >= 0.0, "a number >= 0")
}

fn positive(s: &str) -> Result<f64, String> {
    number_where(s, |v| v > 0.0, "a number > 0")
}

fn auto_or_probability(s: &str) -> Result<AutoOr, String> {
    match s {
        "auto" => Ok(AutoOr(None)),
        _ => probability(s).map(|p| AutoOr(Some(p))),
    }
}

/// Parses the command line and runs the command; the exit code is 0, or 128 + the signal
/// that interrupted a training run (its checkpoint written).
pub fn run() -> Result<ExitCode> {
    let done = ExitCode::SUCCESS;
    match Cli::parse().command {
        Command::Info { json } => info(json).map(|_| done),
        Command::Train(args) => train_command(&args),
        Command::Eval(EvalCommand::Linear {
            checkpoint,
            data,
            flip,
            device,
            json,
        }) => eval_linear(&checkpoint, data, flip, device, json).map(|_| done),
        Command::Eval(EvalCommand::Knn {
            checkpoint,
            data,
            k,
            device,
            json,
        }) => eval_knn(&checkpoint, data, k, device, json).map(|_| done),
        Command::Finetune(args) => finetune_command(&args).map(|_| done),
        Command::Bench(BenchCommand::Loader(args)) => bench_loader(&args).map(|_| done),
        Command::Augment {
            data,
            out,
            count,
            image_size,
            config,
            seed,
            augment,
        } => augment_command(
            &data,
            &out,
            count,
            image_size,
            config.as_deref(),
            seed,
            &augment,
        )
        .map(|_| done),
        Command::Bench(BenchCommand::Step(args)) => bench::step::command(&args).map(|_| done),
        Command::Export {
            checkpoint,
            format,
            out,
            head_layer,
            with_head,
        } => export_command(&checkpoint, format, &out, head_layer, with_head).map(|_| done),
    }
}

fn info(as_json: bool) -> Result<()> {
    let report = json!({
        "simclr_version": env!("CARGO_PKG_VERSION"),
        "torch_version": shim::torch_version(),
        "cuda_available": tch::Cuda::is_available(),
        "cuda_device_count": tch::Cuda::device_count(),
        "cudnn_available": tch::Cuda::cudnn_is_available(),
        "cudnn_version": shim::cudnn_version()?,
        "threads": tch::get_num_threads(),
        "gloo": shim::has_gloo(),
        "nccl": shim::has_nccl(),
        "nccl_version": shim::nccl_version(),
    });
    if as_json {
        println!("{report}");
    } else if let Some(fields) = report.as_object() {
        for (key, value) in fields {
            println!("{key:>18}: {value}");
        }
    }
    Ok(())
}

fn train_command(args: &TrainArgs) -> Result<ExitCode> {
    // A launcher (this one, torchrun, a Slurm script) started this process as a worker; or
    // this process is to start the workers (which is all it does).
    let worker = launcher::worker_env()?;
    if worker.is_none() && (args.nproc_per_node.is_some() || args.nnodes > 1) {
        return launch(args);
    }
    let (cfg, run_dir, resume) = match &args.resume {
        Some(dir) => {
            let ckpt = checkpoint::load_latest(dir, tch::Device::Cpu)
                .with_context(|| format!("resuming {}", dir.display()))?;
            let saved = &ckpt.meta.config;
            let base = match &args.config {
                Some(path) => Config::from_file(path)?,
                None => saved.clone(),
            };
            let cfg = args.apply(base);
            cfg.check_resumable_from(saved)
                .with_context(|| format!("--resume {}", dir.display()))?;
            (cfg, dir.clone(), Some(ckpt))
        }
        None => {
            let base = match &args.config {
                Some(path) => Config::from_file(path)?,
                None => Config::default(),
            };
            let run_dir = args.out.clone().unwrap_or_else(default_run_dir);
            (args.apply(base), run_dir, None)
        }
    };
    let stop = StopRequest::install()?;
    let group = match &worker {
        Some(rendezvous) => Some(Arc::new(join_group(rendezvous, &cfg, args.dist_timeout)?)),
        None => None,
    };
    let lead = worker.as_ref().is_none_or(|w| w.rank == 0);
    match train::run(&cfg, &run_dir, resume, &stop, group)? {
        Outcome::Finished(summary) => {
            if args.json && lead {
                println!("{}", serde_json::to_string(&summary)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Interrupted { signal, step } => {
            if args.json && lead {
                println!(
                    "{}",
                    json!({"run_dir": run_dir, "interrupted_by_signal": signal, "steps": step})
                );
            }
            Ok(ExitCode::from(128 + signal as u8))
        }
    }
}

/// Starts the workers of `--nproc-per-node` (see [`launcher`]) with this command line, giving
/// them the run directory so that all agree on it; returns the launch's exit code.
fn launch(args: &TrainArgs) -> Result<ExitCode> {
    let mut worker_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.out.is_none() && args.resume.is_none() {
        worker_args.push("--out".into());
        worker_args.push(default_run_dir().into());
    }
    let spec = launcher::Launch {
        nproc_per_node: args.nproc_per_node.unwrap_or(1),
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr.clone(),
        master_port: args.master_port,
    };
    Ok(ExitCode::from(launcher::run(&spec, &worker_args)?))
}

/// This worker's process group: Gloo on the CPU, NCCL on its GPU (cuda:LOCAL_RANK; choose the
/// GPUs with CUDA_VISIBLE_DEVICES).
fn join_group(rendezvous: &Rendezvous, cfg: &Config, timeout_secs: u64) -> Result<ProcessGroup> {
    let device = match cfg.run.device.resolve()? {
        tch::Device::Cuda(_) => {
            let gpus = tch::Cuda::device_count() as usize;
            if rendezvous.local_rank >= gpus {
                anyhow::bail!(
                    "rank {} has LOCAL_RANK {} but this node has {gpus} GPU(s): start at most one process per GPU",
                    rendezvous.rank,
                    rendezvous.local_rank
                );
            }
            tch::Device::Cuda(rendezvous.local_rank)
        }
        device => device,
    };
    ProcessGroup::new(rendezvous, device, Duration::from_secs(timeout_secs))
}

fn eval_knn(
    checkpoint_path: &Path,
    data: Option<DataSpec>,
    k: usize,
    device: DeviceChoice,
    as_json: bool,
) -> Result<()> {
    if k == 0 {
        anyhow::bail!("--k must be >= 1");
    }
    let device = device.resolve()?;
    let (_vs, model, meta) = checkpoint::load_model(checkpoint_path, device)?;
    let cfg = &meta.config;
    let spec = data.unwrap_or(cfg.data.spec.clone());
    let splits = crate::data::load(&spec, cfg.run.seed)?;
    let top1 = knn::monitor(
        &model.encoder,
        splits.train.as_ref(),
        splits.test.as_ref(),
        EvalTransform::for_data(&spec, cfg.data.image_size),
        k,
        device,
    );
    eprintln!("kNN (k={k}) top-1 on {spec}: {:.2}%", 100.0 * top1);
    log_to_run(checkpoint_path, &meta, &[("eval/knn_top1", top1)])?;
    if as_json {
        println!(
            "{}",
            json!({"checkpoint": checkpoint_path, "data": spec.to_string(), "k": k, "knn_top1": top1})
        );
    }
    Ok(())
}

fn eval_linear(
    checkpoint_path: &Path,
    data: Option<DataSpec>,
    flip: bool,
    device: DeviceChoice,
    as_json: bool,
) -> Result<()> {
    let device = device.resolve()?;
    let meta = checkpoint::load(checkpoint_path, tch::Device::Cpu)?.meta;
    let ckpt_cfg = &meta.config;
    let spec = data.unwrap_or(ckpt_cfg.data.spec.clone());
    let image_size = ckpt_cfg.data.image_size;
    let cache = features::cache_path(checkpoint_path, &spec, image_size, flip)?;
    let (train, test, cached) = match features::load_cached(&cache, device) {
        Some((train, test)) => (train, test, true),
        None => {
            let (_vs, model, _) = checkpoint::load_model(checkpoint_path, device)?;
            let splits = crate::data::load(&spec, ckpt_cfg.run.seed)?;
            let transform = EvalTransform::for_data(&spec, image_size);
            let represent = |set: &dyn crate::data::Dataset, flip| {
                features::representations(&model.encoder, set, transform, device, flip)
            };
            let train = represent(splits.train.as_ref(), flip);
            let test = represent(splits.test.as_ref(), false);
            features::store_cached(&cache, &train, &test)?;
            (train, test, false)
        }
    };
    let num_classes = train
        .labels
        .max()
        .max_other(&test.labels.max())
        .int64_value(&[])
        + 1;
    let result = linear::evaluate(&train, &test, num_classes, ckpt_cfg.run.seed);
    eprintln!(
        "linear evaluation on {spec}: top-1 {:.2}%, top-5 {:.2}% (L2 penalty {:e}{})",
        100.0 * result.top1,
        100.0 * result.top5,
        result.penalty,
        if cached { ", cached features" } else { "" }
    );
    log_to_run(
        checkpoint_path,
        &meta,
        &[
            ("eval/linear_top1", result.top1),
            ("eval/linear_top5", result.top5),
        ],
    )?;
    if as_json {
        println!(
            "{}",
            json!({"checkpoint": checkpoint_path, "data": spec.to_string(), "flip": flip, "cached_features": cached, "top1": result.top1, "top5": result.top5, "penalty": result.penalty, "validation_top1": result.validation_top1})
        );
    }
    Ok(())
}

fn finetune_command(args: &FinetuneArgs) -> Result<()> {
    let device = args.device.resolve()?;
    tch::manual_seed(args.seed as i64);
    let (vs, model, meta) = checkpoint::load_model(&args.checkpoint, device)?;
    let cfg = &meta.config;
    let spec = args.data.clone().unwrap_or(cfg.data.spec.clone());
    let splits = crate::data::load(&spec, cfg.run.seed)?;
    let indices = finetune::label_subset(
        &splits.train.labels(),
        splits.train.num_classes(),
        args.label_fraction,
        args.seed,
    )?;
    eprintln!(
        "fine-tuning on {} labelled images ({} of {spec}'s train split), {} epochs",
        indices.len(),
        args.label_fraction,
        args.epochs
    );
    let finetune_cfg = finetune::FinetuneConfig {
        head_layer: args.head_layer,
        transform: EvalTransform::for_data(&spec, cfg.data.image_size),
        epochs: args.epochs,
        batch_size: args.batch_size,
        seed: args.seed,
        workers: args.workers,
    };
    let result = finetune::finetune(
        &vs,
        &model,
        splits.train.clone(),
        splits.test.as_ref(),
        &indices,
        &finetune_cfg,
    )?;
    eprintln!(
        "fine-tuned: top-1 {:.2}%, top-5 {:.2}%",
        100.0 * result.top1,
        100.0 * result.top5
    );
    let percent = 100.0 * args.label_fraction;
    let (top1_tag, top5_tag) = (
        format!("eval/finetune_{percent}pct_top1"),
        format!("eval/finetune_{percent}pct_top5"),
    );
    log_to_run(
        &args.checkpoint,
        &meta,
        &[(&top1_tag, result.top1), (&top5_tag, result.top5)],
    )?;
    if args.json {
        println!(
            "{}",
            json!({"checkpoint": args.checkpoint, "data": spec.to_string(), "label_fraction": args.label_fraction, "labelled_images": result.labelled_images, "epochs": result.epochs, "top1": result.top1, "top5": result.top5})
        );
    }
    Ok(())
}

fn bench_loader(args: &BenchLoaderArgs) -> Result<()> {
    let mut augment = match &args.config {
        Some(path) => Config::from_file(path)?.data.augment,
        None => Default::default(),
    };
    args.augment.apply(&mut augment);
    let augment = augment.resolved(args.image_size);
    eprintln!("augmentation: {}", serde_json::to_string(&augment)?);
    let bench = crate::bench::loader::LoaderBench {
        data: args.data.clone(),
        workers: args.workers,
        batch_size: args.batch_size,
        image_size: args.image_size,
        batches: args.batches,
        warmup: args.warmup,
        prefetch: 4,
        augment,
    };
    let report = crate::bench::loader::run(&bench)?;
    eprintln!(
        "loader on {}: {:.0} images/s ({} workers, batch {}, {} px, {} batches in {:.2}s), peak RSS {:.0} MiB",
        report.data,
        report.images_per_sec,
        report.workers,
        report.batch_size,
        report.image_size,
        report.batches,
        report.seconds,
        report.peak_rss_mib.unwrap_or(f64::NAN)
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn augment_command(
    spec: &DataSpec,
    out: &Path,
    count: usize,
    image_size: usize,
    config: Option<&Path>,
    seed: u64,
    flags: &AugmentArgs,
) -> Result<()> {
    let mut augment = match config {
        Some(path) => Config::from_file(path)?.data.augment,
        None => AugmentConfig::default(),
    };
    flags.apply(&mut augment);
    augment.validate()?;
    if count == 0 || image_size < 8 {
        anyhow::bail!("--count must be >= 1 and --image-size >= 8, got {count} and {image_size}");
    }
    let splits = crate::data::load(spec, seed)?;
    let grid = crate::data::preview::augmentation_grid(
        splits.pretraining()?.as_ref(),
        &augment,
        image_size,
        seed,
        count,
    )?;
    grid.save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} ({} rows: original | view 1 | view 2)",
        out.display(),
        grid.height() as usize / image_size
    );
    Ok(())
}

/// Adds evaluation results to the TensorBoard logs and metrics.jsonl of the checkpoint's run
/// (at the checkpoint's step), when the checkpoint sits in a run directory.
fn log_to_run(
    checkpoint_path: &Path,
    meta: &checkpoint::Meta,
    scalars: &[(&str, f64)],
) -> Result<()> {
    let Some(run_dir) = checkpoint::run_dir_of(checkpoint_path) else {
        return Ok(());
    };
    let mut logger = MetricsLogger::new(run_dir)?;
    logger.log(meta.step, meta.epoch as f64, scalars)?;
    logger.flush()
}

fn export_command(
    checkpoint_path: &Path,
    format: ExportFormat,
    out: &Path,
    head_layer: usize,
    with_head: bool,
) -> Result<()> {
    let (mut vs, model, meta) = checkpoint::load_model(checkpoint_path, tch::Device::Cpu)?;
    let cfg = &meta.config;
    let head_layer = if with_head {
        model.head.depth()
    } else {
        head_layer
    };
    if head_layer > 0 && matches!(format, ExportFormat::Safetensors) {
        anyhow::bail!("--head-layer/--with-head apply to --format torchscript; safetensors holds the encoder only");
    }
    match format {
        ExportFormat::Torchscript => {
            export::torchscript(&mut vs, &model, head_layer, cfg.data.image_size, out)?
        }
        ExportFormat::Safetensors => export::safetensors(&vs, out)?,
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `runs/YYYYMMDD-HHMMSS` (UTC) for a run started now.
fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from(format!(
        "runs/{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train_config(args: &[&str]) -> Config {
        let cli = Cli::try_parse_from([&["simclr", "train"], args].concat()).expect("parses");
        match cli.command {
            Command::Train(train) => train.apply(Config::default()),
            _ => unreachable!("a train command"),
        }
    }

    fn parse_error(args: &[&str]) -> String {
        match Cli::try_parse_from([&["simclr"], args].concat()) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn augment_flags_override_the_config_and_auto_blur_is_resolved() {
        let defaults = train_config(&[]).data.augment;
        assert_eq!(defaults.blur_prob, Some(0.0), "auto at the default 32 px");
        assert_eq!(
            train_config(&["--image-size", "96"]).data.augment.blur_prob,
            Some(0.5)
        );
        let cfg = train_config(&[
            "--crop-scale-min",
            "0.2",
            "--crop-scale-max",
            "0.9",
            "--flip-prob",
            "0.3",
            "--jitter-strength",
            "1.0",
            "--jitter-prob",
            "0.7",
            "--grayscale-prob",
            "0.1",
            "--blur-prob",
            "0.4",
            "--blur-sigma-min",
            "0.5",
            "--blur-sigma-max",
            "1.5",
            "--resize-filter",
            "bicubic",
        ])
        .data
        .augment;
        assert_eq!(
            cfg,
            AugmentConfig {
                crop_scale_min: 0.2,
                crop_scale_max: 0.9,
                flip_prob: 0.3,
                jitter_strength: 1.0,
                jitter_prob: 0.7,
                grayscale_prob: 0.1,
                blur_prob: Some(0.4),
                blur_sigma_min: 0.5,
                blur_sigma_max: 1.5,
                resize_filter: ResizeFilter::Bicubic,
            }
        );
        let auto = train_config(&["--blur-prob", "auto", "--image-size", "224"]);
        assert_eq!(auto.data.augment.blur_prob, Some(0.5));
    }

    #[test]
    fn bad_augment_values_name_the_flag_and_value() {
        for (flag, value) in [
            ("--flip-prob", "1.5"),
            ("--blur-prob", "sometimes"),
            ("--crop-scale-min", "0"),
            ("--jitter-strength", "-1"),
            ("--blur-sigma-max", "inf"),
        ] {
            let err = parse_error(&["train", flag, value]);
            let first = err.lines().next().unwrap_or_default();
            assert!(
                first.contains(flag) && first.contains(value),
                "{flag} {value}: {err}"
            );
        }
        let err = parse_error(&["augment", "--out", "x.png", "--grayscale-prob", "2"]);
        assert!(err.contains("--grayscale-prob"), "{err}");
    }
}
