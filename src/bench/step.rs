//! `simclr bench step`: images per second and peak memory of the full SimCLR training step
//! ([`crate::step::TrainStep`]: two views, forward, contrastive loss, backward, optimiser
//! update), the code `simclr train` runs, on synthetic input, after warm-up.
//!
//! The step is the default run's in everything the flags do not set: the projection head
//! (2 layers, hidden = the width of h, 128 out), NT-Xent with the cosine similarity at τ = 0.5,
//! LARS (momentum 0.9, weight decay 1e-4, η = 0.001, batch-norm and bias parameters excluded),
//! here at the constant learning rate 2.0·B/256 (the schedule's peak). The input is two fixed
//! batches of uniform noise in [0, 1] made on the device, so neither the loader nor
//! host-to-device copies are measured. "Images" are images: each is two views.
//!
//! `scripts/bench/step_pytorch.py` runs the identical step in PyTorch eager and
//! `scripts/bench/step.sh` runs both side by side.
use super::{peak_memory, process_cpu_seconds, reset_peak_memory, PeakMemory};
use crate::config::{Config, DeviceChoice, Precision};
use crate::model::{Arch, SimClr, Stem};
use crate::objective::Objective;
use crate::optim::{schedule::scaled_lr, Optimizer};
use crate::step::{self, TrainStep};
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// `simclr bench step` flags.
#[derive(Args, Debug, Clone)]
pub struct StepArgs {
    /// Encoder architecture.
    #[arg(long, value_enum, default_value_t = Arch::Resnet18)]
    pub arch: Arch,
    /// Width multiplier of the encoder.
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    /// First layer: auto = CIFAR stem for images <= 32 px.
    #[arg(long, value_enum, default_value_t = Stem::Auto)]
    pub stem: Stem,
    /// Images per step (2 x as many views).
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Side of the square views in pixels.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Forward/backward precision (the loss is f32).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Steps run before timing (allocator, cuDNN algorithm search, caches).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// CPU threads of libtorch's intra-op pool [default: libtorch's choice].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the initialisation and the input.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// What one benchmark run measured (the `--json` line).
#[derive(Debug, Serialize)]
pub struct StepReport {
    pub implementation: &'static str,
    pub arch: Arch,
    pub width: f64,
    pub batch_size: usize,
    pub image_size: usize,
    pub precision: Precision,
    pub device: String,
    pub channels_last: bool,
    pub threads: i32,
    /// Trainable parameters (encoder, head), to check that two implementations match.
    pub parameters: i64,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    pub seconds: f64,
    /// CPU time of the process over the timed steps, all threads (wall time x threads when
    /// nothing else competed for the cores).
    pub cpu_seconds: f64,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    pub peak_memory: PeakMemory,
    /// Mean loss of the timed steps (a sanity check that the step computes something sane).
    pub mean_loss: f64,
}

/// The configuration of the benchmarked step: the defaults with the flags applied, validated.
fn config(args: &StepArgs) -> Result<Config> {
    let mut cfg = Config::default();
    cfg.model.arch = args.arch;
    cfg.model.width = args.width;
    cfg.model.stem = args.stem;
    cfg.run.batch_size = args.batch_size;
    cfg.data.image_size = args.image_size;
    cfg.run.precision = args.precision;
    cfg.validate()?;
    if args.steps == 0 {
        bail!("--steps must be >= 1, got 0");
    }
    if args.threads == Some(0) {
        bail!("--threads must be >= 1, got 0");
    }
    Ok(cfg)
}

/// Waits until the device has finished every queued kernel (CUDA runs asynchronously).
fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// Runs `warmup` + `steps` training steps and measures the timed ones.
pub fn run(args: &StepArgs) -> Result<StepReport> {
    let cfg = config(args)?;
    let device = args.device.resolve()?;
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads as i32);
    }
    tch::manual_seed(args.seed as i64);
    let vs = VarStore::new(device);
    let model = SimClr::new(&vs.root(), &cfg.model, args.image_size);
    let objective = Objective::new(&vs.root(), &cfg.objective, cfg.model.proj_dim);
    step::prepare_for_device(&vs)?;
    let mut optimizer = Optimizer::new(&vs, &cfg.optim);
    let mut train_step = TrainStep::new(&model, &objective, device, args.precision);
    let lr = scaled_lr(cfg.optim.lr, args.batch_size, cfg.optim.lr_scaling);
    let shape = [
        args.batch_size as i64,
        3,
        args.image_size as i64,
        args.image_size as i64,
    ];
    let views = [0, 1].map(|_| Tensor::rand(shape, (Kind::Float, device)));
    let parameters = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();

    let mut one_step = || -> Result<Tensor> {
        let out = train_step.forward(&views)?;
        optimizer.zero_grad()?;
        train_step.backward(&out.loss);
        train_step.update(&mut optimizer, lr);
        Ok(out.loss.detach())
    };
    for _ in 0..args.warmup {
        let _ = one_step()?;
    }
    synchronize(device);
    reset_peak_memory(device)?;
    let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
    let (started, cpu_started) = (Instant::now(), process_cpu_seconds()?);
    for _ in 0..args.steps {
        loss_sum += one_step()?;
    }
    synchronize(device);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds()? - cpu_started;
    Ok(StepReport {
        implementation: "simclr-rs",
        arch: args.arch,
        width: args.width,
        batch_size: args.batch_size,
        image_size: args.image_size,
        precision: args.precision,
        device: match device {
            Device::Cuda(index) => format!("cuda:{index}"),
            _ => "cpu".to_string(),
        },
        channels_last: device.is_cuda(),
        threads: tch::get_num_threads(),
        parameters,
        warmup_steps: args.warmup,
        timed_steps: args.steps,
        seconds,
        cpu_seconds,
        images_per_sec: (args.steps * args.batch_size) as f64 / seconds,
        ms_per_step: 1000.0 * seconds / args.steps as f64,
        peak_memory: peak_memory(device)?,
        mean_loss: loss_sum.double_value(&[]) / args.steps as f64, // sync point, after timing
    })
}

/// `simclr bench step`: runs the benchmark and prints its report.
pub fn command(args: &StepArgs) -> Result<()> {
    let report = run(args)?;
    eprintln!(
        "{:?} x{} {}px batch {} {:?} on {} ({} threads): {:.1} images/s, {:.1} ms/step, peak {} {:.1} MiB, loss {:.4}",
        report.arch,
        report.width,
        report.image_size,
        report.batch_size,
        report.precision,
        report.device,
        report.threads,
        report.images_per_sec,
        report.ms_per_step,
        report.peak_memory.kind,
        report.peak_memory.bytes as f64 / (1 << 20) as f64,
        report.mean_loss
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
