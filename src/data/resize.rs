//! Crop-and-resize of u8 RGB HWC images with an antialiased bilinear filter, shared by the
//! training views ([`super::augment`]) and the evaluation transform ([`super::loader`]).
//!
//! The filter is PIL's separable triangle ("bilinear") filter as torchvision applies it with
//! `antialias=True`: output pixel i of a side scaled by `scale = in / out` is centred at
//! `(i + 0.5) * scale` in the input and averages input pixels j with weights
//! `max(0, 1 - |j + 0.5 - centre| / max(scale, 1))`, normalised to sum to 1. Upscaling is
//! therefore plain bilinear interpolation (half-pixel centres, edges clamped); downscaling
//! widens the triangle to cover every input pixel, so thin stripes average out instead of
//! aliasing. Outputs are f32 in 0..=255, so later steps can work without re-quantising.

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

/// Crops `crop` out of `src` (`h * w * 3` bytes) and resizes it to `out_h x out_w`, returning
/// f32 HWC in 0..=255. A full-image crop to the same size is exactly the identity.
pub fn resized_crop(
    src: &[u8],
    h: usize,
    w: usize,
    crop: &CropBox,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), h * w * 3, "resize: source is not {h}x{w}x3");
    assert!(
        crop.top + crop.height <= h && crop.left + crop.width <= w,
        "resize: {crop:?} outside the {h}x{w} image"
    );
    let cols = filter_taps(crop.width, out_w);
    let rows = filter_taps(crop.height, out_h);
    // Horizontal pass over the crop's rows: [crop.height, out_w, 3].
    let mut tmp = vec![0f32; crop.height * out_w * 3];
    for y in 0..crop.height {
        let row = &src[((crop.top + y) * w + crop.left) * 3..];
        for (x, (start, weights)) in cols.iter().enumerate() {
            let acc = &mut tmp[(y * out_w + x) * 3..][..3];
            for (k, &wt) in weights.iter().enumerate() {
                let px = &row[(start + k) * 3..][..3];
                (0..3).for_each(|c| acc[c] += wt * px[c] as f32);
            }
        }
    }
    // Vertical pass: [out_h, out_w, 3].
    let mut out = vec![0f32; out_h * out_w * 3];
    for (y, (start, weights)) in rows.iter().enumerate() {
        let dst = &mut out[y * out_w * 3..][..out_w * 3];
        for (k, &wt) in weights.iter().enumerate() {
            let src_row = &tmp[(start + k) * out_w * 3..][..out_w * 3];
            dst.iter_mut().zip(src_row).for_each(|(d, s)| *d += wt * s);
        }
    }
    out
}

/// Rounds f32 0..=255 values to u8 (saturating).
pub fn to_u8(img: &[f32], out: &mut [u8]) {
    out.iter_mut()
        .zip(img)
        .for_each(|(o, &v)| *o = v.round().clamp(0.0, 255.0) as u8);
}

/// For each output index, the first input index and the normalised weights (PIL's
/// `precompute_coeffs` with the bilinear filter of support 1).
fn filter_taps(in_len: usize, out_len: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_len as f64 / out_len as f64;
    let fs = scale.max(1.0);
    (0..out_len)
        .map(|i| {
            let centre = (i as f64 + 0.5) * scale;
            let lo = ((centre - fs + 0.5).floor().max(0.0)) as usize;
            let hi = ((centre + fs + 0.5).floor() as usize).min(in_len);
            let raw: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 + 0.5 - centre) / fs).abs()).max(0.0))
                .collect();
            let total: f64 = raw.iter().sum();
            (lo, raw.iter().map(|&x| (x / total) as f32).collect())
        })
        .collect()
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

    #[test]
    fn upscaling_matches_half_pixel_bilinear() {
        // torch.nn.functional.interpolate(x, size=4, mode="bilinear", align_corners=False)
        // on a row [0, 255] gives [0, 63.75, 191.25, 255].
        let src = [0u8, 0, 0, 255, 255, 255];
        let out = resized_crop(&src, 1, 2, &CropBox::full(1, 2), 1, 4);
        let red: Vec<f32> = out.iter().step_by(3).copied().collect();
        assert_eq!(red, [0.0, 63.75, 191.25, 255.0]);
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
}
