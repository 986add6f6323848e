//! CIFAR-10 and CIFAR-100 in their official binary versions
//! (<https://www.cs.toronto.edu/~kriz/cifar.html>, "binary version"), decoded into memory
//! (60,000 images of 32x32 are 184 MB).
//!
//! A CIFAR-10 record is 1 label byte then 3072 pixel bytes: the red plane (32 rows of 32),
//! then green, then blue. CIFAR-100 records carry a coarse and a fine label byte first; the
//! fine label (100 classes) is the one used. Files:
//! - CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` (train), `test_batch.bin` (test);
//! - CIFAR-100: `train.bin`, `test.bin`.
//!
//! `DIR` may be the folder holding these files or the one the archive unpacks into it
//! (`cifar-10-batches-bin/`, `cifar-100-binary/`).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use super::{ImageSet, Splits};
use std::sync::Arc;

const SIDE: usize = 32;
const PIXELS: usize = SIDE * SIDE * 3;

/// Which of the two CIFAR datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn num_classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }

    /// Label bytes before the pixels of each record.
    fn label_bytes(self) -> usize {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100 => 2,
        }
    }

    fn train_files(self) -> Vec<String> {
        match self {
            Self::Cifar10 => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Self::Cifar100 => vec!["train.bin".into()],
        }
    }

    fn test_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "test_batch.bin",
            Self::Cifar100 => "test.bin",
        }
    }

    /// The folder the official archive unpacks into.
    fn archive_dir(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-bin",
            Self::Cifar100 => "cifar-100-binary",
        }
    }
}

/// Loads the train and test splits from `dir`; a missing file or a file whose size is not a
/// whole number of records is refused, naming it.
pub fn load(variant: Variant, dir: &Path) -> Result<Splits> {
    let expected = format!(
        "{} and {}",
        variant.train_files().join(", "),
        variant.test_file()
    );
    let dir = super::locate_files(dir, variant.archive_dir(), variant.test_file(), &expected)?;
    let read = |names: &[String]| -> Result<ImageSet> {
        let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        read_records(variant, &paths)
    };
    let train = read(&variant.train_files())?;
    let test = read(&[variant.test_file().to_string()])?;
    Ok(Splits {
        train: Arc::new(train),
        test: Arc::new(test),
        unlabeled: None,
    })
}

/// Decodes every record of `paths` into one HWC set.
fn read_records(variant: Variant, paths: &[PathBuf]) -> Result<ImageSet> {
    let record = variant.label_bytes() + PIXELS;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for path in paths {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        ensure!(
            !bytes.is_empty() && bytes.len() % record == 0,
            "{}: {} bytes is not a whole number of {record}-byte records",
            path.display(),
            bytes.len()
        );
        images.reserve(bytes.len() / record * PIXELS);
        for (r, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[variant.label_bytes() - 1] as usize;
            ensure!(
                label < variant.num_classes(),
                "{}: record {r} has label {label}, outside 0..{}",
                path.display(),
                variant.num_classes()
            );
            labels.push(label as i64);
            let planes = &rec[variant.label_bytes()..];
            for p in 0..SIDE * SIDE {
                images.extend([
                    planes[p],
                    planes[SIDE * SIDE + p],
                    planes[2 * SIDE * SIDE + p],
                ]);
            }
        }
    }
    ImageSet::new(images, labels, SIDE, SIDE, variant.num_classes())
}

/// Writes `labels` and their HWC images as one official-format (planar) file, for tests and
/// benchmarks that need CIFAR files without downloading them.
pub fn write_records(
    variant: Variant,
    path: &Path,
    labels: &[u8],
    hwc_images: &[u8],
) -> Result<()> {
    ensure!(
        hwc_images.len() == labels.len() * PIXELS,
        "cifar writer: {} pixel bytes for {} labels",
        hwc_images.len(),
        labels.len()
    );
    let mut out = Vec::with_capacity(labels.len() * (variant.label_bytes() + PIXELS));
    for (label, img) in labels.iter().zip(hwc_images.chunks_exact(PIXELS)) {
        if variant == Variant::Cifar100 {
            out.push(label / 5); // a coarse label, unused by the reader
        }
        out.push(*label);
        for c in 0..3 {
            out.extend(img.iter().skip(c).step_by(3));
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: u8) -> Vec<u8> {
        (0..PIXELS).map(|i| (i as u8).wrapping_mul(seed)).collect()
    }

    fn write_dataset(variant: Variant, dir: &Path, per_file: usize) {
        let mut files = variant.train_files();
        files.push(variant.test_file().into());
        for (f, name) in files.iter().enumerate() {
            let labels: Vec<u8> = (0..per_file)
                .map(|i| ((f + i) % variant.num_classes()) as u8)
                .collect();
            let images: Vec<u8> = (0..per_file)
                .flat_map(|i| image((f * 7 + i) as u8))
                .collect();
            write_records(variant, &dir.join(name), &labels, &images).unwrap();
        }
    }

    #[test]
    fn both_variants_round_trip_pixels_and_labels() {
        for variant in [Variant::Cifar10, Variant::Cifar100] {
            let dir = tempfile::tempdir().unwrap();
            write_dataset(variant, dir.path(), 3);
            let splits = load(variant, dir.path()).unwrap();
            let trains = variant.train_files().len();
            assert_eq!((splits.train.len(), splits.test.len()), (3 * trains, 3));
            assert_eq!(splits.train.num_classes(), variant.num_classes());
            // The last train image: record 2 of the last train file.
            let last = 3 * trains - 1;
            let img = splits.train.image(last).unwrap();
            assert_eq!((img.height, img.width), (32, 32));
            assert_eq!(&*img.pixels, &image(((trains - 1) * 7 + 2) as u8)[..]);
            assert_eq!(
                splits.train.label(last),
                ((trains + 1) % variant.num_classes()) as i64
            );
            assert_eq!(
                splits.test.label(2),
                ((trains + 2) % variant.num_classes()) as i64
            );
        }
    }

    #[test]
    fn the_archive_folder_is_found_inside_dir() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&nested).unwrap();
        write_dataset(Variant::Cifar10, &nested, 1);
        assert_eq!(load(Variant::Cifar10, dir.path()).unwrap().train.len(), 5);
    }

    #[test]
    fn malformed_datasets_are_refused_naming_the_file() {
        let err = |dir: &Path| format!("{:#}", load(Variant::Cifar10, dir).err().unwrap());
        let dir = tempfile::tempdir().unwrap();
        assert!(err(&dir.path().join("nope")).contains("no such directory"));
        assert!(err(dir.path()).contains("missing test_batch.bin"));
        write_dataset(Variant::Cifar10, dir.path(), 2);
        let short = dir.path().join("data_batch_3.bin");
        let bytes = std::fs::read(&short).unwrap();
        std::fs::write(&short, &bytes[..bytes.len() - 1]).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("data_batch_3.bin") && e.contains("6145 bytes"),
            "{e}"
        );
        std::fs::write(&short, []).unwrap();
        assert!(err(dir.path()).contains("0 bytes"));
        let mut bad = bytes.clone();
        bad[0] = 10;
        std::fs::write(&short, bad).unwrap();
        assert!(err(dir.path()).contains("label 10"));
        std::fs::remove_file(&short).unwrap();
        assert!(err(dir.path()).contains("data_batch_3.bin"));
    }
}
