//! A picture of what the augmentation does: one row per image, the original (resized to the
//! view size) followed by its two augmented views, exactly as the loader makes them in epoch 0
//! (the same per-sample randomness). Written by `simclr augment` and to TensorBoard at the
//! start of training.
use super::augment::{augment_view, eval_view, sample_rng, AugmentConfig};
use super::Dataset;
use anyhow::Result;
use image::{Rgb, RgbImage};

/// Rows of `original | view 1 | view 2` for the first `count` images of `set` (fewer if the set
/// is smaller), each tile `image_size` square; the original is the centre square of the image.
/// Fails, naming the file, if one of those images cannot be read.
pub fn augmentation_grid(
    set: &dyn Dataset,
    cfg: &AugmentConfig,
    image_size: usize,
    seed: u64,
    count: usize,
) -> Result<RgbImage> {
    let rows = count.min(set.len());
    let s = image_size;
    let mut grid = RgbImage::new((3 * s) as u32, (rows * s) as u32);
    let mut tile = vec![0u8; s * s * 3];
    for i in 0..rows {
        let image = set.image(i)?;
        let (h, w) = (image.height, image.width);
        eval_view(&image.pixels, h, w, s, 1.0, cfg.resize_filter, &mut tile);
        paste(&mut grid, &tile, s, 0, i);
        for view in 0..2 {
            let mut rng = sample_rng(seed, 0, i as u64, view as u64);
            augment_view(&image.pixels, h, w, s, cfg, &mut rng, &mut tile);
            paste(&mut grid, &tile, s, 1 + view, i);
        }
    }
    Ok(grid)
}

/// Copies an `s`x`s` HWC tile into grid cell (`col`, `row`).
fn paste(grid: &mut RgbImage, tile: &[u8], s: usize, col: usize, row: usize) {
    for (p, px) in tile.chunks_exact(3).enumerate() {
        let (x, y) = ((col * s + p % s) as u32, (row * s + p / s) as u32);
        grid.put_pixel(x, y, Rgb([px[0], px[1], px[2]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{generate, SyntheticConfig};

    #[test]
    fn grid_has_one_row_per_image_and_the_original_first() {
        let splits = generate(
            &SyntheticConfig {
                train_size: 20,
                test_size: 10,
                image_size: 32,
            },
            0,
        )
        .expect("synthetic");
        let grid = augmentation_grid(&splits.train, &AugmentConfig::default(), 32, 0, 4).unwrap();
        assert_eq!(grid.dimensions(), (96, 128));
        // At the native size the first tile of each row is the image itself.
        let original = splits.train.pixels(1);
        for (p, px) in original.chunks_exact(3).enumerate() {
            assert_eq!(
                grid.get_pixel((p % 32) as u32, (32 + p / 32) as u32).0,
                [px[0], px[1], px[2]]
            );
        }
    }
}
