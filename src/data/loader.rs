//! Two-view batches for contrastive training, and deterministic evaluation batches.
//!
//! SimCLR (Chen et al. 2020, Algorithm 1) draws a minibatch of N examples and makes two
//! augmented views of each, x̃_{2k-1} and x̃_{2k}; the loss treats the other 2(N-1) views as
//! negatives. A [`Batch`] holds the two views as two tensors, each `[B, 3, S, S]` f32 in
//! [0, 1] (no mean/std normalisation, as in the official code), view 0 and view 1 of sample i
//! at the same row i.
//!
//! Order and sharding: every epoch has one shuffle of the whole dataset ([`epoch_order`]),
//! identical on every rank. The last incomplete global batch is dropped, and rank r takes
//! every `world_size`-th sample starting at r ([`rank_order`]), so the union of the ranks'
//! k-th batches is exactly the k-th contiguous global batch of the shuffle: W ranks with batch
//! B see the same batches as one device with batch W*B.
//!
//! Augmentation of a sample depends only on (seed, epoch, dataset index, view)
//! ([`augment::sample_rng`]), so batches are identical whatever the number of workers.
//!
//! Pipelining: a producer thread builds u8 NHWC batches with a rayon pool of `workers`
//! threads and hands them over a bounded channel, so the loader runs ahead of training by up
//! to `prefetch` batches. Host memory for batches is bounded by
//! `(prefetch + 2) x 2 x B x S x S x 3` bytes: `prefetch` queued, one being built, one being
//! uploaded (e.g. 9 MiB for prefetch 4, B 256, S 32). The consuming thread copies each u8
//! batch to the device and converts it there (4x less host-to-device traffic than f32).

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{ensure, Context, Result};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use rayon::ThreadPool;
use tch::{Device, Kind, Tensor};

use super::augment::{self, AugmentConfig};
use super::resize::{resized_crop, to_u8, CropBox};
use super::{domain, keyed_rng, ImageSet};

/// One training step's input: the dataset indices and their two augmented views.
#[derive(Debug)]
pub struct Batch {
    /// Dataset index of each row.
    pub indices: Vec<usize>,
    /// Two views, each `[B, 3, S, S]` f32 in [0, 1], contiguous, on the loader's device.
    pub views: [Tensor; 2],
}

/// How batches are sized, parallelised and sharded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch on this rank (the global batch is `batch_size * world_size`).
    pub batch_size: usize,
    /// Side S of the square views in pixels.
    pub image_size: usize,
    /// Threads that augment samples in parallel.
    pub workers: usize,
    /// Batches the producer may build ahead of the consumer.
    pub prefetch: usize,
    /// Seed of the shuffle and of every augmentation.
    pub seed: u64,
    /// This process's rank in `0..world_size`.
    pub rank: usize,
    /// Number of data-parallel ranks.
    pub world_size: usize,
}

impl LoaderConfig {
    /// Fails on sizes that cannot produce a batch, naming the field and value.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("image_size", self.image_size),
            ("workers", self.workers),
            ("world_size", self.world_size),
        ] {
            ensure!(v > 0, "loader: {name} {v} must be positive");
        }
        ensure!(
            self.rank < self.world_size,
            "loader: rank {} must be below world_size {}",
            self.rank,
            self.world_size
        );
        Ok(())
    }
}

/// The shuffle of `0..n` for `epoch`: the same on every rank, different every epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut keyed_rng(domain::SHUFFLE, &[seed, epoch]));
    order
}

/// Full batches per rank per epoch (the remainder of the shuffle is dropped), the same on
/// every rank so collective operations stay in step; 0 if either size is 0.
pub fn batches_per_epoch(n: usize, batch_size: usize, world_size: usize) -> usize {
    n.checked_div(batch_size * world_size).unwrap_or(0)
}

/// The samples rank `rank` visits in `epoch`, in order: `batches_per_epoch * batch_size` of them.
pub fn rank_order(
    n: usize,
    seed: u64,
    epoch: u64,
    batch_size: usize,
    rank: usize,
    world_size: usize,
) -> Vec<usize> {
    let kept = batches_per_epoch(n, batch_size, world_size) * batch_size * world_size;
    epoch_order(n, seed, epoch)[..kept]
        .iter()
        .skip(rank)
        .step_by(world_size.max(1))
        .copied()
        .collect()
}

