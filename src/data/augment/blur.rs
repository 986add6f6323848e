//! Gaussian blur of f32 RGB HWC images, as torchvision's `gaussian_blur` (SimCLR Appendix A:
//! "we blur the image 50% of the time using a Gaussian kernel. We randomly sample
//! σ ∈ [0.1, 2.0], and the kernel size is set to be 10% of the image height/width").
//!
//! The kernel is `k[i] ∝ exp(-x_i² / 2σ²)` at `x_i = i - (size - 1) / 2`, normalised to sum
//! to 1; the image is padded by reflection (`torch.nn.functional.pad(mode="reflect")`: the
//! edge pixel is not repeated) and convolved with `k` along rows, then along columns. The
//! separable form costs `2 * size` multiply-adds a value instead of torchvision's `size²`, and
//! both passes are `y += k[i] * x` over contiguous rows, which the compiler vectorises.

/// The official kernel side for views of `side` pixels: `side / 10` made odd the way the
/// official `data_util.py` does it (`radius = side // 10 // 2`, `size = 2 * radius + 1`), so 23
/// at 224 px, 9 at 96 px and 3 at 32 px.
pub fn kernel_size(side: usize) -> usize {
    side / 10 / 2 * 2 + 1
}

/// The normalised 1-D kernel of odd length `size` and standard deviation `sigma` pixels
/// (torchvision's `_get_gaussian_kernel1d`, computed in f64 and rounded once).
///
/// # Panics
/// If `size` is even or `sigma` is not positive.
pub fn gaussian_kernel(size: usize, sigma: f64) -> Vec<f32> {
    assert!(
        size % 2 == 1 && sigma > 0.0,
        "blur: kernel size {size} must be odd and sigma {sigma} positive"
    );
    let half = (size / 2) as f64;
    let pdf: Vec<f64> = (0..size)
        .map(|i| {
            let x = (i as f64 - half) / sigma;
            (-0.5 * x * x).exp()
        })
        .collect();
    let total: f64 = pdf.iter().sum();
    pdf.iter().map(|&p| (p / total) as f32).collect()
}

/// Blurs `img` (`h x w x 3` f32 HWC) in place with a `size x size` Gaussian of standard
/// deviation `sigma`; `tmp` is a reusable buffer for the row pass.
///
/// # Panics
/// If the kernel's radius is not smaller than both sides (reflection needs a pixel to mirror),
/// or as [`gaussian_kernel`].
pub fn gaussian_blur(
    img: &mut [f32],
    (h, w): (usize, usize),
    size: usize,
    sigma: f64,
    tmp: &mut Vec<f32>,
) {
    let kernel = gaussian_kernel(size, sigma);
    let r = size / 2;
    assert!(
        r < h && r < w,
        "blur: kernel size {size} too large for a {h}x{w} image"
    );
    assert_eq!(img.len(), h * w * 3, "blur: image is not {h}x{w}x3");
    let stride = w * 3;
    // Row pass, img -> tmp, through one reflection-padded row of w + 2r pixels.
    tmp.clear();
    tmp.resize(h * stride, 0.0);
    let mut padded = vec![0f32; stride + 2 * r * 3];
    for (row, dst) in img.chunks_exact(stride).zip(tmp.chunks_exact_mut(stride)) {
        padded[r * 3..r * 3 + stride].copy_from_slice(row);
        for i in 1..=r {
            padded.copy_within((r + i) * 3..(r + i + 1) * 3, (r - i) * 3);
            let right = r + w - 1;
            padded.copy_within((right - i) * 3..(right - i + 1) * 3, (right + i) * 3);
        }
        for (k, &weight) in kernel.iter().enumerate() {
            let src = &padded[k * 3..k * 3 + stride];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += weight * s);
        }
    }
    // Column pass, tmp -> img, mirroring row indices at the top and bottom.
    for (y, dst) in img.chunks_exact_mut(stride).enumerate() {
        dst.fill(0.0);
        for (k, &weight) in kernel.iter().enumerate() {
            let sy = reflect(y + k, r, h);
            let src = &tmp[sy * stride..(sy + 1) * stride];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += weight * s);
        }
    }
}

/// The source index of padded index `i` (padding `r`) of an axis of `n` pixels mirrored
/// about its first and last pixel.
fn reflect(i: usize, r: usize, n: usize) -> usize {
    if i < r {
        r - i
    } else if i - r >= n {
        2 * (n - 1) - (i - r)
    } else {
        i - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_kernel_sizes() {
        assert_eq!(
            [224, 96, 64, 32, 9].map(kernel_size),
            [23, 9, 7, 3, 1],
            "data_util.py: size // 10 // 2 * 2 + 1"
        );
    }

    #[test]
    fn kernel_is_normalised_symmetric_and_matches_torchvision() {
        // torchvision.transforms.v2.functional._misc._get_gaussian_kernel1d(5, 1.0, ...)
        let k = gaussian_kernel(5, 1.0);
        for (got, want) in
            k.iter()
                .zip([0.054488685, 0.24420135, 0.40261996, 0.24420135, 0.054488685])
        {
            assert!((got - want).abs() < 1e-6, "{k:?}");
        }
        let k = gaussian_kernel(23, 0.1);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(
            k[11] > 0.999_999,
            "a tiny sigma is nearly the identity: {k:?}"
        );
    }

    #[test]
    fn reflection_mirrors_without_repeating_the_edge() {
        // Padding [a b c d] by 2: [c b | a b c d | c b].
        let padded: Vec<usize> = (0..8).map(|i| reflect(i, 2, 4)).collect();
        assert_eq!(padded, [2, 1, 0, 1, 2, 3, 2, 1]);
    }

    #[test]
    fn blur_keeps_flat_images_and_the_mean_of_a_periodic_one() {
        let (h, w) = (12, 10);
        let mut flat = vec![77.0f32; h * w * 3];
        gaussian_blur(&mut flat, (h, w), 7, 2.0, &mut Vec::new());
        assert!(flat.iter().all(|&v| (v - 77.0).abs() < 1e-3));
        // An impulse in the middle spreads into the separable kernel's outer product.
        let mut img = vec![0f32; h * w * 3];
        img[(6 * w + 5) * 3 + 1] = 1000.0;
        gaussian_blur(&mut img, (h, w), 5, 1.0, &mut Vec::new());
        let k = gaussian_kernel(5, 1.0);
        for dy in 0..5 {
            for dx in 0..5 {
                let got = img[((4 + dy) * w + 3 + dx) * 3 + 1];
                let want = 1000.0 * k[dy] * k[dx];
                assert!((got - want).abs() < 1e-3, "({dy}, {dx}): {got} vs {want}");
            }
        }
        assert_eq!(img[(6 * w + 5) * 3], 0.0, "channels stay apart");
        assert!(
            (img.iter().sum::<f32>() - 1000.0).abs() < 1e-2,
            "mass is kept"
        );
    }
}
