//! The built-in procedural dataset: 10 classes of shapes and textures whose class is carried by
//! form alone, so that what SimCLR learns from it is the invariance the paper is about.
//!
//! SimCLR (Chen et al. 2020, Section 3) finds that "no single transformation suffices to learn
//! good representations" and that without colour distortion the network can solve the
//! contrastive task from colour histograms alone. This dataset is built so that shortcut is
//! useless and the augmentations matter: every image draws its own foreground and background
//! colours (independent of the class, with a minimum luma and RGB contrast, and symmetric in
//! which is which, so class-wise mean colour is the same), its own position or phase, scale and
//! rotation, plus mild pixel noise. Only shape and texture identify the class:
//!
//! | label | class              | drawn as                                                     |
//! |-------|--------------------|--------------------------------------------------------------|
//! | 0     | disc               | filled circle, diameter 40-80% of the side                   |
//! | 1     | square             | filled square, any rotation                                  |
//! | 2     | triangle           | filled equilateral triangle, any rotation                    |
//! | 3     | plus               | two crossing bars, any rotation (so also an "x")             |
//! | 4     | ring               | annulus, inner radius ~0.4 of the outer                      |
//! | 5     | horizontal stripes | full-frame, period 5-9 px, within 10 degrees of horizontal   |
//! | 6     | diagonal stripes   | full-frame, period 5-9 px, at +-45 degrees (+-10)            |
//! | 7     | checkerboard       | full-frame, cells 4-7 px, any rotation                       |
//! | 8     | dot grid           | full-frame lattice of dots, period 6-9 px, any rotation      |
//! | 9     | bullseye           | full-frame concentric rings, period 5-8 px, random centre    |
//!
//! Shapes are large and textures fill the frame, so each stays recognisable after a random
//! resized crop of ~30% of the area. Horizontal flips map each class to itself (diagonal
//! stripes take both diagonals for that reason). Vertical and horizontal stripes would be
//! confused by rotation, so the stripe classes are the only ones with restricted angles.
//!
//! Rendering: each class is a signed distance function (negative inside) in a local frame
//! mapped to pixels by a random similarity transform; a pixel's foreground coverage is
//! `clamp(0.5 - distance_in_pixels, 0, 1)`, which antialiases edges for free. Every image has
//! its own generator (`keyed_rng` over seed, split and index), so generation is
//! parallel and yet identical for a seed; train and test use different split keys, so the
//! test split is held out.

use std::f32::consts::{FRAC_PI_4, PI};
use std::sync::Arc;

use anyhow::{ensure, Result};
use rand::Rng;
use rand_pcg::Pcg64Mcg;
use rayon::prelude::*;

use super::{domain, keyed_rng, ImageSet, Splits};

/// Number of classes of the synthetic dataset.
pub const NUM_CLASSES: usize = 10;

/// Sizes of the synthetic dataset; `Default` is the CIFAR-like 32 px, 5000 + 1000 images.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Images in the train split (classes balanced to within one image).
    pub train_size: usize,
    /// Images in the held-out test split.
    pub test_size: usize,
    /// Side of the square images in pixels.
    pub image_size: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            train_size: 5000,
            test_size: 1000,
            image_size: 32,
        }
    }
}

/// Both generated splits, held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSets {
    pub train: ImageSet,
    pub test: ImageSet,
}

impl From<SyntheticSets> for Splits {
    fn from(sets: SyntheticSets) -> Self {
        Splits {
            train: Arc::new(sets.train),
            test: Arc::new(sets.test),
            unlabeled: None,
        }
    }
}

/// Generates both splits for `seed` (train and test from different random streams).
pub fn generate(cfg: &SyntheticConfig, seed: u64) -> Result<SyntheticSets> {
    ensure!(
        cfg.image_size >= 8,
        "synthetic data: image_size {} is too small to draw shapes (minimum 8)",
        cfg.image_size
    );
    Ok(SyntheticSets {
        train: generate_split(cfg.train_size, cfg.image_size, seed, 0)?,
        test: generate_split(cfg.test_size, cfg.image_size, seed, 1)?,
    })
}

/// One split: image `i` has label `i % NUM_CLASSES` and its own generator.
fn generate_split(n: usize, side: usize, seed: u64, split: u64) -> Result<ImageSet> {
    let labels: Vec<i64> = (0..n).map(|i| (i % NUM_CLASSES) as i64).collect();
    let mut images = vec![0u8; n * side * side * 3];
    images
        .par_chunks_mut(side * side * 3)
        .zip(labels.par_iter())
        .enumerate()
        .for_each(|(i, (img, &label))| {
            let mut rng = keyed_rng(domain::SYNTHETIC, &[seed, split, i as u64]);
            render(label as usize, side, &mut rng, img);
        });
    ImageSet::new(images, labels, side, side, NUM_CLASSES)
}

