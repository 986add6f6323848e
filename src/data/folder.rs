//! ImageFolder datasets: `DIR/train/<class>/*.{jpg,jpeg,png}` and `DIR/val/<class>/...`, the
//! layout of torchvision's `ImageFolder` (classes are the sub-folder names in sorted order,
//! files with other extensions are ignored). Images may have any size and colour mode; each is
//! read and decoded from disk when a loader worker asks for it ([`super::decode`]), so memory
//! holds only the file list, whatever the number of files.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};

use super::decode::read_rgb;
use super::{Dataset, Image, Splits};

/// Extensions of the files taken as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// One split of an image folder: the image files and their class indices.
pub struct FolderSplit {
    files: Vec<PathBuf>,
    labels: Vec<i64>,
    num_classes: usize,
}

impl Dataset for FolderSplit {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn label(&self, i: usize) -> i64 {
        self.labels[i]
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn image(&self, i: usize) -> Result<Image<'_>> {
        let rgb = read_rgb(&self.files[i])?;
        Ok(Image {
            pixels: Cow::Owned(rgb.pixels),
            height: rgb.height,
            width: rgb.width,
        })
    }
}

/// Lists `dir/train` and `dir/val`; refuses a missing split, a split without class folders, a
/// class folder without images, and a validation class unknown to the train split.
pub fn load(dir: &Path) -> Result<Splits> {
    ensure!(dir.is_dir(), "{}: no such directory", dir.display());
    let classes = class_names(&dir.join("train"))?;
    let train = list_split(&dir.join("train"), &classes, &classes)?;
    let val_dir = dir.join("val");
    let val_classes = class_names(&val_dir)?;
    if let Some(unknown) = val_classes.iter().find(|c| !classes.contains(c)) {
        bail!(
            "{}: class '{unknown}' has no folder in {}",
            val_dir.join(unknown).display(),
            dir.join("train").display()
        );
    }
    let test = list_split(&val_dir, &val_classes, &classes)?;
    Ok(Splits {
        train: Arc::new(train),
        test: Arc::new(test),
        unlabeled: None,
    })
}

/// The sorted names of the sub-folders of `split_dir` (hidden ones skipped).
fn class_names(split_dir: &Path) -> Result<Vec<String>> {
    ensure!(
        split_dir.is_dir(),
        "{}: missing (an image folder needs train/<class>/ and val/<class>/)",
        split_dir.display()
    );
    let mut names = Vec::new();
    for entry in read_dir(split_dir)? {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') {
            names.push(name);
        }
    }
    ensure!(
        !names.is_empty(),
        "{}: no class folders (expected {}/<class>/*.jpg)",
        split_dir.display(),
        split_dir.display()
    );
    names.sort();
    Ok(names)
}

/// The image files of each of `classes` under `split_dir`, labelled by their index in `all`.
fn list_split(split_dir: &Path, classes: &[String], all: &[String]) -> Result<FolderSplit> {
    let (mut files, mut labels) = (Vec::new(), Vec::new());
    for class in classes {
        let class_dir = split_dir.join(class);
        let label = all.iter().position(|c| c == class).context("class index")? as i64;
        let mut found: Vec<PathBuf> = read_dir(&class_dir)?
            .map(|e| e.path())
            .filter(|p| is_image_file(p))
            .collect();
        ensure!(
            !found.is_empty(),
            "{}: empty class (no .jpg, .jpeg or .png files)",
            class_dir.display()
        );
        found.sort();
        labels.extend(std::iter::repeat_n(label, found.len()));
        files.extend(found);
    }
    Ok(FolderSplit {
        files,
        labels,
        num_classes: all.len(),
    })
}

fn read_dir(dir: &Path) -> Result<impl Iterator<Item = std::fs::DirEntry>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    Ok(entries.filter_map(|e| e.ok()))
}

/// A visible file with an image extension.
fn is_image_file(path: &Path) -> bool {
    let visible = path
        .file_name()
        .is_some_and(|n| !n.to_string_lossy().starts_with('.'));
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    visible && path.is_file() && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb};

    fn png(path: &Path, w: u32, h: u32, v: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        ImageBuffer::from_fn(w, h, |_, _| Rgb([v, v, v]))
            .save(path)
            .unwrap();
    }

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        png(&d.join("train/cat/a.png"), 5, 4, 1);
        png(&d.join("train/cat/b.PNG"), 7, 3, 2);
        png(&d.join("train/dog/c.png"), 2, 2, 3);
        png(&d.join("val/dog/d.png"), 3, 3, 4);
        std::fs::write(d.join("train/dog/notes.txt"), "ignored").unwrap();
        std::fs::write(d.join("train/dog/.hidden.png"), "ignored").unwrap();
        dir
    }

    #[test]
    fn classes_are_sorted_folders_and_images_any_size() {
        let dir = folder();
        let splits = load(dir.path()).unwrap();
        assert_eq!(splits.train.labels(), [0, 0, 1]);
        assert_eq!(
            splits.test.labels(),
            [1],
            "val labels use the train class indices"
        );
        assert_eq!(splits.test.num_classes(), 2);
        let img = splits.train.image(1).unwrap();
        assert_eq!((img.height, img.width, img.pixels[0]), (3, 7, 2));
    }

    #[test]
    fn malformed_folders_are_refused_naming_the_path() {
        let err = |d: &Path| format!("{:#}", load(d).err().unwrap());
        let dir = folder();
        let d = dir.path();
        assert!(err(&d.join("nope")).contains("nope: no such directory"));
        std::fs::create_dir(d.join("train/empty")).unwrap();
        assert!(err(d).contains("train/empty: empty class"), "{}", err(d));
        std::fs::remove_dir(d.join("train/empty")).unwrap();
        png(&d.join("val/bird/e.png"), 2, 2, 0);
        assert!(err(d).contains("class 'bird' has no folder"), "{}", err(d));
        std::fs::remove_dir_all(d.join("val")).unwrap();
        assert!(err(d).contains("val: missing"), "{}", err(d));
        std::fs::create_dir(d.join("val")).unwrap();
        assert!(err(d).contains("val: no class folders"), "{}", err(d));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_when_read() {
        let dir = folder();
        std::fs::write(
            dir.path().join("train/cat/a.png"),
            b"\x89PNG\r\n\x1a\ntruncated",
        )
        .unwrap();
        let splits = load(dir.path()).unwrap();
        let err = format!("{:#}", splits.train.image(0).err().unwrap());
        assert!(err.contains("a.png"), "{err}");
        assert!(splits.train.image(1).is_ok());
    }
}