/// Produces the two-view batches of one rank, epoch after epoch.
pub struct TwoViewLoader {
    data: Arc<ImageSet>,
    augment: AugmentConfig,
    cfg: LoaderConfig,
    pool: Arc<ThreadPool>,
    device: Device,
}

impl TwoViewLoader {
    /// Checks both configs and that the data gives at least one batch, and starts the pool.
    pub fn new(
        data: Arc<ImageSet>,
        augment: AugmentConfig,
        cfg: LoaderConfig,
        device: Device,
    ) -> Result<Self> {
        augment.validate()?;
        cfg.validate()?;
        ensure!(!data.is_empty(), "loader: the training set is empty");
        ensure!(
            batches_per_epoch(data.len(), cfg.batch_size, cfg.world_size) > 0,
            "loader: {} images give no full batch of {} on each of {} ranks",
            data.len(),
            cfg.batch_size,
            cfg.world_size
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers)
            .thread_name(|i| format!("simclr-augment-{i}"))
            .build()
            .with_context(|| format!("loader: starting {} worker threads", cfg.workers))?;
        Ok(Self {
            data,
            augment,
            cfg,
            pool: Arc::new(pool),
            device,
        })
    }

    /// Batches per epoch on this rank.
    pub fn batches_per_epoch(&self) -> usize {
        batches_per_epoch(self.data.len(), self.cfg.batch_size, self.cfg.world_size)
    }

    /// The batches of `epoch` from `start_batch` on (a resumed run skips those already done).
    /// Dropping the iterator early stops the producer after the batch it is building.
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> impl Iterator<Item = Batch> {
        let (tx, rx) = sync_channel(self.cfg.prefetch);
        let (data, augment, cfg, pool) = (
            self.data.clone(),
            self.augment.clone(),
            self.cfg.clone(),
            self.pool.clone(),
        );
        let producer = std::thread::Builder::new()
            .name("simclr-loader".into())
            .spawn(move || {
                let order = rank_order(
                    data.len(),
                    cfg.seed,
                    epoch,
                    cfg.batch_size,
                    cfg.rank,
                    cfg.world_size,
                );
                for indices in order.chunks_exact(cfg.batch_size).skip(start_batch) {
                    let views = pool.install(|| build_views(&data, &augment, &cfg, epoch, indices));
                    if tx.send((indices.to_vec(), views)).is_err() {
                        return; // the consumer hung up
                    }
                }
            })
            .expect("loader: the OS refused to start the producer thread");
        EpochIter {
            rx: Some(rx),
            producer: Some(producer),
            size: self.cfg.image_size,
            device: self.device,
        }
    }
}

/// Both views of every sample, u8 NHWC, one sample per parallel task.
fn build_views(
    data: &ImageSet,
    augment: &AugmentConfig,
    cfg: &LoaderConfig,
    epoch: u64,
    indices: &[usize],
) -> [Vec<u8>; 2] {
    let bytes = cfg.image_size * cfg.image_size * 3;
    let mut views = [
        vec![0u8; indices.len() * bytes],
        vec![0u8; indices.len() * bytes],
    ];
    let [v0, v1] = &mut views;
    v0.par_chunks_mut(bytes)
        .zip(v1.par_chunks_mut(bytes))
        .zip(indices)
        .for_each(|((a, b), &i)| {
            for (view, out) in [a, b].into_iter().enumerate() {
                let mut rng = augment::sample_rng(cfg.seed, epoch, i as u64, view as u64);
                let (h, w) = (data.height, data.width);
                augment::augment_view(data.image(i), h, w, cfg.image_size, augment, &mut rng, out);
            }
        });
    views
}

/// A batch as the producer hands it over: dataset indices and both views, u8 NHWC.
type HostBatch = (Vec<usize>, [Vec<u8>; 2]);