/// Draws one image of class `label` into `out` (`side * side * 3` bytes, HWC RGB).
fn render(label: usize, side: usize, rng: &mut Pcg64Mcg, out: &mut [u8]) {
    let s = side as f32;
    let any_angle = rng.random_range(0.0..2.0 * PI);
    let tilt = rng.random_range(-PI / 18.0..PI / 18.0); // +-10 degrees
                                                        // (scale: local unit in pixels, centre, rotation) of the local frame.
    let (scale, angle, centre) = if label < 5 {
        // Shapes: radius 20-40% of the side, fully inside the image.
        let r = s * rng.random_range(0.2..0.4);
        let c = [rng.random_range(r..s - r), rng.random_range(r..s - r)];
        (r, any_angle, c)
    } else {
        // Textures: the local unit is the period; a random origin is a random phase.
        let period = match label {
            5 | 6 => rng.random_range(5.0..9.0),
            7 => rng.random_range(8.0..14.0), // two cells of 4-7 px
            8 => rng.random_range(6.0..9.0),
            _ => rng.random_range(5.0..8.0),
        };
        let angle = match label {
            5 => tilt,
            6 => {
                tilt + if rng.random::<bool>() {
                    FRAC_PI_4
                } else {
                    -FRAC_PI_4
                }
            }
            _ => any_angle,
        };
        (
            period * s / 32.0,
            angle,
            [rng.random_range(0.0..s), rng.random_range(0.0..s)],
        )
    };
    let (fg, bg) = contrasting_colours(rng);
    let (sin, cos) = angle.sin_cos();
    for (p, px) in out.chunks_exact_mut(3).enumerate() {
        // Pixel centre -> local frame (inverse rotation, then divide by scale).
        let dx = (p % side) as f32 + 0.5 - centre[0];
        let dy = (p / side) as f32 + 0.5 - centre[1];
        let (u, v) = (
            (cos * dx + sin * dy) / scale,
            (-sin * dx + cos * dy) / scale,
        );
        let coverage = (0.5 - sdf(label, u, v) * scale).clamp(0.0, 1.0);
        // Triangular noise in [-10, 10]: the difference of two random bytes, per channel.
        let bits = rng.random::<u64>();
        for c in 0..3 {
            let byte = |k: usize| ((bits >> (8 * k)) & 0xff) as f32;
            let noise = (byte(2 * c) - byte(2 * c + 1)) * (10.0 / 255.0);
            let value = bg[c] + (fg[c] - bg[c]) * coverage + noise;
            px[c] = value.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Signed distance (negative inside, in local units) to the foreground of class `label`.
fn sdf(label: usize, u: f32, v: f32) -> f32 {
    let stripes = |t: f32| (t - t.floor() - 0.5).abs() - 0.25; // bands of half the period
    match label {
        0 => u.hypot(v) - 1.0,
        1 => sd_box(u, v, 0.8, 0.8),
        2 => sd_triangle(u, v),
        3 => sd_box(u, v, 1.0, 0.3).min(sd_box(u, v, 0.3, 1.0)),
        4 => (u.hypot(v) - 0.7).abs() - 0.28,
        5 | 6 => stripes(v),
        7 => {
            // Cells of half a unit; distance to the nearest cell edge, signed by cell parity.
            let (a, b) = (2.0 * u, 2.0 * v);
            let edge = (a - a.round()).abs().min((b - b.round()).abs()) / 2.0;
            if (a.floor() + b.floor()).rem_euclid(2.0) < 1.0 {
                -edge
            } else {
                edge
            }
        }
        8 => (u - u.round()).hypot(v - v.round()) - 0.3,
        _ => stripes(u.hypot(v)),
    }
}

/// Axis-aligned box with half-sizes `(bx, by)` (Inigo Quilez's exact 2-D box distance).
fn sd_box(u: f32, v: f32, bx: f32, by: f32) -> f32 {
    let (qx, qy) = (u.abs() - bx, v.abs() - by);
    qx.max(0.0).hypot(qy.max(0.0)) + qx.max(qy).min(0.0)
}

/// Equilateral triangle with circumradius 1 centred on its centroid (Quilez).
fn sd_triangle(u: f32, v: f32) -> f32 {
    const K: f32 = 1.732_050_8; // sqrt(3)
    const R: f32 = K / 2.0; // half the side for circumradius 1
    let (mut x, mut y) = (u.abs() - R, v + R / K);
    if x + K * y > 0.0 {
        (x, y) = ((x - K * y) / 2.0, (-K * x - y) / 2.0);
    }
    x -= x.clamp(-2.0 * R, 0.0);
    -x.hypot(y) * y.signum()
}

/// Two independent random colours (0..255 floats) differing by at least 48 in ITU-R 601 luma
/// and 96 in RGB distance; the pair is drawn symmetrically, so neither role is brighter.
fn contrasting_colours(rng: &mut Pcg64Mcg) -> ([f32; 3], [f32; 3]) {
    let luma = |c: &[f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    loop {
        let a: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
        let b: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
        let dist = (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f32>().sqrt();
        if (luma(&a) - luma(&b)).abs() >= 48.0 && dist >= 96.0 {
            return (a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    fn small(seed: u64) -> SyntheticSets {
        let cfg = SyntheticConfig {
            train_size: 1000,
            test_size: 100,
            image_size: 32,
        };
        generate(&cfg, seed).unwrap()
    }

    #[test]
    fn deterministic_for_a_seed_and_different_across_seeds_and_splits() {
        let (a, b, c) = (small(7), small(7), small(8));
        assert_eq!(a.train, b.train);
        assert_eq!(a.test, b.test);
        assert_ne!(a.train.images, c.train.images);
        assert_ne!(a.train.pixels(0), a.test.pixels(0));
    }

    #[test]
    fn classes_are_balanced_and_all_present() {
        let s = small(1);
        assert_eq!((s.train.len(), s.test.len()), (1000, 100));
        assert_eq!(s.train.images.len(), 1000 * 32 * 32 * 3);
        for set in [&s.train, &s.test] {
            let mut counts = [0usize; NUM_CLASSES];
            set.labels.iter().for_each(|&l| counts[l as usize] += 1);
            assert!(
                counts.iter().all(|&c| c == set.len() / NUM_CLASSES),
                "{counts:?}"
            );
        }
    }

    #[test]
    fn every_image_has_foreground_and_background() {
        // Both colours must be visible: the class is in the boundary between them.
        let s = small(2);
        for i in 0..s.train.len() {
            let img = s.train.pixels(i);
            let l: Vec<f32> = img
                .chunks_exact(3)
                .map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32)
                .collect();
            let (min, max) = l
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let mid = (min + max) / 2.0;
            let (lo, hi) = l.iter().fold((0, 0), |(lo, hi), &x| {
                (
                    lo + (x < mid - 10.0) as usize,
                    hi + (x > mid + 10.0) as usize,
                )
            });
            assert!(
                lo >= 40 && hi >= 40,
                "image {i} (class {}): {lo}/{hi}",
                s.train.labels[i]
            );
        }
    }

    #[test]
    fn mean_colour_does_not_give_the_class() {
        // Per-class average of the per-image mean RGB, compared with the within-class spread of
        // the per-image mean: with 300 images a class, sampling noise alone is ~0.06 spread
        // (at 100 000 images the class averages agree to within 2 of 255).
        let cfg = SyntheticConfig {
            train_size: 3000,
            test_size: 0,
            image_size: 32,
        };
        let s = generate(&cfg, 3).unwrap().train;
        let mut sum = [[0f64; 3]; NUM_CLASSES];
        let mut sq = [[0f64; 3]; NUM_CLASSES];
        let mut n = [0f64; NUM_CLASSES];
        for i in 0..s.len() {
            let k = s.labels[i] as usize;
            n[k] += 1.0;
            for c in 0..3 {
                let m = s
                    .pixels(i)
                    .iter()
                    .skip(c)
                    .step_by(3)
                    .map(|&x| x as f64)
                    .sum::<f64>()
                    / 1024.0;
                sum[k][c] += m;
                sq[k][c] += m * m;
            }
        }
        for c in 0..3 {
            let means: Vec<f64> = (0..NUM_CLASSES).map(|k| sum[k][c] / n[k]).collect();
            let within = ((0..NUM_CLASSES)
                .map(|k| sq[k][c] / n[k] - means[k].powi(2))
                .sum::<f64>()
                / NUM_CLASSES as f64)
                .sqrt();
            let grand = means.iter().sum::<f64>() / NUM_CLASSES as f64;
            let across = means.iter().map(|m| (m - grand).abs()).fold(0.0, f64::max);
            assert!(
                across < 0.25 * within,
                "channel {c}: {across:.1} vs within {within:.1}"
            );
        }
    }
}
