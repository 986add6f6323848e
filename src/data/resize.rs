//! Crop-and-resize of u8 RGB HWC images with antialiased filters, shared by the training views
//! ([`super::augment`]) and the evaluation transform ([`super::augment::eval_view`]).
//!
//! The filters are PIL's separable ones as torchvision applies them with `antialias=True`
//! (`torch.nn.functional.interpolate(..., antialias=True)` computes the same taps): output pixel
//! i of a side scaled by `scale = in / out` is centred at `(i + 0.5) * scale` in the input and
//! averages input pixels j with weights `k((j + 0.5 - centre) / max(scale, 1))`, normalised to
//! sum to 1, where k is the triangle `max(0, 1 - |x|)` ("bilinear", support 1) or Keys' cubic
//! with a = -0.5 ("bicubic", support 2). Upscaling is therefore plain interpolation
//! (half-pixel centres, edges clamped); downscaling widens the filter to cover every input
//! pixel, so thin stripes average out instead of aliasing. The horizontal pass runs first, as
//! in PIL. Outputs are f32 in 0..=255 (bicubic can overshoot; later steps clamp), so later
//! steps can work without re-quantising.
//!
//! Only the pixels of an output window are computed ([`Taps::new`]): a resize followed by a
//! centre crop (the evaluation transform) costs no more than its crop.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The resampling filter of a resize (torchvision's `interpolation` with `antialias=True`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// Triangle filter, support 1 (torchvision's default for tensors and PIL images).
    #[default]
    Bilinear,
    /// Keys' cubic, a = -0.5, support 2 (PIL's and torchvision's bicubic; the official SimCLR
    /// code resizes its crops bicubically).
    Bicubic,
}

impl ResizeFilter {
    /// Half-width of the filter at scale 1, in input pixels.
    fn support(self) -> f64 {
        match self {
            ResizeFilter::Bilinear => 1.0,
            ResizeFilter::Bicubic => 2.0,
        }
    }

