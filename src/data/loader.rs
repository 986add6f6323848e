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
//! Unreadable images: a sample whose image cannot be read or decoded (a truncated JPEG, a
//! zero-byte file, a decompression bomb) is replaced by the next readable image of the dataset
//! (index i+1, i+2, ...), so batches keep their size and stay identical across ranks and
//! thread counts; it is counted ([`Batch::skipped`], logged as `data/skipped_images`) and the
//! first few are reported on stderr. When more than `max_skipped_fraction` of the dataset is
//! unreadable within one epoch, the epoch ends with an error instead.
//!
//! Pipelining: a producer thread builds u8 NHWC batches with a rayon pool of `workers`
//! threads, writing the views straight into the tensors that go to the device (in pinned
//! memory when the device is CUDA, so the upload is an asynchronous DMA), and hands them over a
//! bounded channel, so the loader runs ahead of training by up to `prefetch` batches. Host
//! memory for batches is bounded by `(prefetch + 2) x 2 x B x S x S x 3` bytes: `prefetch`
//! queued, one being built, one being uploaded (e.g. 9 MiB for prefetch 4, B 256, S 32; 294
//! MiB for B 256, S 224), plus one decoded source image per worker. The consuming thread
//! converts each u8 batch to f32 NCHW on the device (4x less host-to-device traffic than f32).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use rayon::ThreadPool;
use tch::{Device, Kind, Tensor};

use super::augment::{self, AugmentConfig};
use super::resize::ResizeFilter;
use super::{domain, keyed_rng, Dataset, Image};

/// Unreadable images reported on stderr by one loader; later ones are only counted.
const REPORTED_FAILURES: usize = 5;

/// One training step's input: the dataset indices and their two augmented views.
#[derive(Debug)]
pub struct Batch {
    /// Dataset index of each row.
    pub indices: Vec<usize>,
    /// Two views, each `[B, 3, S, S]` f32 in [0, 1], contiguous, on the loader's device.
    pub views: [Tensor; 2],
    /// Rows whose image could not be read and was replaced by the next readable one.
    pub skipped: usize,
}

/// How batches are sized, parallelised and sharded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch on this rank (the global batch is `batch_size * world_size`).
    pub batch_size: usize,
    /// Side S of the square views in pixels.
    pub image_size: usize,
    /// Threads that read and augment samples in parallel.
    pub workers: usize,
    /// Batches the producer may build ahead of the consumer.
    pub prefetch: usize,
    /// Seed of the shuffle and of every augmentation.
    pub seed: u64,
    /// This process's rank in `0..world_size`.
    pub rank: usize,
    /// Number of data-parallel ranks.
    pub world_size: usize,
    /// Share of the dataset that may be unreadable within one epoch before the run stops.
    pub max_skipped_fraction: f64,
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
        let f = self.max_skipped_fraction;
        ensure!(
            (0.0..=1.0).contains(&f),
            "loader: max_skipped_fraction {f} must be in [0, 1]"
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
    data: Arc<dyn Dataset>,
    augment: AugmentConfig,
    cfg: LoaderConfig,
    pool: Arc<ThreadPool>,
    device: Device,
    reported: Arc<AtomicUsize>,
}

