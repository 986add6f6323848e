//! The training loop: SimCLR pre-training (Chen et al. 2020, Algorithm 1) of encoder f and
//! head g with the contrastive objective (NT-Xent by default), reading top to bottom like nanoGPT's `train.py`:
//! set-up -> kNN before training -> per step: learning rate, forward both views, loss,
//! backward, optimiser step, logging -> per epoch: checkpoint, kNN -> export `encoder.pt`.
//!
//! GPU->CPU reads happen only at logging points and epoch ends (marked "sync point").
use crate::checkpoint::{self, Checkpoint, Meta};
use crate::config::Config;
use crate::data::loader::{LoaderConfig, TwoViewLoader};
use crate::data::{self, preview, ImageSet};
use crate::eval::knn;
use crate::export;
use crate::interrupt::StopRequest;
use crate::logging::{epoch_bar, MetricsLogger};
use crate::model::SimClr;
use crate::objective::Objective;
use crate::optim::{schedule::scaled_lr, Optimizer, Schedule};
use crate::step::{self, TrainStep};
use crate::{projector, tensorboard};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn::VarStore, Kind, Tensor};

/// Training images shown with their two views in TensorBoard's "augmentation" image.
const PREVIEW_IMAGES: usize = 8;

/// Test images shown in TensorBoard's embedding projector (a 32x32 grid of thumbnails).
const PROJECTOR_IMAGES: usize = 1024;

/// What a finished run reports (the `--json` line of `simclr train`).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub encoder: PathBuf,
    pub steps: u64,
    pub epochs: u64,
    /// kNN top-1 of the encoder before the first step (None for a resumed run).
    pub knn_top1_before: Option<f64>,
    pub knn_top1: f64,
    /// Mean loss over the last epoch trained (None if none was trained in this invocation).
    pub final_loss: Option<f64>,
    pub seconds: f64,
}

/// How a call of [`run`] ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every epoch done, encoder exported.
    Finished(Summary),
    /// Stopped by a signal after `step`, with a checkpoint there to resume from.
    Interrupted { signal: i32, step: u64 },
}