    /// The filter's weight at distance `x` (in input pixels at scale 1) from the centre.
    fn weight(self, x: f64) -> f64 {
        match self {
            ResizeFilter::Bilinear => (1.0 - x.abs()).max(0.0),
            ResizeFilter::Bicubic => {
                // PIL's bicubic_filter (libImaging/Resample.c) with a = -0.5.
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// A crop rectangle in pixels, inside the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows in the crop.
    pub height: usize,
    /// Columns in the crop.
    pub width: usize,
}

impl CropBox {
    /// The whole `h x w` image.
    pub fn full(h: usize, w: usize) -> Self {
        Self {
            top: 0,
            left: 0,
            height: h,
            width: w,
        }
    }
}

/// The filter taps of one axis of a resize, for a window of its outputs: output `i` of the
/// window reads `len` consecutive source pixels from `starts[i]` with weights
/// `weights[i * len..][..len]`. Every output gets the same number of taps (the largest, padded
/// with zero weights, the window shifted to stay inside the source) so the inner loops have a
/// fixed trip count; a zero weight adds exactly 0, so the sums equal PIL's shorter ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Taps {
    starts: Vec<usize>,
    len: usize,
    weights: Vec<f32>,
}

impl Taps {
    /// Taps of the outputs `window` of a resize of the source pixels `offset..offset + in_len`
    /// to `out_len` pixels (PIL's `precompute_coeffs`).
    ///
    /// # Panics
    /// If a length is 0 or the window is not inside `0..out_len`.
    pub fn new(
        offset: usize,
        in_len: usize,
        out_len: usize,
        window: Range<usize>,
        filter: ResizeFilter,
    ) -> Self {
        assert!(
            in_len > 0 && out_len > 0 && window.start < window.end && window.end <= out_len,
            "resize: window {window:?} of a resize from {in_len} to {out_len} pixels"
        );
        let scale = in_len as f64 / out_len as f64;
        let fs = scale.max(1.0);
        let support = filter.support() * fs;
        let raw: Vec<(usize, Vec<f64>)> = window
            .map(|i| {
                let centre = (i as f64 + 0.5) * scale;
                let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
                let hi = ((centre + support + 0.5).floor() as usize).min(in_len);
                let w = (lo..hi)
                    .map(|j| filter.weight((j as f64 + 0.5 - centre) / fs))
                    .collect();
                (lo, w)
            })
            .collect();
        let len = raw.iter().map(|(_, w)| w.len()).max().unwrap_or(0);
        let mut starts = Vec::with_capacity(raw.len());
        let mut weights = vec![0f32; raw.len() * len];
        for ((lo, w), dst) in raw.iter().zip(weights.chunks_exact_mut(len)) {
            let total: f64 = w.iter().sum();
            let start = (*lo).min(in_len - len);
            let skip = lo - start;
            for (d, &x) in dst[skip..].iter_mut().zip(w) {
                *d = (x / total) as f32;
            }
            starts.push(offset + start);
        }
        Taps {
            starts,
            len,
            weights,
        }
    }

    /// Number of outputs.
    fn outputs(&self) -> usize {
        self.starts.len()
    }

    /// The source pixels any output reads.
    fn span(&self) -> Range<usize> {
        let first = self.starts.iter().min().copied().unwrap_or(0);
        let last = self.starts.iter().max().copied().unwrap_or(0);
        first..last + self.len
    }

    /// Each output's first source pixel and weights.
    fn iter(&self) -> impl Iterator<Item = (usize, &[f32])> {
        self.starts
            .iter()
            .copied()
            .zip(self.weights.chunks_exact(self.len))
    }
}

/// Resamples `src` (`w` pixels wide, u8 HWC) through `rows` and `cols` into `out`
/// (`rows.outputs() x cols.outputs() x 3` f32), using `tmp` as the horizontal pass's buffer.
/// Both buffers are resized as needed, so callers can reuse them across images.
pub fn resample(
    src: &[u8],
    w: usize,
    rows: &Taps,
    cols: &Taps,
    tmp: &mut Vec<f32>,
    out: &mut Vec<f32>,
) {
    let (out_h, out_w) = (rows.outputs(), cols.outputs());
    let span = rows.span();
    assert!(
        cols.span().end <= w && span.end * w * 3 <= src.len(),
        "resize: taps reach outside the {w}-pixel-wide source"
    );
    let stride = out_w * 3;
    // Horizontal pass over the source rows the vertical taps read: [span, out_w, 3].
    tmp.resize(span.len() * stride, 0.0);
    for (y, dst) in span.clone().zip(tmp.chunks_exact_mut(stride)) {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for ((start, weights), acc) in cols.iter().zip(dst.chunks_exact_mut(3)) {
            let px = &row[start * 3..(start + weights.len()) * 3];
            let mut sum = [0f32; 3];
            for (&wt, p) in weights.iter().zip(px.chunks_exact(3)) {
                sum[0] += wt * p[0] as f32;
                sum[1] += wt * p[1] as f32;
                sum[2] += wt * p[2] as f32;
            }
            acc.copy_from_slice(&sum);
        }
    }
    // Vertical pass: [out_h, out_w, 3].
    out.clear();
    out.resize(out_h * stride, 0.0);
    for ((start, weights), dst) in rows.iter().zip(out.chunks_exact_mut(stride)) {
        let first = (start - span.start) * stride;
        let src_rows = tmp[first..first + weights.len() * stride].chunks_exact(stride);
        for (&wt, src_row) in weights.iter().zip(src_rows) {
            dst.iter_mut().zip(src_row).for_each(|(d, s)| *d += wt * s);
        }
    }
}

/// Crops `crop` out of `src` (`h * w * 3` bytes) and resizes it to `out_h x out_w` with the
/// antialiased bilinear filter, returning f32 HWC in 0..=255. A full-image crop to the same
/// size is exactly the identity.
pub fn resized_crop(
    src: &[u8],
    h: usize,
    w: usize,
    crop: &CropBox,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let mut out = Vec::new();
    resized_crop_into(
        src,
        (h, w),
        crop,
        (out_h, out_w),
        ResizeFilter::Bilinear,
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// [`resized_crop`] with a choice of filter, into reusable buffers (see [`resample`]).
///
/// # Panics
/// If `src` is not `h * w * 3` bytes or `crop` is empty or not inside the image.
pub fn resized_crop_into(
    src: &[u8],
    (h, w): (usize, usize),
    crop: &CropBox,
    (out_h, out_w): (usize, usize),
    filter: ResizeFilter,
    tmp: &mut Vec<f32>,
    out: &mut Vec<f32>,
) {
    assert_eq!(src.len(), h * w * 3, "resize: source is not {h}x{w}x3");
    assert!(
        crop.top + crop.height <= h && crop.left + crop.width <= w,
        "resize: {crop:?} outside the {h}x{w} image"
    );
    let rows = Taps::new(crop.top, crop.height, out_h, 0..out_h, filter);
    let cols = Taps::new(crop.left, crop.width, out_w, 0..out_w, filter);
    resample(src, w, &rows, &cols, tmp, out);
}

/// Rounds f32 0..=255 values to u8 (saturating, halves away from zero like `f32::round`).
/// Written without `round`, a libm call per value on baseline x86-64, so the loop vectorises.
pub fn to_u8(img: &[f32], out: &mut [u8]) {
    out.iter_mut().zip(img).for_each(|(o, &v)| {
        let v = v.clamp(0.0, 255.0); // NaN stays NaN and truncates to 0
        let whole = v as i32; // truncates; v >= 0
        *o = (whole + i32::from(v - whole as f32 >= 0.5)) as u8;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity_and_a_crop_is_a_copy() {
        let (h, w) = (5, 7);
        let src: Vec<u8> = (0..h * w * 3).map(|x| (x * 37 % 256) as u8).collect();
        let mut out = vec![0u8; src.len()];
        to_u8(
            &resized_crop(&src, h, w, &CropBox::full(h, w), h, w),
            &mut out,
        );
        assert_eq!(out, src);
        let crop = CropBox {
            top: 1,
            left: 2,
            height: 3,
            width: 4,
        };
        let mut part = vec![0u8; 3 * 4 * 3];
        to_u8(&resized_crop(&src, h, w, &crop, 3, 4), &mut part);
        let expected: Vec<u8> = (1..4)
            .flat_map(|y| src[(y * w + 2) * 3..(y * w + 6) * 3].to_vec())
            .collect();
        assert_eq!(part, expected);
    }

    /// Upscales one `[0, 255]` row to 4 pixels with `filter`, returning the red channel.
    fn upscaled_row(filter: ResizeFilter) -> Vec<f32> {
        let src = [0u8, 0, 0, 255, 255, 255];
        let mut out = Vec::new();
        let full = CropBox::full(1, 2);
        resized_crop_into(
            &src,
            (1, 2),
            &full,
            (1, 4),
            filter,
            &mut Vec::new(),
            &mut out,
        );
        out.iter().step_by(3).copied().collect()
    }

    #[test]
    fn upscaling_matches_half_pixel_bilinear_and_keys_bicubic() {
        // torch.nn.functional.interpolate(x, size=(1, 4), mode=..., align_corners=False,
        // antialias=True) on the row [0, 255]: bilinear [0, 63.75, 191.25, 255],
        // bicubic [-22.5, 52.8214, 202.1786, 277.5] (the cubic overshoots; later steps clamp).
        assert_eq!(
            upscaled_row(ResizeFilter::Bilinear),
            [0.0, 63.75, 191.25, 255.0]
        );
        let cubic = upscaled_row(ResizeFilter::Bicubic);
        for (got, want) in cubic.iter().zip([-22.5, 52.8214, 202.1786, 277.5]) {
            assert!((got - want).abs() < 1e-3, "{cubic:?}");
        }
    }

    #[test]
    fn bicubic_downscaling_matches_torch() {
        // interpolate([[0, 255, 0, 255, 255, 0]], size=(1, 4), mode="bicubic", antialias=True)
        let src: Vec<u8> = [0u8, 255, 0, 255, 255, 0]
            .iter()
            .flat_map(|&v| [v; 3])
            .collect();
        let mut out = Vec::new();
        let full = CropBox::full(1, 6);
        let filter = ResizeFilter::Bicubic;
        resized_crop_into(
            &src,
            (1, 6),
            &full,
            (1, 4),
            filter,
            &mut Vec::new(),
            &mut out,
        );
        let red: Vec<f32> = out.iter().step_by(3).copied().collect();
        for (got, want) in red.iter().zip([98.2039, 106.6079, 242.5039, 89.9515]) {
            assert!((got - want).abs() < 1e-3, "{red:?}");
        }
    }

    #[test]
    fn downscaling_averages_like_an_antialiased_resize() {
        // A 1-px checkerboard shrunk 4x must come out flat gray, not aliased.
        let (h, w) = (16, 16);
        let src: Vec<u8> = (0..h * w)
            .flat_map(|p| [if (p % w + p / w) % 2 == 0 { 0 } else { 255 }; 3])
            .collect();
        let img = resized_crop(&src, h, w, &CropBox::full(h, w), 4, 4);
        assert!(img.iter().all(|&v| (v - 127.5).abs() < 8.0), "{img:?}");
    }

    #[test]
    fn a_window_of_a_resize_equals_the_cropped_full_resize() {
        let (h, w) = (23, 31);
        let src: Vec<u8> = (0..h * w * 3).map(|x| (x * 97 % 251) as u8).collect();
        let (out_h, out_w) = (17, 12);
        for filter in [ResizeFilter::Bilinear, ResizeFilter::Bicubic] {
            let mut full = Vec::new();
            let crop = CropBox::full(h, w);
            resized_crop_into(
                &src,
                (h, w),
                &crop,
                (out_h, out_w),
                filter,
                &mut Vec::new(),
                &mut full,
            );
            let rows = Taps::new(0, h, out_h, 3..11, filter);
            let cols = Taps::new(0, w, out_w, 5..12, filter);
            let mut window = Vec::new();
            resample(&src, w, &rows, &cols, &mut Vec::new(), &mut window);
            let expected: Vec<f32> = (3..11)
                .flat_map(|y| full[(y * out_w + 5) * 3..(y * out_w + 12) * 3].to_vec())
                .collect();
            assert_eq!(window, expected, "{filter:?}");
        }
    }

    #[test]
    fn taps_are_normalised_and_stay_inside_the_source() {
        for (in_len, out_len) in [(7, 3), (3, 7), (500, 224), (1, 5)] {
            for filter in [ResizeFilter::Bilinear, ResizeFilter::Bicubic] {
                let taps = Taps::new(2, in_len, out_len, 0..out_len, filter);
                assert_eq!(taps.outputs(), out_len);
                assert!(taps.span().start >= 2 && taps.span().end <= 2 + in_len);
                for (_, weights) in taps.iter() {
                    let total: f32 = weights.iter().sum();
                    assert!(
                        (total - 1.0).abs() < 1e-5,
                        "{in_len}->{out_len}: {weights:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn rounding_to_u8_rounds_halves_up_and_saturates() {
        let img = [
            -3.0,
            0.49999997,
            0.5,
            1.5,
            2.4999998,
            254.5,
            300.0,
            f32::NAN,
        ];
        let mut out = [0u8; 8];
        to_u8(&img, &mut out);
        assert_eq!(out, [0, 0, 1, 2, 2, 255, 255, 0]);
        let expected: Vec<u8> = img
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        assert_eq!(out.to_vec(), expected, "same as f32::round");
    }
}
