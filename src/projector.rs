//! TensorBoard embedding-projector export of test-set representations: the projector plugin
//! reads `projector_config.pbtxt` in the run directory, which points at a TSV of vectors, a TSV
//! of labels and a sprite image (one thumbnail per point) under `projector/`.
use crate::data::loader::{eval_batches, EvalTransform};
use crate::data::{Dataset, Subset};
use crate::eval::knn;
use crate::model::resnet::ResNet;
use anyhow::{Context, Result};
use image::RgbImage;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// Writes the unit-norm representations h of the first `max_images` images of `set` (those
/// that can be read), their labels and a sprite of the same inputs the encoder saw, and the
/// config that ties them together.
pub fn write(
    run_dir: &Path,
    encoder: &ResNet,
    set: Arc<dyn Dataset>,
    transform: EvalTransform,
    max_images: usize,
    device: Device,
) -> Result<()> {
    let shown = Subset::first(set, Some(max_images));
    let (mut feats, mut labels, mut inputs) = (Vec::new(), Vec::new(), Vec::new());
    tch::no_grad(|| {
        for batch in eval_batches(shown.as_ref(), transform, 256, device) {
            feats.push(knn::unit_rows(&encoder.forward_t(&batch.images, false)));
            labels.extend(batch.indices.iter().map(|&i| shown.label(i)));
            inputs.push(batch.images.to_device(Device::Cpu));
        }
    });
    let features = Tensor::cat(&feats, 0);
    let rows = labels.len();
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
    let labels: String = labels.iter().map(|l| format!("{l}\n")).collect();
    write_file(&dir.join("tensors.tsv"), tensors.as_bytes())?;
    write_file(&dir.join("metadata.tsv"), labels.as_bytes())?;

    // Sprite: the inputs as thumbnails, in row-major order on a square grid.
    let s = transform.image_size as i64;
    let (h, w) = (s as u32, s as u32);
    let side = (rows as f64).sqrt().ceil() as i64;
    let padded =
        Tensor::cat(&inputs, 0).constant_pad_nd([0, 0, 0, 0, 0, 0, 0, side * side - rows as i64]);
    let grid = (padded * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .view([side, side, 3, s, s])
        .permute([0, 3, 1, 4, 2]) // [gy, y, gx, x, c]
        .contiguous()
        .view([-1]);
    let pixels = Vec::<u8>::try_from(grid)?;
    let sprite = RgbImage::from_raw(side as u32 * w, side as u32 * h, pixels)
        .context("sprite buffer size")?;
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
