//! STL-10 in its official binary version (<https://cs.stanford.edu/~acoates/stl10/>):
//! `train_X.bin`/`train_y.bin` (5,000 labelled), `test_X.bin`/`test_y.bin` (8,000) and
//! `unlabeled_X.bin` (100,000 images, 2.7 GB), all 96x96 RGB.
//!
//! Images are stored as 3 planes of 96x96 bytes each, every plane column-major (MATLAB
//! order): pixel (row y, column x) of channel c is byte `c*9216 + x*96 + y` of its image.
//! Labels are one byte each, 1..=10. The `_X` files are memory-mapped and each image is
//! transposed to HWC when it is read, so opening the unlabeled split costs no memory.
//!
//! Pre-training uses train + unlabeled when `unlabeled_X.bin` is present (the paper's STL-10
//! setting); the kNN monitor and evaluations use the labelled splits.

use std::borrow::Cow;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use memmap2::Mmap;

use super::{Dataset, Image, Splits};

const SIDE: usize = 96;
const IMAGE_BYTES: usize = SIDE * SIDE * 3;
const NUM_CLASSES: usize = 10;

/// One STL-10 split: a memory-mapped `_X.bin` and its labels (-1 for the unlabeled split).
pub struct Stl10Split {
    pixels: Mmap,
    labels: Vec<i64>,
}

impl Stl10Split {
    /// Maps `x_path` and reads `y_path` (if any), checking that sizes and labels agree.
    fn open(x_path: &Path, y_path: Option<&Path>) -> Result<Self> {
        let file =
            File::open(x_path).with_context(|| format!("{}: cannot open", x_path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("{}: cannot stat", x_path.display()))?
            .len() as usize;
        ensure!(
            len > 0 && len % IMAGE_BYTES == 0,
            "{}: {len} bytes is not a whole number of 96x96x3 images",
            x_path.display()
        );
        let count = len / IMAGE_BYTES;
        // SAFETY: the map is read-only and private to this process; the dataset files are
        // not expected to change during a run (as for any memory-mapped dataset reader).
        let pixels = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot memory-map", x_path.display()))?;
        let labels = match y_path {
            None => vec![-1; count],
            Some(y_path) => {
                let bytes = std::fs::read(y_path)
                    .with_context(|| format!("{}: cannot read", y_path.display()))?;
                ensure!(
                    bytes.len() == count,
                    "{}: {} labels for the {count} images of {}",
                    y_path.display(),
                    bytes.len(),
                    x_path.display()
                );
                if let Some((i, &bad)) = bytes
                    .iter()
                    .enumerate()
                    .find(|(_, &l)| !(1..=NUM_CLASSES as u8).contains(&l))
                {
                    anyhow::bail!(
                        "{}: label {bad} of image {i} outside 1..=10",
                        y_path.display()
                    );
                }
                bytes.iter().map(|&l| i64::from(l) - 1).collect()
            }
        };
        Ok(Self { pixels, labels })
    }
}

impl Dataset for Stl10Split {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn label(&self, i: usize) -> i64 {
        self.labels[i]
    }

    fn num_classes(&self) -> usize {
        NUM_CLASSES
    }

    fn image(&self, i: usize) -> Result<Image<'_>> {
        let raw = &self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES];
        let mut hwc = vec![0u8; IMAGE_BYTES];
        for (c, plane) in raw.chunks_exact(SIDE * SIDE).enumerate() {
            for (x, column) in plane.chunks_exact(SIDE).enumerate() {
                for (y, &v) in column.iter().enumerate() {
                    hwc[(y * SIDE + x) * 3 + c] = v;
                }
            }
        }
        Ok(Image {
            pixels: Cow::Owned(hwc),
            height: SIDE,
            width: SIDE,
        })
    }
}

