//! SimCLR view augmentation over u8 RGB HWC images (Chen et al. 2020, Appendix A).
//!
//! A view is: random resized crop -> horizontal flip (p=0.5) -> colour jitter (p=0.8) ->
//! grayscale (p=0.2). The paper (Section 3) finds crop and colour distortion together to be
//! the composition that stands out, because with cropping alone "most patches from an image
//! share a similar color distribution" and views can be matched by colour histogram alone.
//!
//! Each step is a pure function of its input and explicit parameters; the random parameters
//! of one view are drawn first ([`sample_view`]) from a generator that depends only on
//! (seed, epoch, index, view) ([`sample_rng`]), then applied ([`apply_view`]). Pixels stay f32
//! in 0..=255 between steps (clamped after each, as torchvision clips to [0, 1]) and are
//! rounded to u8 once at the end.
//!
//! Differences from the official code, all following torchvision as the SimCLR PyTorch ports
//! do: the crop makes 10 attempts (not 100) and falls back to a centre crop with the ratio
//! clamped into range (not the whole image); the resize is antialiased bilinear
//! ([`super::resize`], torchvision's `antialias=True`), not bicubic.

use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::resize::{resized_crop, to_u8, CropBox};
use super::{domain, keyed_rng};

/// Augmentation settings; `Default` is the paper's CIFAR-10 recipe (Appendix A for the ops,
/// Appendix B.9 for CIFAR-10: colour strength s=0.5, no blur).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Smallest crop area as a fraction of the image (Appendix A: 0.08).
    pub crop_scale_min: f64,
    /// Largest crop area as a fraction of the image (Appendix A: 1.0).
    pub crop_scale_max: f64,
    /// Probability of a horizontal flip (Appendix A: 0.5).
    pub flip_prob: f64,
    /// Colour distortion strength s (Appendix A: 1.0 on ImageNet, 0.5 on CIFAR-10).
    pub jitter_strength: f64,
    /// Probability of applying the colour jitter (Appendix A: 0.8).
    pub jitter_prob: f64,
    /// Probability of converting to grayscale (Appendix A: 0.2).
    pub grayscale_prob: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_scale_min: 0.08,
            crop_scale_max: 1.0,
            flip_prob: 0.5,
            jitter_strength: 0.5,
            jitter_prob: 0.8,
            grayscale_prob: 0.2,
        }
    }
}

impl AugmentConfig {
    /// Fails on values that would make sampling meaningless, naming the field and value.
    pub fn validate(&self) -> Result<()> {
        for (name, p) in [
            ("flip_prob", self.flip_prob),
            ("jitter_prob", self.jitter_prob),
            ("grayscale_prob", self.grayscale_prob),
        ] {
            ensure!(
                (0.0..=1.0).contains(&p),
                "augment: {name} {p} must be in [0, 1]"
            );
        }
        let (lo, hi) = (self.crop_scale_min, self.crop_scale_max);
        ensure!(lo > 0.0, "augment: crop_scale_min {lo} must be positive");
        ensure!(
            lo <= hi && hi <= 1.0,
            "augment: crop scale range [{lo}, {hi}] must satisfy crop_scale_min <= crop_scale_max <= 1"
        );
        let s = self.jitter_strength;
        ensure!(
            s >= 0.0 && s.is_finite(),
            "augment: jitter_strength {s} must be >= 0"
        );
        Ok(())
    }
}

/// The generator of one view: a pure function of its identity, so a sample's views are the
/// same whatever the thread count, batch composition or resume point.
pub fn sample_rng(seed: u64, epoch: u64, index: u64, view: u64) -> Pcg64Mcg {
    keyed_rng(domain::AUGMENT, &[seed, epoch, index, view])
}

