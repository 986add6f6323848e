//! `simclr bench loader`: throughput of the two-view training loader alone (read, decode,
//! two augmented views, u8 -> f32 NCHW), the figure to set beside torchvision's
//! (`scripts/bench/loader_torchvision.py`, run side by side by `scripts/bench/loader.sh`).

use std::time::Instant;

use anyhow::{ensure, Result};
use serde::Serialize;
use tch::Device;

use crate::data::augment::AugmentConfig;
use crate::data::loader::{LoaderConfig, TwoViewLoader};
use crate::data::{self, DataSpec};

/// What to measure.
#[derive(Debug, Clone)]
pub struct LoaderBench {
    pub data: DataSpec,
    pub workers: usize,
    pub batch_size: usize,
    pub image_size: usize,
    /// Batches timed, after `warmup` untimed ones.
    pub batches: usize,
    pub warmup: usize,
    pub prefetch: usize,
    pub augment: AugmentConfig,
}

/// The measurement (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct LoaderReport {
    pub data: String,
    pub workers: usize,
    pub batch_size: usize,
    pub image_size: usize,
    pub batches: usize,
    /// Source images per second, each giving two views.
    pub images_per_sec: f64,
    pub seconds: f64,
    /// Peak resident memory of the process (VmHWM), MiB; None where /proc is not available.
    pub peak_rss_mib: Option<f64>,
    pub skipped_images: usize,
}

/// Runs the loader over the pre-training set for `warmup + batches` batches (epoch after
/// epoch if needed) and times the last `batches`.
pub fn run(bench: &LoaderBench) -> Result<LoaderReport> {
    ensure!(bench.batches > 0, "--batches must be >= 1");
    let splits = data::load(&bench.data, 0)?;
    let set = splits.pretraining()?;
    let cfg = LoaderConfig {
        batch_size: bench.batch_size,
        image_size: bench.image_size,
        workers: bench.workers,
        prefetch: bench.prefetch,
        seed: 0,
        rank: 0,
        world_size: 1,
        max_skipped_fraction: 1.0,
    };
    let loader = TwoViewLoader::new(set, bench.augment.clone(), cfg, Device::Cpu)?;
    let wanted = bench.warmup + bench.batches;
    let (mut seen, mut skipped, mut started) = (0, 0, None);
    'epochs: for epoch in 0.. {
        for batch in loader.epoch(epoch, 0) {
            let batch = batch?;
            skipped += batch.skipped;
            seen += 1;
            if seen == bench.warmup {
                started = Some(Instant::now());
            }
            if seen == wanted {
                break 'epochs;
            }
        }
    }
    let seconds = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(LoaderReport {
        data: bench.data.to_string(),
        workers: bench.workers,
        batch_size: bench.batch_size,
        image_size: bench.image_size,
        batches: bench.batches,
        images_per_sec: (bench.batches * bench.batch_size) as f64 / seconds.max(1e-9),
        seconds,
        peak_rss_mib: super::peak_memory(Device::Cpu)
            .ok()
            .map(|peak| peak.bytes as f64 / (1024.0 * 1024.0)),
        skipped_images: skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_requested_batches_on_the_synthetic_set() {
        let bench = LoaderBench {
            data: DataSpec::Synthetic,
            workers: 1,
            batch_size: 16,
            image_size: 16,
            batches: 3,
            warmup: 1,
            prefetch: 2,
            augment: AugmentConfig::default(),
        };
        let report = run(&bench).unwrap();
        assert_eq!((report.batches, report.skipped_images), (3, 0));
        assert!(report.images_per_sec > 0.0 && report.seconds > 0.0);
        assert!(report.peak_rss_mib.unwrap() > 1.0);
    }
}