/// Opens the splits under `dir`; a missing file or a size mismatch is refused, naming the file.
pub fn load(dir: &Path) -> Result<Splits> {
    let dir = super::locate_files(
        dir,
        "stl10_binary",
        "test_X.bin",
        "train_X.bin, train_y.bin, test_X.bin, test_y.bin and optionally unlabeled_X.bin",
    )?;
    let split = |name: &str| -> Result<Stl10Split> {
        let x = dir.join(format!("{name}_X.bin"));
        let y = dir.join(format!("{name}_y.bin"));
        for path in [&x, &y] {
            ensure!(path.is_file(), "{}: missing", path.display());
        }
        Stl10Split::open(&x, Some(&y))
    };
    let unlabeled_path = dir.join("unlabeled_X.bin");
    let unlabeled = if unlabeled_path.is_file() {
        Some(Arc::new(Stl10Split::open(&unlabeled_path, None)?) as Arc<dyn Dataset>)
    } else {
        None
    };
    Ok(Splits {
        train: Arc::new(split("train")?),
        test: Arc::new(split("test")?),
        unlabeled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `n` images in the official layout: image k has value (k*31 + c*7 + x*3 + y) at
    /// (y, x, c), so any transposition mistake shows.
    fn write_x(path: &Path, n: usize) {
        let mut out = Vec::new();
        for k in 0..n {
            for c in 0..3 {
                for x in 0..SIDE {
                    for y in 0..SIDE {
                        out.push(value(k, y, x, c));
                    }
                }
            }
        }
        std::fs::write(path, out).unwrap();
    }

    fn value(k: usize, y: usize, x: usize, c: usize) -> u8 {
        (k * 31 + c * 7 + x * 3 + y) as u8
    }

    fn write_dataset(dir: &Path, unlabeled: bool) {
        write_x(&dir.join("train_X.bin"), 3);
        std::fs::write(dir.join("train_y.bin"), [1, 10, 4]).unwrap();
        write_x(&dir.join("test_X.bin"), 2);
        std::fs::write(dir.join("test_y.bin"), [2, 3]).unwrap();
        if unlabeled {
            write_x(&dir.join("unlabeled_X.bin"), 4);
        }
    }

    #[test]
    fn images_are_transposed_to_hwc_and_labels_start_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), true);
        let splits = load(dir.path()).unwrap();
        assert_eq!((splits.train.len(), splits.test.len()), (3, 2));
        assert_eq!(splits.train.labels(), [0, 9, 3]);
        let img = splits.train.image(2).unwrap();
        for (y, x, c) in [(0, 0, 0), (5, 90, 2), (95, 1, 1)] {
            assert_eq!(img.pixels[(y * SIDE + x) * 3 + c], value(2, y, x, c));
        }
        let unlabeled = splits.unlabeled.expect("unlabeled split");
        assert_eq!((unlabeled.len(), unlabeled.label(3)), (4, -1));
        assert_eq!(splits_pretraining_len(dir.path()), 7);
    }

    fn splits_pretraining_len(dir: &Path) -> usize {
        load(dir).unwrap().pretraining().unwrap().len()
    }

    #[test]
    fn without_unlabeled_pretraining_is_the_train_split() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), false);
        assert!(load(dir.path()).unwrap().unlabeled.is_none());
        assert_eq!(splits_pretraining_len(dir.path()), 3);
    }

    #[test]
    fn malformed_files_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = || format!("{:#}", load(dir.path()).err().unwrap());
        assert!(err().contains("missing test_X.bin"), "{}", err());
        write_dataset(dir.path(), true);
        std::fs::remove_file(dir.path().join("train_y.bin")).unwrap();
        assert!(err().contains("train_y.bin: missing"), "{}", err());
        std::fs::write(dir.path().join("train_y.bin"), [1, 2]).unwrap();
        assert!(
            err().contains("train_y.bin: 2 labels for the 3 images"),
            "{}",
            err()
        );
        std::fs::write(dir.path().join("train_y.bin"), [1, 0, 2]).unwrap();
        assert!(err().contains("label 0 of image 1"), "{}", err());
        std::fs::write(dir.path().join("train_y.bin"), [1, 2, 3]).unwrap();
        std::fs::write(dir.path().join("unlabeled_X.bin"), [0u8; 100]).unwrap();
        assert!(err().contains("unlabeled_X.bin: 100 bytes"), "{}", err());
    }
}
