//! SimCLR view augmentation over u8 RGB HWC images (Chen et al. 2020, Appendix A), and the
//! evaluation transform.
//!
//! A view is: random resized crop -> horizontal flip (p=0.5) -> colour jitter (p=0.8) ->
//! grayscale (p=0.2) -> Gaussian blur (p=0.5 for views of at least 96 px, off below; [`blur`]).
//! The paper (Section 3) finds crop and colour distortion together to be the composition that
//! stands out, because with cropping alone "most patches from an image share a similar color
//! distribution" and views can be matched by colour histogram alone. The blur comes last, as
//! in the official `preprocess_for_train` (after the colour distortion).
//!
//! Each step is a pure function of its input and explicit parameters; the random parameters
//! of one view are drawn first ([`sample_view`]) from a generator that depends only on
//! (seed, epoch, index, view) ([`sample_rng`]), then applied ([`apply_view`]). Pixels stay f32
//! in 0..=255 between steps (clamped after each, as torchvision clips to [0, 1]) and are
//! rounded to u8 once at the end.
//!
//! The reference is torchvision's tensor path on float images (`transforms.v2.functional` on
//! `uint8 / 255` tensors: no rounding between ops), which `tests/torchvision_augment.rs` checks
//! op by op to within 2/255 on photo-like images. The PIL path differs from it by rounding to
//! u8 after every op and by PIL's own integer HSV and luma arithmetic. Two deliberate
//! differences from it, both below 0.05/255: gray levels use the ITU-R 601-2 weights
//! (0.299, 0.587, 0.114) as PIL does, where torchvision's tensor path has 0.2989 for red; the
//! blur is separable (torchvision convolves with the 2-D outer product, equal up to rounding).
//!
//! Differences from the official code, all following torchvision as the SimCLR PyTorch ports
//! do: the crop makes 10 attempts (not 100) and falls back to a centre crop with the ratio
//! clamped into range (not the whole image); the resize defaults to antialiased bilinear
//! ([`super::resize`], torchvision's `antialias=True`), bicubic on request
//! ([`AugmentConfig::resize_filter`]), where the official code resizes bicubically.

pub mod blur;

use std::cell::RefCell;

use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::resize::{resample, resized_crop_into, to_u8, CropBox, ResizeFilter, Taps};
use super::{domain, keyed_rng};

/// Views at least this many pixels wide are blurred by default (SimCLR blurs its 224 px
/// ImageNet views and not its 32 px CIFAR-10 ones; 96 px is STL-10's size).
pub const BLUR_MIN_VIEW_SIZE: usize = 96;

/// Probability of the blur where [`AugmentConfig::blur_prob`] is "auto" and the views are
/// large enough (Appendix A: "50% of the time").
pub const DEFAULT_BLUR_PROB: f64 = 0.5;

/// Augmentation settings; `Default` is the paper's CIFAR-10 recipe (Appendix A for the ops,
/// Appendix B.9 for CIFAR-10: colour strength s=0.5, no blur), with the blur switched on
/// automatically for views of [`BLUR_MIN_VIEW_SIZE`] px or more.
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
    /// Probability of the Gaussian blur; `None` is "auto": [`DEFAULT_BLUR_PROB`] for views of
    /// at least [`BLUR_MIN_VIEW_SIZE`] px, 0 for smaller ones ([`Self::blur_probability`]).
    /// `simclr train` resolves it, so a run's config.json holds the number it used.
    pub blur_prob: Option<f64>,
    /// Smallest standard deviation of the blur in view pixels (Appendix A: 0.1).
    pub blur_sigma_min: f64,
    /// Largest standard deviation of the blur in view pixels (Appendix A: 2.0).
    pub blur_sigma_max: f64,
    /// Filter of the crop's resize: torchvision's default bilinear, or the official code's
    /// bicubic.
    pub resize_filter: ResizeFilter,
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
            blur_prob: None,
            blur_sigma_min: 0.1,
            blur_sigma_max: 2.0,
            resize_filter: ResizeFilter::Bilinear,
        }
    }
}