/// The colour-jitter factors of one view and the order they are applied in.
#[derive(Debug, Clone, PartialEq)]
pub struct JitterParams {
    /// Multiplier of every channel.
    pub brightness: f32,
    /// Blend weight of the image against its mean gray level.
    pub contrast: f32,
    /// Blend weight of each pixel against its own gray level.
    pub saturation: f32,
    /// Hue rotation as a fraction of the colour wheel, in [-0.5, 0.5].
    pub hue: f32,
    /// Indices of the ops (0 brightness, 1 contrast, 2 saturation, 3 hue) in application order.
    pub order: [usize; 4],
}

/// Every random choice of one view, so views can be replayed or built from given parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewParams {
    /// Region of the source that becomes the view.
    pub crop: CropBox,
    /// Mirror left-right.
    pub flip: bool,
    /// `None` when the jitter is skipped (probability 1 - `jitter_prob`).
    pub jitter: Option<JitterParams>,
    /// Replace colours by luma.
    pub grayscale: bool,
}

/// torchvision's `RandomResizedCrop.get_params`: area fraction U(scale), aspect ratio
/// log-uniform in (3/4, 4/3), 10 attempts, then a centre crop with the ratio clamped into range.
pub fn sample_crop_box(h: usize, w: usize, scale: (f64, f64), rng: &mut Pcg64Mcg) -> CropBox {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale.0, scale.1);
        let ratio = uniform(rng, log_lo, log_hi).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return CropBox {
                top,
                left,
                height: ch,
                width: cw,
            };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < 3.0 / 4.0 {
        (((w as f64) * 4.0 / 3.0).round() as usize, w)
    } else if in_ratio > 4.0 / 3.0 {
        (h, ((h as f64) * 4.0 / 3.0).round() as usize)
    } else {
        (h, w)
    };
    CropBox {
        top: (h - ch) / 2,
        left: (w - cw) / 2,
        height: ch,
        width: cw,
    }
}

/// Draws every random choice of one view, in a fixed order (crop, flip, jitter, grayscale).
pub fn sample_view(h: usize, w: usize, cfg: &AugmentConfig, rng: &mut Pcg64Mcg) -> ViewParams {
    let crop = sample_crop_box(h, w, (cfg.crop_scale_min, cfg.crop_scale_max), rng);
    let flip = coin(rng, cfg.flip_prob);
    let jitter = coin(rng, cfg.jitter_prob).then(|| sample_jitter(cfg.jitter_strength, rng));
    let grayscale = coin(rng, cfg.grayscale_prob);
    ViewParams {
        crop,
        flip,
        jitter,
        grayscale,
    }
}

/// Colour-jitter factors for strength s: brightness, contrast and saturation
/// U[max(0, 1-0.8s), 1+0.8s], hue U[-0.2s, 0.2s], ops in a random order (Appendix A).
pub fn sample_jitter(strength: f64, rng: &mut Pcg64Mcg) -> JitterParams {
    let s = strength;
    let mut factor = || uniform(rng, (1.0 - 0.8 * s).max(0.0), 1.0 + 0.8 * s) as f32;
    let (brightness, contrast, saturation) = (factor(), factor(), factor());
    let hue = uniform(rng, -0.2 * s, 0.2 * s).clamp(-0.5, 0.5) as f32;
    let mut order = [0, 1, 2, 3];
    order.shuffle(rng);
    JitterParams {
        brightness,
        contrast,
        saturation,
        hue,
        order,
    }
}

/// Renders one view of `src` (`h * w * 3` bytes) with the given parameters into `out`
/// (`out_size * out_size * 3` bytes).
pub fn apply_view(src: &[u8], h: usize, w: usize, out_size: usize, p: &ViewParams, out: &mut [u8]) {
    assert_eq!(
        out.len(),
        out_size * out_size * 3,
        "augment: output buffer size"
    );
    let mut img = resized_crop(src, h, w, &p.crop, out_size, out_size);
    if p.flip {
        hflip(&mut img, out_size, out_size);
    }
    if let Some(j) = &p.jitter {
        color_jitter(&mut img, j);
    }
    if p.grayscale {
        grayscale(&mut img);
    }
    // Gaussian blur (Appendix A: p=0.5, ImageNet only, off on CIFAR) goes here.
    to_u8(&img, out);
}