/// Trains with `cfg` into `run_dir`, continuing from `resume` when given, until the end or
/// until `stop` reports a signal.
pub fn run(
    cfg: &Config,
    run_dir: &Path,
    resume: Option<Checkpoint>,
    stop: &StopRequest,
) -> Result<Outcome> {
    let started = Instant::now();
    cfg.validate()?;
    let device = cfg.run.device.resolve()?;
    tch::manual_seed(cfg.run.seed as i64);
    prepare_run_dir(cfg, run_dir, resume.is_some())?;

    // ---- data
    let splits = data::load(&cfg.data.spec, cfg.run.seed)?;
    let train_set = Arc::new(splits.train.truncated(cfg.data.max_train_images));
    let test_set = splits.test.truncated(cfg.data.max_test_images);
    let image_size = cfg.data.image_size;
    let loader_cfg = LoaderConfig {
        batch_size: cfg.run.batch_size,
        image_size,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
        seed: cfg.run.seed,
        rank: 0,
        world_size: 1,
    };
    let loader = TwoViewLoader::new(
        train_set.clone(),
        cfg.data.augment.clone(),
        loader_cfg,
        device,
    )?;
    let steps_per_epoch = loader.batches_per_epoch() as u64;

    // ---- model, objective (its learned similarity, if any, trains with the model),
    // optimiser, schedule (per step, from the global batch)
    let mut vs = VarStore::new(device);
    let model = SimClr::new(&vs.root(), &cfg.model, image_size);
    let objective = Objective::new(&vs.root(), &cfg.objective, cfg.model.proj_dim);
    step::prepare_for_device(&vs)?;
    let mut optimizer = Optimizer::new(&vs, &cfg.optim);
    let mut train_step = TrainStep::new(&model, &objective, device, cfg.run.precision);
    let global_batch = cfg.run.batch_size; // x world size once data parallelism lands
    let schedule = Schedule {
        peak: scaled_lr(cfg.optim.lr, global_batch, cfg.optim.lr_scaling),
        warmup_steps: (cfg.optim.warmup_epochs * steps_per_epoch as f64).round() as u64,
        total_steps: cfg.run.epochs as u64 * steps_per_epoch,
    };
    // The position is a function of the step: a mid-epoch checkpoint resumes inside its epoch.
    let (mut step, start_epoch, start_batch) = match &resume {
        Some(ckpt) => {
            checkpoint::restore_variables(&vs.variables(), &ckpt.model)?;
            optimizer.load_state(&ckpt.optimizer, ckpt.meta.optimizer_steps)?;
            eprintln!(
                "resuming {} at epoch {} (step {})",
                run_dir.display(),
                ckpt.meta.epoch,
                ckpt.meta.step
            );
            let step = ckpt.meta.step;
            (
                step,
                step / steps_per_epoch,
                (step % steps_per_epoch) as usize,
            )
        }
        None => (0, 0, 0),
    };
    let mut logger = MetricsLogger::new(run_dir)?;
    eprintln!(
        "training {:?} x{} on {} ({} train / {} test images), {} epochs x {} steps, batch {}, peak lr {:.3}, device {:?}",
        cfg.model.arch, cfg.model.width, cfg.data.spec, train_set.len(), test_set.len(), cfg.run.epochs, steps_per_epoch, global_batch, schedule.peak, device
    );
    let obj = &cfg.objective;
    eprintln!(
        "objective {:?} with {:?} similarity (normalize {}), temperature {}, margin {}",
        obj.loss, obj.similarity, obj.normalize, obj.temperature, obj.margin
    );

    // ---- kNN before training: the baseline the representation must beat
    let run_knn = || {
        knn::monitor(
            &model.encoder,
            &train_set,
            &test_set,
            image_size,
            cfg.run.knn_k,
            device,
        )
    };
    let knn_top1_before = if resume.is_none() {
        describe_run(&mut logger, cfg, &train_set)?;
        // The initial weights are kept too (epoch-0000.pt): the baseline of every evaluation.
        save_checkpoint(
            run_dir,
            &vs,
            &optimizer,
            Meta::new(0, 0, 0, cfg.clone()),
            cfg.run.checkpoint_every,
        )?;
        let acc = run_knn();
        logger.log(0, 0.0, &[("eval/knn_top1", acc)])?;
        eprintln!("kNN top-1 before training: {:.2}%", 100.0 * acc);
        Some(acc)
    } else {
        None
    };

    let (mut final_loss, mut last_knn) = (None, None);
    for epoch in start_epoch..cfg.run.epochs as u64 {
        let bar = epoch_bar(epoch, cfg.run.epochs as u64, steps_per_epoch);
        let epoch_start = Instant::now();
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let (mut window_start, mut window_steps, mut data_wait) = (Instant::now(), 0u64, 0.0f64);
        let first_batch = if epoch == start_epoch { start_batch } else { 0 };
        bar.set_position(first_batch as u64);
        let mut epoch_steps = 0u64;
        let mut batches = loader.epoch(epoch, first_batch);
        loop {
            let wait_start = Instant::now();
            let Some(batch) = batches.next() else { break };
            data_wait += wait_start.elapsed().as_secs_f64();
            let lr = schedule.lr(step);

            // ---- forward: both views in one pass (batch norm sees all 2N views), under the
            // run's autocast; then the loss over the 2N projections, outside autocast, in f32
            let out = train_step.forward(&batch.views)?;

            // ---- backward and update
            optimizer.zero_grad()?;
            train_step.backward(&out.loss);
            train_step.update(&mut optimizer, lr);
            step += 1;
            epoch_steps += 1;
            window_steps += 1;
            loss_sum += out.loss.detach();
            bar.inc(1);

            // ---- logging (sync point: reads the loss and the contrastive metrics back)
            if step % cfg.run.log_every as u64 == 0 {
                let loss = out.loss.double_value(&[]);
                let contrast = out.metrics();
                if !loss.is_finite() {
                    bail!("loss became {loss} at step {step}: lower optim.lr or check the data");
                }
                let elapsed = window_start.elapsed().as_secs_f64();
                let images_per_sec = (window_steps * global_batch as u64) as f64 / elapsed;
                let epoch_f =
                    epoch as f64 + (step - epoch * steps_per_epoch) as f64 / steps_per_epoch as f64;
                logger.log(
                    step,
                    epoch_f,
                    &[
                        ("train/loss", loss),
                        ("train/contrast_acc", contrast.top1),
                        ("train/contrast_top5", contrast.top5),
                        ("train/contrast_entropy", contrast.entropy),
                        ("train/lr", lr),
                        ("train/images_per_sec", images_per_sec),
                        (
                            "train/data_wait_ms",
                            1000.0 * data_wait / window_steps as f64,
                        ),
                    ],
                )?;
                bar.set_message(format!(
                    "loss {loss:.4} lr {lr:.4} {images_per_sec:.0} img/s"
                ));
                (window_start, window_steps, data_wait) = (Instant::now(), 0, 0.0);
            }

            // ---- interruption and mid-epoch checkpoints (sync point when they happen)
            let signal = stop.signal();
            let every = cfg.run.checkpoint_every_steps as u64;
            if signal.is_some() || (every > 0 && step % every == 0 && step % steps_per_epoch != 0) {
                let mean_loss = loss_sum.double_value(&[]) / epoch_steps as f64;
                if !mean_loss.is_finite() {
                    bail!("loss became {mean_loss} in epoch {}: stopped, the last good checkpoint is kept", epoch + 1);
                }
                save_checkpoint(
                    run_dir,
                    &vs,
                    &optimizer,
                    Meta::new(
                        step,
                        step / steps_per_epoch,
                        optimizer.state().1,
                        cfg.clone(),
                    ),
                    0,
                )?;
            }
            if let Some(signal) = signal {
                bar.abandon();
                logger.flush()?;
                eprintln!(
                    "stopped by signal {signal} after step {step}: checkpoint written, continue with `simclr train --resume {}`",
                    run_dir.display()
                );
                return Ok(Outcome::Interrupted { signal, step });
            }
        }
        bar.finish_and_clear();

        // ---- epoch end: checkpoint, kNN monitor, summary (sync point)
        let epochs_done = epoch + 1;
        let mean_loss = loss_sum.double_value(&[]) / epoch_steps.max(1) as f64;
        if !mean_loss.is_finite() {
            bail!("loss became {mean_loss} in epoch {epochs_done}: stopped, the last good checkpoint is kept");
        }
        final_loss = Some(mean_loss);
        save_checkpoint(
            run_dir,
            &vs,
            &optimizer,
            Meta::new(step, epochs_done, optimizer.state().1, cfg.clone()),
            cfg.run.checkpoint_every,
        )?;
        let last = epochs_done == cfg.run.epochs as u64;
        let mut line = format!(
            "epoch {epochs_done}/{}: loss {mean_loss:.4}, {:.1}s",
            cfg.run.epochs,
            epoch_start.elapsed().as_secs_f64()
        );
        if last || (cfg.run.knn_every > 0 && epochs_done % cfg.run.knn_every as u64 == 0) {
            let knn_top1 = run_knn();
            logger.log(step, epochs_done as f64, &[("eval/knn_top1", knn_top1)])?;
            line += &format!(", kNN top-1 {:.2}%", 100.0 * knn_top1);
            last_knn = Some(knn_top1);
        }
        logger.flush()?;
        eprintln!("{line}");
    }
    // A resumed run that had already finished trains nothing: measure what it holds.
    let knn_top1 = last_knn.unwrap_or_else(run_knn);

    // ---- the embedding projector of test representations, and the end of the hparams session
    let shown = test_set.len().min(PROJECTOR_IMAGES);
    let projected = test_set.clone().truncated(Some(shown));
    projector::write(
        run_dir,
        &knn::features(&model.encoder, &projected, image_size, device).0,
        &projected,
    )?;
    logger.summary(tensorboard::hparams_end(), step);

    // ---- export the encoder f
    let encoder = run_dir.join("encoder.pt");
    export::torchscript(&mut vs, &model, 0, image_size, &encoder)?;
    logger.flush()?;
    eprintln!(
        "wrote {} (kNN top-1 {:.2}%)",
        encoder.display(),
        100.0 * knn_top1
    );
    Ok(Outcome::Finished(Summary {
        run_dir: run_dir.to_path_buf(),
        encoder,
        steps: step,
        epochs: cfg.run.epochs as u64,
        knn_top1_before,
        knn_top1,
        final_loss,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// What a fresh run shows in TensorBoard before its first step: the resolved configuration as
/// text and as the run's hyper-parameters (whose results are the final kNN accuracy and loss),
/// and the augmentation preview.
fn describe_run(logger: &mut MetricsLogger, cfg: &Config, train_set: &ImageSet) -> Result<()> {
    let cfg_json = serde_json::to_value(cfg)?;
    let markdown = format!("```json\n{}\n```", serde_json::to_string_pretty(&cfg_json)?);
    logger.summary(tensorboard::text("config", &markdown), 0);
    for summary in tensorboard::hparams_start(
        &tensorboard::flatten(&cfg_json),
        &["eval/knn_top1", "train/loss"],
    ) {
        logger.summary(summary, 0);
    }
    let grid = preview::augmentation_grid(
        train_set,
        &cfg.data.augment,
        cfg.data.image_size,
        cfg.run.seed,
        PREVIEW_IMAGES,
    );
    logger.summary(tensorboard::image("augmentation", &grid)?, 0);
    Ok(())
}

/// Creates the run directory and writes `config.json`; a fresh run refuses a directory that
/// already holds one (so nothing is overwritten by accident).
fn prepare_run_dir(cfg: &Config, run_dir: &Path, resuming: bool) -> Result<()> {
    if !resuming && checkpoint::last_path(run_dir).exists() {
        bail!("run directory {} already holds a run: continue it with --resume {0} or choose another --out", run_dir.display());
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run directory {}", run_dir.display()))?;
    let path = run_dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(cfg)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `checkpoints/last.pt`, and keeps a copy `epoch-NNNN.pt` every `every` epochs (of an
/// epoch-end checkpoint).
fn save_checkpoint(
    run_dir: &Path,
    vs: &VarStore,
    optimizer: &Optimizer,
    meta: Meta,
    every: usize,
) -> Result<()> {
    let last = checkpoint::last_path(run_dir);
    let (optim_state, _) = optimizer.state();
    checkpoint::save(&last, &vs.variables(), &optim_state, &meta)?;
    if every > 0 && meta.epoch % every as u64 == 0 {
        let periodic = last.with_file_name(format!("epoch-{:04}.pt", meta.epoch));
        std::fs::copy(&last, &periodic)
            .with_context(|| format!("writing {}", periodic.display()))?;
    }
    Ok(())
}