/// Receives host batches and turns them into device tensors; stops the producer on drop.
struct EpochIter {
    rx: Option<Receiver<HostBatch>>,
    producer: Option<JoinHandle<()>>,
    size: usize,
    device: Device,
}

impl Iterator for EpochIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        match self.rx.as_ref()?.recv() {
            Ok((indices, [a, b])) => {
                let n = indices.len();
                let views = [
                    to_device_nchw(&a, n, self.size, self.device),
                    to_device_nchw(&b, n, self.size, self.device),
                ];
                Some(Batch { indices, views })
            }
            Err(_) => {
                // The epoch is over, or the producer panicked: re-raise a panic here.
                self.rx = None;
                if let Some(Err(panic)) = self.producer.take().map(JoinHandle::join) {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.rx = None; // makes the producer's next send fail
        if let Some(producer) = self.producer.take() {
            let _ = producer.join(); // a panic was already reported by the thread
        }
    }
}

/// u8 NHWC on the host -> f32 NCHW in [0, 1] on `device`, converted there.
fn to_device_nchw(pixels: &[u8], n: usize, size: usize, device: Device) -> Tensor {
    let s = size as i64;
    Tensor::from_slice(pixels)
        .view([n as i64, s, s, 3])
        .to_device(device)
        .permute([0, 3, 1, 2])
        .contiguous()
        .to_kind(Kind::Float)
        / 255.0
}

/// The evaluation transform over `set`, in order, last partial batch included: each image is
/// resized as a whole to `image_size` square (antialiased bilinear; exactly the identity when
/// it already has that size). Yields (`[b, 3, S, S]` f32 in [0, 1], labels i64 `[b]`) on
/// `device`. The official centre crop of 0.875 is left out: it would cut the synthetic shapes.
///
/// # Panics
/// If `image_size` or `batch_size` is 0 (callers validate their configs first).
pub fn eval_batches(
    set: &ImageSet,
    image_size: usize,
    batch_size: usize,
    device: Device,
) -> impl Iterator<Item = (Tensor, Tensor)> + '_ {
    assert!(
        image_size > 0 && batch_size > 0,
        "eval batches: image_size {image_size} and batch_size {batch_size} must be positive"
    );
    let (h, w) = (set.height, set.width);
    let bytes = image_size * image_size * 3;
    (0..set.len()).step_by(batch_size).map(move |start| {
        let end = (start + batch_size).min(set.len());
        let mut pixels = vec![0u8; (end - start) * bytes];
        for (i, out) in (start..end).zip(pixels.chunks_exact_mut(bytes)) {
            let img = resized_crop(
                set.image(i),
                h,
                w,
                &CropBox::full(h, w),
                image_size,
                image_size,
            );
            to_u8(&img, out);
        }
        let labels = Tensor::from_slice(&set.labels[start..end]).to_device(device);
        (
            to_device_nchw(&pixels, end - start, image_size, device),
            labels,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{generate, SyntheticConfig};
    use std::time::{Duration, Instant};

    fn data(n: usize) -> Arc<ImageSet> {
        let cfg = SyntheticConfig {
            train_size: n,
            test_size: 0,
            image_size: 32,
        };
        Arc::new(generate(&cfg, 0).unwrap().train)
    }

    fn cfg(batch_size: usize, workers: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            image_size: 24,
            workers,
            prefetch: 2,
            seed: 3,
            rank: 0,
            world_size: 1,
        }
    }

    fn loader(n: usize, c: LoaderConfig) -> TwoViewLoader {
        TwoViewLoader::new(data(n), AugmentConfig::default(), c, Device::Cpu).unwrap()
    }

    #[test]
    fn epoch_order_is_a_permutation_that_changes_every_epoch() {
        let a = epoch_order(100, 1, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 1, 0));
        assert_ne!(a, epoch_order(100, 1, 1));
        assert_ne!(a, epoch_order(100, 2, 0));
    }

    #[test]
    fn rank_shards_are_disjoint_equal_and_form_the_global_batches() {
        let (n, b, w) = (103, 4, 3);
        assert_eq!(batches_per_epoch(n, b, w), 8);
        assert_eq!(batches_per_epoch(n, 0, w), 0);
        let shards: Vec<Vec<usize>> = (0..w).map(|r| rank_order(n, 5, 2, b, r, w)).collect();
        let mut all: Vec<usize> = shards.concat();
        assert!(shards.iter().all(|s| s.len() == 8 * b));
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8 * b * w, "shards overlap");
        let order = epoch_order(n, 5, 2);
        for k in 0..8 {
            let mut union: Vec<usize> = shards
                .iter()
                .flat_map(|s| &s[k * b..(k + 1) * b])
                .copied()
                .collect();
            let mut global = order[k * b * w..(k + 1) * b * w].to_vec();
            union.sort();
            global.sort();
            assert_eq!(union, global, "global batch {k}");
        }
    }