/// One random SimCLR view of `src` into `out`: [`sample_view`] then [`apply_view`].
/// `cfg` must have passed [`AugmentConfig::validate`].
pub fn augment_view(
    src: &[u8],
    h: usize,
    w: usize,
    out_size: usize,
    cfg: &AugmentConfig,
    rng: &mut Pcg64Mcg,
    out: &mut [u8],
) {
    let params = sample_view(h, w, cfg, rng);
    apply_view(src, h, w, out_size, &params, out);
}

/// Mirrors an f32 HWC image left-right in place.
pub fn hflip(img: &mut [f32], h: usize, w: usize) {
    for row in img.chunks_exact_mut(w * 3).take(h) {
        for x in 0..w / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (w - 1 - x) * 3 + c);
            }
        }
    }
}

/// Applies the four jitter ops in `p.order`, clamping to [0, 255] after each.
pub fn color_jitter(img: &mut [f32], p: &JitterParams) {
    for &op in &p.order {
        match op {
            0 => adjust_brightness(img, p.brightness),
            1 => adjust_contrast(img, p.contrast),
            2 => adjust_saturation(img, p.saturation),
            _ => adjust_hue(img, p.hue),
        }
    }
}

/// Multiplies every channel by `factor`.
pub fn adjust_brightness(img: &mut [f32], factor: f32) {
    img.iter_mut()
        .for_each(|x| *x = (*x * factor).clamp(0.0, 255.0));
}

/// Blends the image with the mean of its grayscale version (torchvision `adjust_contrast`).
pub fn adjust_contrast(img: &mut [f32], factor: f32) {
    let n = (img.len() / 3).max(1) as f32;
    let mean = img.chunks_exact(3).map(luma).sum::<f32>() / n;
    img.iter_mut()
        .for_each(|x| *x = (factor * *x + (1.0 - factor) * mean).clamp(0.0, 255.0));
}

/// Blends each pixel with its own gray level (torchvision `adjust_saturation`).
pub fn adjust_saturation(img: &mut [f32], factor: f32) {
    for px in img.chunks_exact_mut(3) {
        let gray = luma(px);
        px.iter_mut()
            .for_each(|x| *x = (factor * *x + (1.0 - factor) * gray).clamp(0.0, 255.0));
    }
}

/// Rotates the hue by `shift` turns in HSV space, keeping saturation and value.
pub fn adjust_hue(img: &mut [f32], shift: f32) {
    for px in img.chunks_exact_mut(3) {
        let (r, g, b) = (px[0], px[1], px[2]);
        let (max, min) = (r.max(g).max(b), r.min(g).min(b));
        let chroma = max - min;
        if chroma <= 0.0 {
            continue; // gray pixels have no hue
        }
        // Hue in sextants [0, 6).
        let h = if max == r {
            ((g - b) / chroma).rem_euclid(6.0)
        } else if max == g {
            (b - r) / chroma + 2.0
        } else {
            (r - g) / chroma + 4.0
        };
        let h = (h + 6.0 * shift).rem_euclid(6.0);
        let x = chroma * (1.0 - ((h % 2.0) - 1.0).abs());
        let (r1, g1, b1) = match h as u32 {
            0 => (chroma, x, 0.0),
            1 => (x, chroma, 0.0),
            2 => (0.0, chroma, x),
            3 => (0.0, x, chroma),
            4 => (x, 0.0, chroma),
            _ => (chroma, 0.0, x),
        };
        for (d, v) in px.iter_mut().zip([r1, g1, b1]) {
            *d = (v + min).clamp(0.0, 255.0);
        }
    }
}

/// Replaces each pixel by its ITU-R 601-2 luma on all three channels.
pub fn grayscale(img: &mut [f32]) {
    for px in img.chunks_exact_mut(3) {
        let y = luma(px);
        px.fill(y);
    }
}

fn luma(px: &[f32]) -> f32 {
    0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]
}