impl TwoViewLoader {
    /// Checks both configs and that the data gives at least one batch, and starts the pool.
    pub fn new(
        data: Arc<dyn Dataset>,
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
            reported: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Batches per epoch on this rank.
    pub fn batches_per_epoch(&self) -> usize {
        batches_per_epoch(self.data.len(), self.cfg.batch_size, self.cfg.world_size)
    }

    /// The batches of `epoch` from `start_batch` on (a resumed run skips those already done);
    /// an item is an error when too much of the dataset is unreadable (see the module docs).
    /// Dropping the iterator early stops the producer after the batch it is building.
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> impl Iterator<Item = Result<Batch>> {
        let (tx, rx) = sync_channel(self.cfg.prefetch);
        let producer = Producer {
            data: self.data.clone(),
            augment: self.augment.clone(),
            cfg: self.cfg.clone(),
            pinned: self.device.is_cuda(),
            reported: self.reported.clone(),
            epoch,
        };
        let pool = self.pool.clone();
        let thread = std::thread::Builder::new()
            .name("simclr-loader".into())
            .spawn(move || producer.run(&pool, start_batch, |batch| tx.send(batch).is_ok()))
            .expect("loader: the OS refused to start the producer thread");
        EpochIter {
            rx: Some(rx),
            producer: Some(thread),
            device: self.device,
        }
    }
}

/// Everything the producer thread of one epoch needs.
struct Producer {
    data: Arc<dyn Dataset>,
    augment: AugmentConfig,
    cfg: LoaderConfig,
    pinned: bool,
    reported: Arc<AtomicUsize>,
    epoch: u64,
}

impl Producer {
    /// Builds the epoch's batches from `start_batch` on and hands each to `send` until it
    /// returns false (the consumer hung up), the epoch ends, or an error was sent.
    fn run(&self, pool: &ThreadPool, start_batch: usize, send: impl Fn(Result<HostBatch>) -> bool) {
        let cfg = &self.cfg;
        let order = rank_order(
            self.data.len(),
            cfg.seed,
            self.epoch,
            cfg.batch_size,
            cfg.rank,
            cfg.world_size,
        );
        let allowed = (cfg.max_skipped_fraction * self.data.len() as f64).floor() as usize;
        let mut skipped_in_epoch = 0;
        for indices in order.chunks_exact(cfg.batch_size).skip(start_batch) {
            let batch = pool.install(|| self.build(indices));
            if let Ok(b) = &batch {
                skipped_in_epoch += b.skipped;
            }
            let batch = batch.and_then(|b| {
                if skipped_in_epoch > allowed {
                    bail!(
                        "{skipped_in_epoch} unreadable images in epoch {} of {} (more than max_skipped_fraction {} of the dataset): fix or remove them",
                        self.epoch + 1,
                        self.data.len(),
                        cfg.max_skipped_fraction
                    );
                }
                Ok(b)
            });
            let failed = batch.is_err();
            if !send(batch) || failed {
                return;
            }
        }
    }

    /// Both views of every sample, u8 NHWC, one sample per parallel task.
    fn build(&self, indices: &[usize]) -> Result<HostBatch> {
        let s = self.cfg.image_size;
        let bytes = s * s * 3;
        let views = [0, 1].map(|_| host_tensor(indices.len(), s, self.pinned));
        let mut buffers = views.each_ref().map(|v| {
            // SAFETY: each tensor was just allocated here, contiguous u8 of exactly
            // `len * bytes` bytes, and nothing else refers to it until it is sent.
            unsafe {
                std::slice::from_raw_parts_mut(v.data_ptr() as *mut u8, indices.len() * bytes)
            }
        });
        let [v0, v1] = &mut buffers;
        let skipped: Result<Vec<bool>> = v0
            .par_chunks_mut(bytes)
            .zip(v1.par_chunks_mut(bytes))
            .zip(indices)
            .map(|((a, b), &i)| {
                let (image, substituted) = self.readable_image(i)?;
                for (view, out) in [a, b].into_iter().enumerate() {
                    let mut rng =
                        augment::sample_rng(self.cfg.seed, self.epoch, i as u64, view as u64);
                    let (h, w) = (image.height, image.width);
                    augment::augment_view(&image.pixels, h, w, s, &self.augment, &mut rng, out);
                }
                Ok(substituted)
            })
            .collect();
        Ok(HostBatch {
            indices: indices.to_vec(),
            skipped: skipped?.into_iter().filter(|&s| s).count(),
            views,
        })
    }

