//! The training loop: SimCLR pre-training (Chen et al. 2020, Algorithm 1) of encoder f and
//! head g with the contrastive objective (NT-Xent by default), reading top to bottom like nanoGPT's `train.py`:
//! set-up -> kNN before training -> per step: learning rate, forward both views, loss,
//! backward, optimiser step, logging -> per epoch: checkpoint, kNN -> export `encoder.pt`.
//!
//! GPU->CPU reads happen only at logging points and epoch ends (marked "sync point").
//!
//! Data parallel (a [`ProcessGroup`] of W ranks, see [`crate::dist`]): every rank starts from
//! rank 0's variables, takes its own shard of each epoch (the k-th batches of all ranks make the
//! k-th global batch of batch_size x W images), runs batch norm over the global batch
//! (`run.sync_bn`) and the loss against the global batch's projections (`run.global_negatives`),
//! and averages its gradients with the others before the step. The learning rate and schedule
//! follow the global batch. Only rank 0 evaluates, logs (metrics averaged over the ranks),
//! checkpoints and exports; a stop signal is agreed on at logging points, so that all ranks
//! stop after the same step.
use crate::checkpoint::{self, Checkpoint, Meta};
use crate::config::Config;
use crate::data::loader::{EvalTransform, LoaderConfig, TwoViewLoader};
use crate::data::{self, preview, Dataset, Subset};
use crate::dist::ddp::{self, GradientBuckets, BUCKET_BYTES};
use crate::dist::{ProcessGroup, ReduceOp};
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
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

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
    /// kNN top-1 of the encoder before the first step (None for a resumed run, and on ranks
    /// other than 0, which do not evaluate).
    pub knn_top1_before: Option<f64>,
    /// kNN top-1 at the end (None on ranks other than 0).
    pub knn_top1: Option<f64>,
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
/// until `stop` reports a signal; data parallel with the other ranks of `group` when given
/// (its device is the one trained on).
pub fn run(
    cfg: &Config,
    run_dir: &Path,
    resume: Option<Checkpoint>,
    stop: &StopRequest,
    group: Option<Arc<ProcessGroup>>,
) -> Result<Outcome> {
    let started = Instant::now();
    cfg.validate()?;
    let device = match &group {
        Some(group) => group.device(),
        None => cfg.run.device.resolve()?,
    };
    let (rank, world_size) = group
        .as_ref()
        .map_or((0, 1), |g| (g.rank(), g.world_size()));
    let lead = rank == 0; // the rank that evaluates, logs, checkpoints and exports
    tch::manual_seed(cfg.run.seed as i64);
    if lead {
        prepare_run_dir(cfg, run_dir, resume.is_some())?;
    }

    // ---- data
    // Pre-training may add unlabeled images (STL-10); the kNN bank is the labelled train split.
    let splits = data::load(&cfg.data.spec, cfg.run.seed)?;
    let train_set = Subset::first(splits.pretraining()?, cfg.data.max_train_images);
    let bank_set = Subset::first(splits.train.clone(), cfg.data.max_train_images);
    let test_set = Subset::first(splits.test.clone(), cfg.data.max_test_images);
    let image_size = cfg.data.image_size;
    let eval_transform = EvalTransform::for_data(&cfg.data.spec, image_size);
    let loader_cfg = LoaderConfig {
        batch_size: cfg.run.batch_size,
        image_size,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
        seed: cfg.run.seed,
        rank,
        world_size,
        max_skipped_fraction: cfg.data.max_skipped_fraction,
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
    let mut model = SimClr::new(&vs.root(), &cfg.model, image_size);
    let sync_bn = group
        .as_ref()
        .filter(|_| cfg.run.sync_bn.unwrap_or(world_size > 1));
    if let Some(group) = sync_bn {
        model.synchronize_batch_norm(group);
    }
    let objective = Objective::new(&vs.root(), &cfg.objective, cfg.model.proj_dim);
    step::prepare_for_device(&vs)?;
    let mut optimizer = Optimizer::new(&vs, &cfg.optim);
    let mut train_step = TrainStep::new(&model, &objective, device, cfg.run.precision);
    let global_batch = cfg.run.batch_size * world_size;
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
    // ---- replicas: rank 0's variables everywhere (a fresh or a resumed run alike)
    let buckets = match &group {
        Some(group) => {
            ddp::broadcast_variables(&vs, group)?;
            Some(GradientBuckets::new(&vs, BUCKET_BYTES))
        }
        None => None,
    };
    let negatives = group.as_deref().filter(|_| cfg.run.global_negatives);
    let mut logger = if lead {
        MetricsLogger::new(run_dir)?
    } else {
        MetricsLogger::silent()
    };
    if lead {
        eprintln!(
        "training {:?} x{} on {} ({} train / {} test images), {} epochs x {} steps, batch {}, peak lr {:.3}, device {:?}",
        cfg.model.arch, cfg.model.width, cfg.data.spec, train_set.len(), test_set.len(), cfg.run.epochs, steps_per_epoch, global_batch, schedule.peak, device
    );
        let obj = &cfg.objective;
        eprintln!(
            "objective {:?} with {:?} similarity (normalize {}), temperature {}, margin {}",
            obj.loss, obj.similarity, obj.normalize, obj.temperature, obj.margin
        );
        if world_size > 1 {
            eprintln!(
                "data parallel over {world_size} ranks: batch {} per rank, sync batch norm {}, global negatives {}",
                cfg.run.batch_size, sync_bn.is_some(), negatives.is_some()
            );
        }
    }

    // ---- kNN before training: the baseline the representation must beat
    let run_knn = || {
        knn::monitor(
            &model.encoder,
            bank_set.as_ref(),
            test_set.as_ref(),
            eval_transform,
            cfg.run.knn_k,
            device,
        )
    };
    let knn_top1_before = if resume.is_none() && lead {
        describe_run(&mut logger, cfg, train_set.as_ref())?;
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

    let (mut final_loss, mut last_knn, mut skipped_images) = (None, None, 0usize);
    let mut skipped_steps = 0u64;
    for epoch in start_epoch..cfg.run.epochs as u64 {
        let bar = if lead {
            epoch_bar(epoch, cfg.run.epochs as u64, steps_per_epoch)
        } else {
            ProgressBar::hidden()
        };
        let epoch_start = Instant::now();
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let (mut window_start, mut window_steps, mut data_wait) = (Instant::now(), 0u64, 0.0f64);
        let first_batch = if epoch == start_epoch { start_batch } else { 0 };
        bar.set_position(first_batch as u64);
        let mut epoch_updates = 0u64;
        let mut batches = loader.epoch(epoch, first_batch);
        loop {
            let wait_start = Instant::now();
            let Some(batch) = batches.next() else { break };
            let batch = batch?;
            data_wait += wait_start.elapsed().as_secs_f64();
            skipped_images += batch.skipped;
            let lr = schedule.lr(step);

            // ---- forward: both views in one pass (batch norm sees all 2N views), under the
            // run's autocast; then the loss over the 2N projections (against every rank's with
            // global negatives), outside autocast, in f32
            let z = train_step.project(&batch.views)?;
            if let Some(group) = &group {
                group.check()?; // a synchronized batch norm's collective may have failed
            }
            let z = z.chunk(2, 0); // 2 x [N, proj_dim]
            let out = match negatives {
                Some(group) => objective.forward_global(&z[0], &z[1], group)?,
                None => objective.forward(&z[0], &z[1])?,
            };

            // ---- backward, gradients averaged over the ranks, update; with --skip-nonfinite a
            // NaN/Inf loss (on any rank) skips the update instead (read back every step then: a
            // sync point)
            let skip = cfg.run.skip_nonfinite
                && !mean_over_ranks(group.as_deref(), [out.loss.double_value(&[])])?[0].is_finite();
            if skip {
                skipped_steps += 1;
                eprintln!(
                    "warning: non-finite loss at step {}: update skipped ({skipped_steps} so far)",
                    step + 1
                );
            } else {
                optimizer.zero_grad()?;
                train_step.backward(&out.loss);
                if let (Some(group), Some(buckets)) = (&group, &buckets) {
                    group.check()?; // collectives inside the backward pass
                    buckets.average_gradients(group)?;
                }
                train_step.update(&mut optimizer, lr);
                loss_sum += out.loss.detach();
                epoch_updates += 1;
            }
            step += 1;
            window_steps += 1;
            bar.inc(1);

            // ---- logging (sync point: reads the loss and the contrastive metrics back, averaged
            // over the ranks)
            let log_point = step % cfg.run.log_every as u64 == 0;
            if log_point {
                let contrast = out.metrics();
                let [loss, top1, top5, entropy] = mean_over_ranks(
                    group.as_deref(),
                    [
                        out.loss.double_value(&[]),
                        contrast.top1,
                        contrast.top5,
                        contrast.entropy,
                    ],
                )?;
                if !loss.is_finite() && !skip {
                    bail!("loss became {loss} at step {step}: stopped, the last good checkpoint is kept (lower optim.lr, check the data, or --skip-nonfinite)");
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
                        ("train/contrast_acc", top1),
                        ("train/contrast_top5", top5),
                        ("train/contrast_entropy", entropy),
                        ("train/lr", lr),
                        ("train/images_per_sec", images_per_sec),
                        (
                            "train/data_wait_ms",
                            1000.0 * data_wait / window_steps as f64,
                        ),
                        ("data/skipped_images", skipped_images as f64),
                        ("train/skipped_steps", skipped_steps as f64),
                    ],
                )?;
                bar.set_message(format!(
                    "loss {loss:.4} lr {lr:.4} {images_per_sec:.0} img/s"
                ));
                (window_start, window_steps, data_wait) = (Instant::now(), 0, 0.0);
            }

            // ---- interruption and mid-epoch checkpoints (sync point when they happen)
            let signal = agreed_signal(stop, group.as_deref(), log_point)?;
            let every = cfg.run.checkpoint_every_steps as u64;
            let due = every > 0 && step % every == 0 && step % steps_per_epoch != 0;
            if lead && (signal.is_some() || due) {
                // (a sum over no update is 0: nothing to check, the weights are unchanged)
                let mean_loss = loss_sum.double_value(&[]) / epoch_updates.max(1) as f64;
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
                if lead {
                    eprintln!(
                        "stopped by signal {signal} after step {step}: checkpoint written, continue with `simclr train --resume {}`",
                        run_dir.display()
                    );
                }
                return Ok(Outcome::Interrupted { signal, step });
            }
        }
        bar.finish_and_clear();

        // ---- epoch end: checkpoint, kNN monitor, summary (sync point)
        let epochs_done = epoch + 1;
        if epoch_updates == 0 {
            bail!("every step of epoch {epochs_done} had a non-finite loss ({skipped_steps} skipped): stopped, the last good checkpoint is kept");
        }
        let [mean_loss] = mean_over_ranks(
            group.as_deref(),
            [loss_sum.double_value(&[]) / epoch_updates as f64],
        )?;
        if !mean_loss.is_finite() {
            bail!("loss became {mean_loss} in epoch {epochs_done}: stopped, the last good checkpoint is kept");
        }
        final_loss = Some(mean_loss);
        if !lead {
            continue;
        }
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
    if !lead {
        return Ok(Outcome::Finished(Summary {
            run_dir: run_dir.to_path_buf(),
            encoder: run_dir.join("encoder.pt"),
            steps: step,
            epochs: cfg.run.epochs as u64,
            knn_top1_before,
            knn_top1: None,
            final_loss,
            seconds: started.elapsed().as_secs_f64(),
        }));
    }
    // A resumed run that had already finished trains nothing: measure what it holds.
    let knn_top1 = last_knn.unwrap_or_else(run_knn);

    // ---- the embedding projector of test representations, and the end of the hparams session
    projector::write(
        run_dir,
        &model.encoder,
        test_set.clone(),
        eval_transform,
        PROJECTOR_IMAGES,
        device,
    )?;
    logger.summary(tensorboard::hparams_end(), step)?;

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
        knn_top1: Some(knn_top1),
        final_loss,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// `values` averaged over the ranks of `group` (unchanged without one); a collective, so every
/// rank calls it at the same point (sync point).
fn mean_over_ranks<const K: usize>(
    group: Option<&ProcessGroup>,
    values: [f64; K],
) -> Result<[f64; K]> {
    let Some(group) = group else {
        return Ok(values);
    };
    let mut tensor = Tensor::from_slice(&values).to_device(group.device());
    group.all_reduce(&mut tensor, ReduceOp::Avg)?;
    let tensor = tensor.to_device(Device::Cpu);
    Ok(std::array::from_fn(|i| tensor.double_value(&[i as i64])))
}

/// The signal that stops training after this step. Alone, as soon as one arrives; data
/// parallel, the largest one any rank has seen, looked at only at logging points (`check`) so
/// that every rank stops after the same step without a collective in every step.
fn agreed_signal(
    stop: &StopRequest,
    group: Option<&ProcessGroup>,
    check: bool,
) -> Result<Option<i32>> {
    let Some(group) = group else {
        return Ok(stop.signal());
    };
    if !check {
        return Ok(None);
    }
    let mut signal =
        Tensor::from_slice(&[stop.signal().unwrap_or(0) as i64]).to_device(group.device());
    group.all_reduce(&mut signal, ReduceOp::Max)?;
    let signal = signal.int64_value(&[0]) as i32;
    Ok((signal > 0).then_some(signal))
}

/// What a fresh run shows in TensorBoard before its first step: the resolved configuration as
/// text and as the run's hyper-parameters (whose results are the final kNN accuracy and loss),
/// and the augmentation preview.
fn describe_run(logger: &mut MetricsLogger, cfg: &Config, train_set: &dyn Dataset) -> Result<()> {
    let cfg_json = serde_json::to_value(cfg)?;
    let markdown = format!("```json\n{}\n```", serde_json::to_string_pretty(&cfg_json)?);
    logger.summary(tensorboard::text("config", &markdown), 0)?;
    for summary in tensorboard::hparams_start(
        &tensorboard::flatten(&cfg_json),
        &["eval/knn_top1", "train/loss"],
    ) {
        logger.summary(summary, 0)?;
    }
    let grid = preview::augmentation_grid(
        train_set,
        &cfg.data.augment,
        cfg.data.image_size,
        cfg.run.seed,
        PREVIEW_IMAGES,
    )?;
    logger.summary(tensorboard::image("augmentation", &grid)?, 0)?;
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
/// epoch-end checkpoint), the newest `run.keep_last` of them.
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
        checkpoint::keep_periodic(&last, meta.epoch, meta.config.run.keep_last)?;
    }
    Ok(())
}
