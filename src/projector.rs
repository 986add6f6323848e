//! TensorBoard embedding-projector export of test-set representations: the projector plugin
//! reads `projector_config.pbtxt` in the run directory, which points at a TSV of vectors, a TSV
//! of labels and a sprite image (one thumbnail per point) under `projector/`.
use crate::data::ImageSet;
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use std::fmt::Write as _;
use std::path::Path;
use tch::{Kind, Tensor};

/// Writes the first `features.size()[0]` images' representations (`[M, D]`), their labels and
/// a sprite of those images from `set`, and the config that ties them together.
pub fn write(run_dir: &Path, features: &Tensor, set: &ImageSet) -> Result<()> {
    let rows = features.size()[0] as usize;
    let dir = run_dir.join("projector");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let values = Vec::<f32>::try_from(
        features
            .to_kind(Kind::Float)
            .flatten(0, -1)
            .to_device(tch::Device::Cpu),
    )?;
    let dim = values.len() / rows.max(1);
    let mut tensors = String::new();
    for row in values.chunks(dim.max(1)) {
        let line: Vec<String> = row.iter().map(|v| format!("{v}")).collect();
        tensors += &line.join("\t");
        tensors.push('\n');
    }
    let labels: String = set.labels[..rows]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    write_file(&dir.join("tensors.tsv"), tensors.as_bytes())?;
    write_file(&dir.join("metadata.tsv"), labels.as_bytes())?;

    // Sprite: thumbnails in row-major order on a square grid.
    let (h, w) = (set.height as u32, set.width as u32);
    let side = (rows as f64).sqrt().ceil() as u32;
    let mut sprite = RgbImage::new(side * w, side * h);
    for i in 0..rows {
        let (gx, gy) = ((i as u32 % side) * w, (i as u32 / side) * h);
        for (p, px) in set.image(i).chunks_exact(3).enumerate() {
            let (x, y) = (p as u32 % w, p as u32 / w);
            sprite.put_pixel(gx + x, gy + y, Rgb([px[0], px[1], px[2]]));
        }
    }
    let sprite_path = dir.join("sprite.png");
    sprite
        .save(&sprite_path)
        .with_context(|| format!("writing {}", sprite_path.display()))?;

    let mut config = String::new();
    let _ = write!(
        config,
        "embeddings {{\n  tensor_name: \"test/h\"\n  tensor_path: \"projector/tensors.tsv\"\n  metadata_path: \"projector/metadata.tsv\"\n  \
         sprite {{\n    image_path: \"projector/sprite.png\"\n    single_image_dim: {w}\n    single_image_dim: {h}\n  }}\n}}\n"
    );
    write_file(&run_dir.join("projector_config.pbtxt"), config.as_bytes())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