/// U[lo, hi), also valid (returns lo) when lo == hi, unlike `random_range`.
fn uniform(rng: &mut Pcg64Mcg, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// True with probability p; always consumes one draw, so streams do not shift with p.
fn coin(rng: &mut Pcg64Mcg, p: f64) -> bool {
    rng.random::<f64>() < p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity_jitter() -> JitterParams {
        JitterParams {
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
            hue: 0.0,
            order: [0, 1, 2, 3],
        }
    }

    fn random_image(h: usize, w: usize, seed: u64) -> Vec<u8> {
        let mut rng = sample_rng(seed, 99, 99, 99);
        (0..h * w * 3).map(|_| rng.random()).collect()
    }

    #[test]
    fn default_config_is_valid_and_bad_values_are_named() {
        AugmentConfig::default().validate().unwrap();
        let bad = |f: fn(&mut AugmentConfig)| {
            let mut c = AugmentConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.flip_prob = 1.5).contains("flip_prob 1.5"));
        assert!(bad(|c| c.grayscale_prob = -0.1).contains("grayscale_prob -0.1"));
        assert!(bad(|c| c.crop_scale_min = 0.0).contains("crop_scale_min 0"));
        assert!(bad(|c| c.crop_scale_max = 0.05).contains("[0.08, 0.05]"));
        assert!(bad(|c| c.crop_scale_max = 1.5).contains("[0.08, 1.5]"));
        assert!(bad(|c| c.jitter_strength = -1.0).contains("jitter_strength -1"));
        let err = serde_json::from_str::<AugmentConfig>(r#"{"blur": 1}"#).unwrap_err();
        assert!(err.to_string().contains("blur"), "{err}");
        let partial: AugmentConfig = serde_json::from_str(r#"{"jitter_strength": 1.0}"#).unwrap();
        assert_eq!(
            partial,
            AugmentConfig {
                jitter_strength: 1.0,
                ..Default::default()
            }
        );
    }

    #[test]
    fn crop_boxes_stay_inside_with_area_and_aspect_in_range() {
        for (h, w) in [(32, 32), (20, 50), (96, 64)] {
            for i in 0..2000 {
                let mut rng = sample_rng(1, h as u64, w as u64, i);
                let b = sample_crop_box(h, w, (0.08, 1.0), &mut rng);
                assert!(
                    b.height > 0 && b.width > 0 && b.top + b.height <= h && b.left + b.width <= w
                );
                let frac = (b.height * b.width) as f64 / (h * w) as f64;
                let ratio = b.width as f64 / b.height as f64;
                // Rounding to whole pixels moves both by up to about one pixel per side.
                let slack = 1.0 + 2.5 / (b.height.min(b.width) as f64);
                assert!(
                    frac >= 0.08 / slack && frac <= slack,
                    "{b:?} in {h}x{w}: area {frac}"
                );
                assert!(
                    ratio >= 0.75 / slack && ratio <= slack * 4.0 / 3.0,
                    "{b:?}: ratio {ratio}"
                );
            }
        }
    }

    #[test]
    fn crop_falls_back_to_a_centred_clamped_box() {
        let mut rng = sample_rng(0, 0, 0, 0);
        // A 20x50 image cannot hold a full-area crop of ratio <= 4/3.
        let b = sample_crop_box(20, 50, (1.0, 1.0), &mut rng);
        assert_eq!(
            b,
            CropBox {
                top: 0,
                left: 11,
                height: 20,
                width: 27
            }
        );
    }

    #[test]
    fn flip_and_jitter_and_grayscale_rates_match_the_config() {
        let cfg = AugmentConfig::default();
        let n = 4000;
        let (mut flips, mut jitters, mut grays) = (0, 0, 0);
        for i in 0..n {
            let p = sample_view(32, 32, &cfg, &mut sample_rng(5, 0, i, 0));
            flips += p.flip as usize;
            jitters += p.jitter.is_some() as usize;
            grays += p.grayscale as usize;
        }
        let rate = |k: usize| k as f64 / n as f64;
        assert!(
            (rate(flips) - 0.5).abs() < 0.03,
            "flip rate {}",
            rate(flips)
        );
        assert!(
            (rate(jitters) - 0.8).abs() < 0.03,
            "jitter rate {}",
            rate(jitters)
        );
        assert!(
            (rate(grays) - 0.2).abs() < 0.03,
            "grayscale rate {}",
            rate(grays)
        );
    }

    #[test]
    fn jitter_factors_stay_in_their_ranges() {
        for i in 0..500 {
            let j = sample_jitter(0.5, &mut sample_rng(2, 0, i, 0));
            for f in [j.brightness, j.contrast, j.saturation] {
                assert!((0.6..=1.4).contains(&f), "{j:?}");
            }
            assert!(j.hue.abs() <= 0.1, "{j:?}");
            let mut order = j.order;
            order.sort();
            assert_eq!(order, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn identity_parameters_leave_the_image_unchanged() {
        let (h, w) = (9, 13);
        let src = random_image(h, w, 3);
        let params = ViewParams {
            crop: CropBox::full(h, w),
            flip: false,
            jitter: Some(identity_jitter()),
            grayscale: false,
        };
        let mut out = vec![0u8; h * w * 3];
        let mut img: Vec<f32> = src.iter().map(|&x| x as f32).collect();
        color_jitter(&mut img, &identity_jitter());
        to_u8(&img, &mut out);
        assert_eq!(out, src, "identity jitter");
        let mut square = vec![0u8; 9 * 9 * 3];
        let params = ViewParams {
            crop: CropBox {
                width: 9,
                ..params.crop
            },
            ..params
        };
        apply_view(&src, h, w, 9, &params, &mut square);
        let expected: Vec<u8> = src
            .chunks(w * 3)
            .flat_map(|row| &row[..27])
            .copied()
            .collect();
        assert_eq!(square, expected, "apply_view with a same-size crop");
    }

    #[test]
    fn flip_twice_is_identity_and_flip_mirrors() {
        let mut img: Vec<f32> = (0..2 * 3 * 3).map(|x| x as f32).collect();
        let orig = img.clone();
        hflip(&mut img, 2, 3);
        assert_eq!(&img[..9], &[6., 7., 8., 3., 4., 5., 0., 1., 2.]);
        hflip(&mut img, 2, 3);
        assert_eq!(img, orig);
    }

    #[test]
    fn grayscale_gives_equal_channels_with_601_luma() {
        let mut img = vec![255.0, 0.0, 0.0, 10.0, 200.0, 30.0];
        grayscale(&mut img);
        assert!((img[0] - 0.299 * 255.0).abs() < 1e-3 && img[0] == img[1] && img[1] == img[2]);
        assert!(img[3] == img[4] && img[4] == img[5]);
    }

    #[test]
    fn hue_shift_rotates_primaries_and_a_full_turn_is_identity() {
        let mut img = vec![200.0, 0.0, 0.0];
        adjust_hue(&mut img, 1.0 / 3.0);
        assert!(
            img.iter()
                .zip([0.0, 200.0, 0.0])
                .all(|(a, b)| (a - b).abs() < 1e-3),
            "{img:?}"
        );
        let src = random_image(4, 4, 8);
        let mut img: Vec<f32> = src.iter().map(|&x| x as f32).collect();
        adjust_hue(&mut img, 0.25);
        adjust_hue(&mut img, -0.25);
        let mut out = vec![0u8; src.len()];
        to_u8(&img, &mut out);
        assert_eq!(out, src);
    }

    #[test]
    fn views_are_deterministic_and_differ_across_views() {
        let src = random_image(32, 32, 4);
        let cfg = AugmentConfig::default();
        let view = |v| {
            let mut out = vec![0u8; 24 * 24 * 3];
            augment_view(
                &src,
                32,
                32,
                24,
                &cfg,
                &mut sample_rng(11, 2, 7, v),
                &mut out,
            );
            out
        };
        assert_eq!(view(0), view(0));
        assert_ne!(view(0), view(1));
    }
}