    /// Image `i`, or else the next readable one after it (true when substituted); an error
    /// only when no image of the dataset can be read.
    fn readable_image(&self, i: usize) -> Result<(Image<'_>, bool)> {
        let n = self.data.len();
        let mut first_error = None;
        for k in 0..n {
            match self.data.image((i + k) % n) {
                Ok(image) => return Ok((image, k > 0)),
                Err(e) if k == 0 => {
                    if self.reported.fetch_add(1, Ordering::Relaxed) < REPORTED_FAILURES {
                        eprintln!("warning: skipping an unreadable image: {e:#}");
                    }
                    first_error = Some(e);
                }
                Err(_) => {}
            }
        }
        Err(first_error
            .unwrap_or_else(|| anyhow::anyhow!("empty dataset"))
            .context("no image of the dataset could be read"))
    }
}

/// An uninitialised `[n, s, s, 3]` u8 host tensor, page-locked when it will go to a GPU.
fn host_tensor(n: usize, s: usize, pinned: bool) -> Tensor {
    let t = Tensor::empty(
        [n as i64, s as i64, s as i64, 3],
        (Kind::Uint8, Device::Cpu),
    );
    if pinned {
        t.pin_memory(Device::Cuda(0))
    } else {
        t
    }
}

/// A batch as the producer hands it over: dataset indices and both views, u8 NHWC on the host.
struct HostBatch {
    indices: Vec<usize>,
    views: [Tensor; 2],
    skipped: usize,
}

/// Receives host batches and turns them into device tensors; stops the producer on drop.
struct EpochIter {
    rx: Option<Receiver<Result<HostBatch>>>,
    producer: Option<JoinHandle<()>>,
    device: Device,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        match self.rx.as_ref()?.recv() {
            Ok(Ok(host)) => Some(Ok(Batch {
                indices: host.indices,
                views: host.views.map(|v| to_device_nchw(&v, self.device)),
                skipped: host.skipped,
            })),
            Ok(Err(e)) => {
                self.rx = None;
                Some(Err(e))
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

/// u8 NHWC on the host -> f32 NCHW in [0, 1] on `device`, converted there (the upload is
/// asynchronous from pinned memory) into one new tensor: the layout change and the
/// conversion are one copy, the scaling is in place.
fn to_device_nchw(pixels: &Tensor, device: Device) -> Tensor {
    let on_device = pixels.to_device_(device, Kind::Uint8, true, false);
    let [n, h, w, c] = on_device.size()[..] else {
        unreachable!("batches are built as [n, h, w, 3]")
    };
    let mut out = Tensor::empty([n, c, h, w], (Kind::Float, device));
    out.copy_(&on_device.permute([0, 3, 1, 2]));
    let _ = out.g_div_scalar_(255.0);
    out
}

/// The deterministic input transform of every evaluation: view size and centre-crop share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalTransform {
    /// Side S of the square inputs.
    pub image_size: usize,
    /// Share of the shorter side kept ([`super::DataSpec::eval_crop_fraction`]).
    pub crop_fraction: f64,
}

impl EvalTransform {
    /// The transform for `spec` at `image_size`.
    pub fn for_data(spec: &super::DataSpec, image_size: usize) -> Self {
        Self {
            image_size,
            crop_fraction: spec.eval_crop_fraction(),
        }
    }
}

/// One evaluation batch: inputs, labels and the dataset indices they come from.
pub struct EvalBatch {
    /// `[b, 3, S, S]` f32 in [0, 1].
    pub images: Tensor,
    /// `[b]` i64.
    pub labels: Tensor,
    /// Dataset index of each row.
    pub indices: Vec<usize>,
}

/// The evaluation transform ([`augment::eval_view`], antialiased bilinear) over `set`, in order,
/// last partial batch included, images decoded in parallel (rayon's global pool).
/// An unreadable image is left out of its batch (reported on stderr) rather than stopping an
/// evaluation.
///
/// # Panics
/// If `image_size` or `batch_size` is 0 (callers validate their configs first).
pub fn eval_batches<'a>(
    set: &'a dyn Dataset,
    transform: EvalTransform,
    batch_size: usize,
    device: Device,
) -> impl Iterator<Item = EvalBatch> + 'a {
    let EvalTransform {
        image_size,
        crop_fraction,
    } = transform;
    assert!(
        image_size > 0 && batch_size > 0,
        "eval batches: image_size {image_size} and batch_size {batch_size} must be positive"
    );
    let bytes = image_size * image_size * 3;
    (0..set.len()).step_by(batch_size).map(move |start| {
        let end = (start + batch_size).min(set.len());
        // Rendered in place; the rows of unreadable images are dropped afterwards.
        let mut pixels = vec![0u8; (end - start) * bytes];
        let readable: Vec<bool> = pixels
            .par_chunks_mut(bytes)
            .zip(start..end)
            .map(|(out, i)| match set.image(i) {
                Ok(image) => {
                    let (h, w) = (image.height, image.width);
                    let filter = ResizeFilter::Bilinear;
                    augment::eval_view(&image.pixels, h, w, image_size, crop_fraction, filter, out);
                    true
                }
                Err(e) => {
                    eprintln!("warning: left out of evaluation: {e:#}");
                    false
                }
            })
            .collect();
        let indices: Vec<usize> = (start..end).filter(|&i| readable[i - start]).collect();
        if indices.len() < end - start {
            pixels = pixels
                .chunks_exact(bytes)
                .zip(&readable)
                .filter(|(_, &ok)| ok)
                .flat_map(|(row, _)| row.iter().copied())
                .collect();
        }
        let labels: Vec<i64> = indices.iter().map(|&i| set.label(i)).collect();
        let s = image_size as i64;
        let host = Tensor::from_slice(&pixels).view([indices.len() as i64, s, s, 3]);
        EvalBatch {
            images: to_device_nchw(&host, device),
            labels: Tensor::from_slice(&labels).to_device(device),
            indices,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{generate, SyntheticConfig};
    use crate::data::ImageSet;
    use std::time::{Duration, Instant};

    fn data(n: usize) -> Arc<dyn Dataset> {
        Arc::new(image_set(n))
    }

    fn image_set(n: usize) -> ImageSet {
        let cfg = SyntheticConfig {
            train_size: n,
            test_size: 0,
            image_size: 32,
        };
        generate(&cfg, 0).unwrap().train
    }

    fn transform(image_size: usize, crop_fraction: f64) -> EvalTransform {
        EvalTransform {
            image_size,
            crop_fraction,
        }
    }

    fn epoch(l: &TwoViewLoader, epoch: u64, start: usize) -> Vec<Batch> {
        l.epoch(epoch, start).collect::<Result<_>>().unwrap()
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
            max_skipped_fraction: 0.0,
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
        let batches = epoch(&l, 0, 0);
        assert_eq!(batches.len(), 5);
        assert_eq!(l.batches_per_epoch(), 5);
        for b in &batches {
            assert_eq!(b.indices.len(), 8);
            assert_eq!(b.skipped, 0);
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
        let one = epoch(&loader(48, cfg(8, 1)), 1, 0);
        let two = epoch(&loader(48, cfg(8, 2)), 1, 2);
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
        let set = image_set(10);
        let batches: Vec<EvalBatch> =
            eval_batches(&set, transform(32, 1.0), 4, Device::Cpu).collect();
        assert_eq!(
            batches
                .iter()
                .map(|b| b.images.size()[0])
                .collect::<Vec<_>>(),
            [4, 4, 2]
        );
        let labels: Vec<i64> = Vec::try_from(Tensor::cat(
            &batches.iter().map(|b| &b.labels).collect::<Vec<_>>(),
            0,
        ))
        .unwrap();
        assert_eq!(labels, set.labels);
        assert_eq!(batches[2].indices, [8, 9]);
        // Same size, no crop: the images themselves, scaled to [0, 1].
        let first = (&batches[0].images.get(0) * 255.0)
            .round()
            .permute([1, 2, 0])
            .to_kind(Kind::Uint8);
        assert_eq!(
            Vec::<u8>::try_from(first.flatten(0, -1)).unwrap(),
            set.pixels(0)
        );
        let small = eval_batches(&set, transform(16, 0.875), 4, Device::Cpu)
            .next()
            .unwrap();
        assert_eq!(small.images.size(), [4, 3, 16, 16]);
    }

    /// A dataset whose images at `bad` cannot be read.
    struct Flaky {
        inner: ImageSet,
        bad: Vec<usize>,
    }

    impl Dataset for Flaky {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn label(&self, i: usize) -> i64 {
            self.inner.label(i)
        }
        fn num_classes(&self) -> usize {
            self.inner.num_classes()
        }
        fn image(&self, i: usize) -> Result<Image<'_>> {
            if self.bad.contains(&i) {
                bail!("image {i} is corrupt");
            }
            self.inner.image(i)
        }
    }

    #[test]
    fn unreadable_images_are_replaced_by_the_next_readable_one_and_counted() {
        let flaky = |bad: Vec<usize>| -> Arc<dyn Dataset> {
            Arc::new(Flaky {
                inner: image_set(16),
                bad,
            })
        };
        let c = LoaderConfig {
            max_skipped_fraction: 0.25,
            ..cfg(8, 2)
        };
        let clean =
            TwoViewLoader::new(data(16), AugmentConfig::default(), c.clone(), Device::Cpu).unwrap();
        let l = TwoViewLoader::new(
            flaky(vec![3, 4]),
            AugmentConfig::default(),
            c.clone(),
            Device::Cpu,
        )
        .unwrap();
        let (want, got) = (epoch(&clean, 0, 0), epoch(&l, 0, 0));
        assert_eq!(got.iter().map(|b| b.skipped).sum::<usize>(), 2);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w.indices, g.indices);
            for (row, &i) in g.indices.iter().enumerate() {
                // Rows of readable images are untouched; 3 and 4 both become image 5.
                let same = w.views[0]
                    .get(row as i64)
                    .equal(&g.views[0].get(row as i64));
                assert_eq!(same, i != 3 && i != 4, "row of image {i}");
            }
        }
        // 5 of 16 unreadable is more than a quarter: the epoch ends with an error.
        let l = TwoViewLoader::new(
            flaky(vec![0, 1, 2, 3, 4]),
            AugmentConfig::default(),
            c,
            Device::Cpu,
        )
        .unwrap();
        let err = l.epoch(0, 0).find_map(|b| b.err()).expect("an error");
        assert!(
            err.to_string()
                .contains("5 unreadable images in epoch 1 of 16"),
            "{err}"
        );
    }
}