    #[test]
    fn config_errors_name_the_value() {
        let err = |c: LoaderConfig| {
            TwoViewLoader::new(data(10), AugmentConfig::default(), c, Device::Cpu)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(LoaderConfig {
            workers: 0,
            ..cfg(2, 1)
        })
        .contains("workers 0"));
        assert!(err(LoaderConfig {
            rank: 2,
            world_size: 2,
            ..cfg(2, 1)
        })
        .contains("rank 2"));
        assert!(err(cfg(16, 1)).contains("10 images give no full batch of 16"));
    }

    #[test]
    fn batches_have_the_right_shape_range_and_differing_views() {
        let l = loader(40, cfg(8, 2));
        let batches: Vec<Batch> = l.epoch(0, 0).collect();
        assert_eq!(batches.len(), 5);
        assert_eq!(l.batches_per_epoch(), 5);
        for b in &batches {
            assert_eq!(b.indices.len(), 8);
            for v in &b.views {
                assert_eq!(v.size(), [8, 3, 24, 24]);
                assert_eq!(v.kind(), Kind::Float);
                assert!(v.is_contiguous());
                assert!(v.min().double_value(&[]) >= 0.0 && v.max().double_value(&[]) <= 1.0);
            }
            assert!(!b.views[0].equal(&b.views[1]));
        }
    }

    #[test]
    fn batches_do_not_depend_on_the_worker_count_and_resume_skips_exactly() {
        let one: Vec<Batch> = loader(48, cfg(8, 1)).epoch(1, 0).collect();
        let two: Vec<Batch> = loader(48, cfg(8, 2)).epoch(1, 2).collect();
        assert_eq!(two.len(), one.len() - 2);
        for (a, b) in one[2..].iter().zip(&two) {
            assert_eq!(a.indices, b.indices);
            assert!(a.views[0].equal(&b.views[0]) && a.views[1].equal(&b.views[1]));
        }
    }

    #[test]
    fn dropping_the_iterator_mid_epoch_returns_promptly() {
        let l = loader(
            512,
            LoaderConfig {
                prefetch: 1,
                ..cfg(16, 2)
            },
        );
        let mut it = l.epoch(0, 0);
        assert!(it.next().is_some());
        let t = Instant::now();
        drop(it);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "drop took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn eval_batches_are_in_order_with_a_partial_last_batch() {
        let set = data(10);
        let batches: Vec<(Tensor, Tensor)> = eval_batches(&set, 32, 4, Device::Cpu).collect();
        assert_eq!(
            batches.iter().map(|(x, _)| x.size()[0]).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        let labels: Vec<i64> = Vec::try_from(Tensor::cat(
            &batches.iter().map(|(_, y)| y).collect::<Vec<_>>(),
            0,
        ))
        .unwrap();
        assert_eq!(labels, set.labels);
        // Same size: the images themselves, scaled to [0, 1].
        let first = (&batches[0].0.get(0) * 255.0)
            .round()
            .permute([1, 2, 0])
            .to_kind(Kind::Uint8);
        assert_eq!(
            Vec::<u8>::try_from(first.flatten(0, -1)).unwrap(),
            set.image(0)
        );
        let (small, _) = eval_batches(&set, 16, 4, Device::Cpu).next().unwrap();
        assert_eq!(small.size(), [4, 3, 16, 16]);
    }
}