impl AugmentConfig {
    /// Fails on values that would make sampling meaningless, naming the field and value.
    pub fn validate(&self) -> Result<()> {
        let blur = self.blur_prob.map(|p| ("blur_prob", p));
        for (name, p) in [
            ("flip_prob", self.flip_prob),
            ("jitter_prob", self.jitter_prob),
            ("grayscale_prob", self.grayscale_prob),
        ]
        .into_iter()
        .chain(blur)
        {
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
        let (lo, hi) = (self.blur_sigma_min, self.blur_sigma_max);
        ensure!(
            lo > 0.0 && lo <= hi && hi.is_finite(),
            "augment: blur sigma range [{lo}, {hi}] must satisfy 0 < blur_sigma_min <= blur_sigma_max"
        );
        Ok(())
    }

    /// The blur probability for views of `view_size` pixels, "auto" resolved.
    pub fn blur_probability(&self, view_size: usize) -> f64 {
        self.blur_prob
            .unwrap_or(if view_size >= BLUR_MIN_VIEW_SIZE {
                DEFAULT_BLUR_PROB
            } else {
                0.0
            })
    }

    /// This configuration with "auto" settings replaced by what they mean for views of
    /// `view_size` pixels, so a saved configuration shows what a run did.
    pub fn resolved(&self, view_size: usize) -> Self {
        Self {
            blur_prob: Some(self.blur_probability(view_size)),
            ..self.clone()
        }
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

/// The Gaussian blur of one view ([`blur::gaussian_blur`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BlurParams {
    /// Odd kernel side in pixels ([`blur::kernel_size`] of the view side).
    pub kernel_size: usize,
    /// Standard deviation in pixels.
    pub sigma: f64,
}

/// Every choice of one view (the random ones and the configured resize filter), so views can
/// be replayed or built from given parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewParams {
    /// Region of the source that becomes the view.
    pub crop: CropBox,
    /// Filter of the crop's resize.
    pub filter: ResizeFilter,
    /// Mirror left-right.
    pub flip: bool,
    /// `None` when the jitter is skipped (probability 1 - `jitter_prob`).
    pub jitter: Option<JitterParams>,
    /// Replace colours by luma.
    pub grayscale: bool,
    /// `None` when the blur is skipped.
    pub blur: Option<BlurParams>,
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

/// Draws every random choice of one `out_size`-pixel view of an `h x w` image, in a fixed
/// order (crop, flip, jitter, grayscale, blur). New draws go at the end, so that adding an op
/// leaves the earlier choices, and the views of runs that do not use it, unchanged.
pub fn sample_view(
    h: usize,
    w: usize,
    out_size: usize,
    cfg: &AugmentConfig,
    rng: &mut Pcg64Mcg,
) -> ViewParams {
    let crop = sample_crop_box(h, w, (cfg.crop_scale_min, cfg.crop_scale_max), rng);
    let flip = coin(rng, cfg.flip_prob);
    let jitter = coin(rng, cfg.jitter_prob).then(|| sample_jitter(cfg.jitter_strength, rng));
    let grayscale = coin(rng, cfg.grayscale_prob);
    let blur = coin(rng, cfg.blur_probability(out_size)).then(|| BlurParams {
        kernel_size: blur::kernel_size(out_size),
        sigma: uniform(rng, cfg.blur_sigma_min, cfg.blur_sigma_max),
    });
    ViewParams {
        crop,
        filter: cfg.resize_filter,
        flip,
        jitter,
        grayscale,
        blur,
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

/// Working buffers of one thread's views: the f32 image and the resize's and blur's
/// intermediate pass. A loader worker renders thousands of views, so reusing them saves two
/// allocations (and their page faults, 600 KB each at 224 px) per view.
#[derive(Default)]
struct Scratch {
    img: Vec<f32>,
    tmp: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Renders one view of `src` (`h * w * 3` bytes) with the given parameters into `out`
/// (`out_size * out_size * 3` bytes).
pub fn apply_view(src: &[u8], h: usize, w: usize, out_size: usize, p: &ViewParams, out: &mut [u8]) {
    assert_eq!(
        out.len(),
        out_size * out_size * 3,
        "augment: output buffer size"
    );
    SCRATCH.with_borrow_mut(|Scratch { img, tmp }| {
        let size = (out_size, out_size);
        resized_crop_into(src, (h, w), &p.crop, size, p.filter, tmp, img);
        if p.flip {
            hflip(img, out_size, out_size);
        }
        if let Some(j) = &p.jitter {
            color_jitter(img, j);
        }
        if p.grayscale {
            grayscale(img);
        }
        if let Some(b) = &p.blur {
            blur::gaussian_blur(img, size, b.kernel_size, b.sigma, tmp);
        }
        to_u8(img, out);
    });
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
    let params = sample_view(h, w, out_size, cfg, rng);
    apply_view(src, h, w, out_size, &params, out);
}

/// The evaluation transform, without randomness: the shorter side of `src` (`h * w * 3`
/// bytes) resized to `out_size / crop_fraction` (rounded down), then the centre
/// `out_size x out_size` crop into `out`: torchvision's `Resize(int(out_size / crop_fraction))`
/// then `CenterCrop(out_size)`, the ImageNet protocol's 256 -> 224 at `crop_fraction` 0.875.
/// Only the kept pixels are computed. `crop_fraction` 1.0 keeps the whole shorter side, for
/// images whose content reaches the border (the synthetic shapes); a square image then gets
/// exactly a whole-image resize, and the identity at its own size.
///
/// # Panics
/// If `crop_fraction` is not in (0, 1], `out_size` is 0 or `out` is not
/// `out_size * out_size * 3` bytes.
pub fn eval_view(
    src: &[u8],
    h: usize,
    w: usize,
    out_size: usize,
    crop_fraction: f64,
    filter: ResizeFilter,
    out: &mut [u8],
) {
    assert!(
        crop_fraction > 0.0 && crop_fraction <= 1.0 && out_size > 0,
        "eval view: crop_fraction {crop_fraction} must be in (0, 1] and out_size {out_size} positive"
    );
    assert_eq!(src.len(), h * w * 3, "eval view: source is not {h}x{w}x3");
    assert_eq!(
        out.len(),
        out_size * out_size * 3,
        "eval view: output buffer size"
    );
    // torchvision's _compute_resized_output_size: the longer side keeps the aspect ratio,
    // rounded down.
    let short_to = ((out_size as f64 / crop_fraction) as usize).max(out_size);
    let (short, long) = (h.min(w), h.max(w));
    let long_to = short_to * long / short;
    let (scaled_h, scaled_w) = if w <= h {
        (long_to, short_to)
    } else {
        (short_to, long_to)
    };
    // CenterCrop's anchor: Python's round, which rounds halves to even.
    let anchor = |scaled: usize| ((scaled - out_size) as f64 / 2.0).round_ties_even() as usize;
    let (top, left) = (anchor(scaled_h), anchor(scaled_w));
    let rows = Taps::new(0, h, scaled_h, top..top + out_size, filter);
    let cols = Taps::new(0, w, scaled_w, left..left + out_size, filter);
    SCRATCH.with_borrow_mut(|Scratch { img, tmp }| {
        resample(src, w, &rows, &cols, tmp, img);
        to_u8(img, out);
    });
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
///
/// The hue is kept in sextants [0, 6) of the colour wheel; the wrap-arounds are exact
/// (`wrap_sextants`), and within a sextant the channels are (chroma, x, 0) + min in the
/// order `SEXTANT_CHANNELS` gives, where x is the chroma scaled by the distance to the
/// sextant's nearest primary.
pub fn adjust_hue(img: &mut [f32], shift: f32) {
    let turn = 6.0 * shift;
    for px in img.chunks_exact_mut(3) {
        let (r, g, b) = (px[0], px[1], px[2]);
        let (max, min) = (r.max(g).max(b), r.min(g).min(b));
        let chroma = max - min;
        if chroma <= 0.0 {
            continue; // gray pixels have no hue
        }
        let h = if max == r {
            wrap_sextants((g - b) / chroma)
        } else if max == g {
            (b - r) / chroma + 2.0
        } else {
            (r - g) / chroma + 4.0
        };
        let h = wrap_sextants(h + turn);
        // h may round up to exactly 6.0, which is sextant 6 = 0 (mod 6) with h mod 2 = 0.
        let sextant = h as usize;
        let within_pair = h - (sextant / 2 * 2) as f32; // h mod 2, exact
        let x = chroma * (1.0 - (within_pair - 1.0).abs());
        let values = [chroma, x, 0.0];
        for (d, &pick) in px.iter_mut().zip(&SEXTANT_CHANNELS[sextant.min(6)]) {
            *d = (values[pick] + min).clamp(0.0, 255.0);
        }
    }
}

/// For each hue sextant (6 wraps to the last row's colours), which of (chroma, x, 0) goes to
/// red, green and blue: red..yellow, yellow..green, green..cyan, cyan..blue, blue..magenta,
/// magenta..red.
const SEXTANT_CHANNELS: [[usize; 3]; 7] = [
    [0, 1, 2],
    [1, 0, 2],
    [2, 0, 1],
    [2, 1, 0],
    [1, 2, 0],
    [0, 2, 1],
    [0, 2, 1],
];

/// `h.rem_euclid(6.0)` without the libm `fmod` call in the common range (-6, 12), where it is
/// exact: `h - 6` there needs no rounding (Sterbenz), and `h + 6` is what `rem_euclid` adds too.
fn wrap_sextants(h: f32) -> f32 {
    if (0.0..6.0).contains(&h) {
        h
    } else if (6.0..12.0).contains(&h) {
        h - 6.0
    } else if h < 0.0 && h > -6.0 {
        h + 6.0
    } else {
        h.rem_euclid(6.0)
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

    /// Parameters of a view that leaves the image as it is.
    fn identity_view(h: usize, w: usize) -> ViewParams {
        ViewParams {
            crop: CropBox::full(h, w),
            filter: ResizeFilter::Bilinear,
            flip: false,
            jitter: None,
            grayscale: false,
            blur: None,
        }
    }

    /// Fails unless `hits` successes in `n` trials are within 4.5 binomial standard deviations
    /// of rate `p` (a false alarm about once in 300000 seeds; the seeds are fixed, so the
    /// tests are deterministic).
    fn assert_rate(what: &str, hits: usize, n: usize, p: f64) {
        let rate = hits as f64 / n as f64;
        let tolerance = 4.5 * (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (rate - p).abs() <= tolerance,
            "{what} rate {rate}, expected {p} +- {tolerance}"
        );
    }

    /// Fails unless `samples` look uniform on [lo, hi]: the Kolmogorov-Smirnov distance is
    /// below its 0.1% critical value 1.95 / sqrt(n).
    fn assert_uniform(what: &str, samples: &mut [f64], lo: f64, hi: f64) {
        samples.sort_by(f64::total_cmp);
        let n = samples.len() as f64;
        let distance = samples
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let cdf = ((x - lo) / (hi - lo)).clamp(0.0, 1.0);
                (cdf - i as f64 / n)
                    .abs()
                    .max((cdf - (i + 1) as f64 / n).abs())
            })
            .fold(0.0, f64::max);
        assert!(
            distance < 1.95 / n.sqrt(),
            "{what}: KS distance {distance} from U[{lo}, {hi}] over {n} samples"
        );
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
        assert!(bad(|c| c.blur_prob = Some(2.0)).contains("blur_prob 2"));
        assert!(bad(|c| c.crop_scale_min = 0.0).contains("crop_scale_min 0"));
        assert!(bad(|c| c.crop_scale_max = 0.05).contains("[0.08, 0.05]"));
        assert!(bad(|c| c.crop_scale_max = 1.5).contains("[0.08, 1.5]"));
        assert!(bad(|c| c.jitter_strength = -1.0).contains("jitter_strength -1"));
        assert!(bad(|c| c.blur_sigma_min = 0.0).contains("blur sigma range [0, 2]"));
        assert!(bad(|c| c.blur_sigma_max = 0.05).contains("blur sigma range [0.1, 0.05]"));
        let err = serde_json::from_str::<AugmentConfig>(r#"{"blur": 1}"#).unwrap_err();
        assert!(err.to_string().contains("blur"), "{err}");
        let partial: AugmentConfig =
            serde_json::from_str(r#"{"jitter_strength": 1.0, "resize_filter": "bicubic"}"#)
                .unwrap();
        assert_eq!(
            partial,
            AugmentConfig {
                jitter_strength: 1.0,
                resize_filter: ResizeFilter::Bicubic,
                ..Default::default()
            }
        );
    }

    #[test]
    fn auto_blur_is_on_from_96_px_and_resolves_to_a_number() {
        let auto = AugmentConfig::default();
        assert_eq!(auto.blur_probability(32), 0.0);
        assert_eq!(auto.blur_probability(95), 0.0);
        assert_eq!(auto.blur_probability(96), 0.5);
        assert_eq!(auto.resolved(224).blur_prob, Some(0.5));
        assert_eq!(auto.resolved(32).blur_prob, Some(0.0));
        let set = AugmentConfig {
            blur_prob: Some(0.25),
            ..auto
        };
        assert_eq!(set.blur_probability(32), 0.25);
        assert_eq!(set.resolved(224), set, "an explicit value stays");
        let json = serde_json::to_value(AugmentConfig::default().resolved(32)).unwrap();
        assert_eq!(json["blur_prob"], 0.0);
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

    /// On a large square image every target area up to 3/4 fits at any aspect ratio in
    /// [3/4, 4/3] on the first attempt, so those crops must have area ~ U(0.08, 0.75) and
    /// log aspect ratio ~ U(ln 3/4, ln 4/3); larger areas are sometimes redrawn (torchvision
    /// rejects a box that does not fit), which thins the top of the range.
    #[test]
    fn crop_area_and_log_ratio_follow_their_distributions() {
        let side = 1000;
        let (mut areas, mut log_ratios) = (Vec::new(), Vec::new());
        let n = 6000;
        for i in 0..n {
            let b = sample_crop_box(side, side, (0.08, 1.0), &mut sample_rng(3, 0, i, 0));
            let area = (b.height * b.width) as f64 / (side * side) as f64;
            assert!((0.079..=1.0).contains(&area), "{b:?}");
            if area <= 0.74 {
                areas.push(area);
                log_ratios.push((b.width as f64 / b.height as f64).ln());
            }
        }
        // P(area <= 0.74) is at least (0.74 - 0.08) / 0.92 = 0.717 (more with rejections).
        assert!(areas.len() as f64 >= 0.70 * n as f64, "{}", areas.len());
        assert_uniform("crop area", &mut areas, 0.08, 0.74);
        let (lo, hi) = ((0.75f64).ln(), (4.0f64 / 3.0).ln());
        assert_uniform("log aspect ratio", &mut log_ratios, lo, hi);
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
    fn op_rates_match_the_config() {
        let n = 4000;
        let count = |size: usize, cfg: &AugmentConfig, pick: fn(&ViewParams) -> bool| {
            (0..n)
                .filter(|&i| {
                    pick(&sample_view(
                        300,
                        400,
                        size,
                        cfg,
                        &mut sample_rng(5, 0, i, 0),
                    ))
                })
                .count()
        };
        let cfg = AugmentConfig::default();
        assert_rate("flip", count(32, &cfg, |p| p.flip), n as usize, 0.5);
        assert_rate(
            "jitter",
            count(32, &cfg, |p| p.jitter.is_some()),
            n as usize,
            0.8,
        );
        assert_rate(
            "grayscale",
            count(32, &cfg, |p| p.grayscale),
            n as usize,
            0.2,
        );
        assert_eq!(
            count(32, &cfg, |p| p.blur.is_some()),
            0,
            "auto: no blur at 32 px"
        );
        assert_rate(
            "blur",
            count(224, &cfg, |p| p.blur.is_some()),
            n as usize,
            0.5,
        );
        let other = AugmentConfig {
            flip_prob: 0.1,
            jitter_prob: 0.3,
            grayscale_prob: 0.6,
            blur_prob: Some(0.9),
            ..Default::default()
        };
        assert_rate("flip", count(32, &other, |p| p.flip), n as usize, 0.1);
        assert_rate(
            "jitter",
            count(32, &other, |p| p.jitter.is_some()),
            n as usize,
            0.3,
        );
        assert_rate(
            "grayscale",
            count(32, &other, |p| p.grayscale),
            n as usize,
            0.6,
        );
        assert_rate(
            "blur",
            count(32, &other, |p| p.blur.is_some()),
            n as usize,
            0.9,
        );
    }

    #[test]
    fn blur_sigma_is_uniform_in_range_with_the_official_kernel() {
        let cfg = AugmentConfig::default();
        let mut sigmas = Vec::new();
        for i in 0..4000 {
            if let Some(b) = sample_view(300, 400, 224, &cfg, &mut sample_rng(6, 0, i, 0)).blur {
                assert_eq!(b.kernel_size, 23);
                sigmas.push(b.sigma);
            }
        }
        assert!(sigmas.iter().all(|s| (0.1..2.0).contains(s)));
        assert_uniform("blur sigma", &mut sigmas, 0.1, 2.0);
    }

    #[test]
    fn jitter_factors_follow_their_ranges_and_orders_are_uniform() {
        let n = 4000;
        let (mut brightness, mut hue, mut first) = (Vec::new(), Vec::new(), [0usize; 4]);
        for i in 0..n {
            let j = sample_jitter(1.0, &mut sample_rng(2, 0, i, 0));
            for f in [j.brightness, j.contrast, j.saturation] {
                assert!((0.2..=1.8).contains(&f), "{j:?}");
            }
            assert!(j.hue.abs() <= 0.2, "{j:?}");
            let mut order = j.order;
            order.sort();
            assert_eq!(order, [0, 1, 2, 3]);
            brightness.push(j.brightness as f64);
            hue.push(j.hue as f64);
            first[j.order[0]] += 1;
        }
        assert_uniform("brightness", &mut brightness, 0.2, 1.8);
        assert_uniform("hue", &mut hue, -0.2, 0.2);
        for (op, &k) in first.iter().enumerate() {
            assert_rate(&format!("op {op} first"), k, n as usize, 0.25);
        }
        // At strength 0.5 (CIFAR-10) the factors shrink to [0.6, 1.4] and the hue to 0.1.
        let j = sample_jitter(0.5, &mut sample_rng(2, 0, 0, 0));
        assert!((0.6..=1.4).contains(&j.brightness) && j.hue.abs() <= 0.1);
    }

    #[test]
    fn identity_parameters_leave_the_image_unchanged() {
        let (h, w) = (9, 13);
        let src = random_image(h, w, 3);
        let mut out = vec![0u8; h * w * 3];
        let mut img: Vec<f32> = src.iter().map(|&x| x as f32).collect();
        color_jitter(&mut img, &identity_jitter());
        to_u8(&img, &mut out);
        assert_eq!(out, src, "identity jitter");
        let mut square = vec![0u8; 9 * 9 * 3];
        let mut params = identity_view(h, 9);
        params.jitter = Some(identity_jitter());
        apply_view(&src, h, w, 9, &params, &mut square);
        let expected: Vec<u8> = src
            .chunks(w * 3)
            .flat_map(|row| &row[..27])
            .copied()
            .collect();
        assert_eq!(square, expected, "apply_view with a same-size crop");
    }

    #[test]
    fn apply_view_blurs_last() {
        // A blurred view is the unblurred one put through the blur.
        let src = random_image(40, 40, 5);
        let mut params = identity_view(40, 40);
        params.grayscale = true;
        let mut sharp = vec![0u8; 40 * 40 * 3];
        apply_view(&src, 40, 40, 40, &params, &mut sharp);
        params.blur = Some(BlurParams {
            kernel_size: 5,
            sigma: 1.5,
        });
        let mut blurred = vec![0u8; sharp.len()];
        apply_view(&src, 40, 40, 40, &params, &mut blurred);
        let mut img: Vec<f32> = src.iter().map(|&x| x as f32).collect();
        grayscale(&mut img);
        blur::gaussian_blur(&mut img, (40, 40), 5, 1.5, &mut Vec::new());
        let mut expected = vec![0u8; sharp.len()];
        to_u8(&img, &mut expected);
        assert_eq!(blurred, expected);
        assert_ne!(blurred, sharp);
    }

    #[test]
    fn eval_view_resizes_the_shorter_side_and_crops_the_centre() {
        // A 40x60 image whose columns count up: at crop_fraction 0.5 the shorter side goes to
        // 20 / 0.5 = 40 px (no resize), the longer stays 60, and the centre crop starts at
        // column round_half_even((60 - 20) / 2) = 20 and row 10.
        let (h, w) = (40, 60);
        let src: Vec<u8> = (0..h * w)
            .flat_map(|p| [(p % w) as u8, (p / w) as u8, 0])
            .collect();
        let mut out = vec![0u8; 20 * 20 * 3];
        eval_view(&src, h, w, 20, 0.5, ResizeFilter::Bilinear, &mut out);
        assert_eq!(&out[..3], &[20, 10, 0]);
        assert_eq!(&out[out.len() - 3..], &[39, 29, 0]);
        // At crop_fraction 1 a square image is resized as a whole: the identity at its size.
        let square = random_image(24, 24, 1);
        let mut same = vec![0u8; square.len()];
        eval_view(&square, 24, 24, 24, 1.0, ResizeFilter::Bicubic, &mut same);
        assert_eq!(same, square);
        let mut small = vec![0u8; 12 * 12 * 3];
        eval_view(&square, 24, 24, 12, 1.0, ResizeFilter::Bilinear, &mut small);
        let mut whole = vec![0u8; small.len()];
        to_u8(
            &super::super::resize::resized_crop(&square, 24, 24, &CropBox::full(24, 24), 12, 12),
            &mut whole,
        );
        assert_eq!(small, whole, "a whole-image resize");
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
    fn brightness_contrast_and_saturation_blend_as_torchvision() {
        let px = [200.0f32, 100.0, 50.0];
        let gray = 0.299 * 200.0 + 0.587 * 100.0 + 0.114 * 50.0;
        let mut img = px.to_vec();
        adjust_brightness(&mut img, 1.5);
        assert_eq!(img, [255.0, 150.0, 75.0], "scaled and clamped");
        let mut img = px.to_vec();
        adjust_saturation(&mut img, 0.0);
        assert!(img.iter().all(|&v| (v - gray).abs() < 1e-3), "{img:?}");
        // Contrast blends towards the mean gray of the whole image, here two pixels.
        let mut img = [px, [0.0; 3]].concat();
        adjust_contrast(&mut img, 0.5);
        let mean = gray / 2.0;
        assert!((img[0] - (100.0 + 0.5 * mean)).abs() < 1e-3, "{img:?}");
        assert!((img[3] - 0.5 * mean).abs() < 1e-3, "{img:?}");
    }

    #[test]
    fn sextant_wrapping_equals_rem_euclid() {
        for h in [
            -0.0f32,
            0.0,
            5.999_999_5,
            6.0,
            11.999_999,
            12.0,
            -1e-9,
            -5.999_999_5,
            -6.0,
            -13.5,
            30.25,
        ] {
            assert_eq!(
                wrap_sextants(h).to_bits(),
                h.rem_euclid(6.0).to_bits(),
                "{h}"
            );
        }
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
