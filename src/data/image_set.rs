//! Datasets held decoded in memory: the synthetic set and CIFAR, whose images are small and
//! all the same size, stored contiguously so that a sample is a slice (no copy, no decode).

use std::borrow::Cow;

use anyhow::{bail, ensure, Result};

use super::{Dataset, Image};

/// A labelled set of equally sized u8 RGB images, stored contiguously so a sample is a slice.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// `len() * height * width * 3` bytes: image-major, then HWC, RGB.
    pub images: Vec<u8>,
    /// One class index in `0..num_classes` per image.
    pub labels: Vec<i64>,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Number of classes (used only for evaluation; SimCLR training ignores labels).
    pub num_classes: usize,
}

impl ImageSet {
    /// Builds a set, checking that buffer sizes and labels agree so loaders fail at load time,
    /// not deep inside a training step.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<i64>,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Self> {
        ensure!(
            height > 0 && width > 0,
            "image set: image size {height}x{width} must be positive"
        );
        let expected = labels.len() * height * width * 3;
        ensure!(
            images.len() == expected,
            "image set: {} bytes of pixels for {} labels of {height}x{width}x3 (expected {expected})",
            images.len(),
            labels.len()
        );
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= num_classes) {
            bail!("image set: label {bad} outside 0..{num_classes}");
        }
        Ok(Self {
            images,
            labels,
            height,
            width,
            num_classes,
        })
    }

    /// Bytes of one image (`height * width * 3`).
    pub fn image_bytes(&self) -> usize {
        self.height * self.width * 3
    }

    /// The HWC RGB bytes of image `i` (panics if `i >= len()`, like slice indexing).
    pub fn pixels(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.images[i * n..(i + 1) * n]
    }
}

impl Dataset for ImageSet {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn label(&self, i: usize) -> i64 {
        self.labels[i]
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn image(&self, i: usize) -> Result<Image<'_>> {
        Ok(Image {
            pixels: Cow::Borrowed(self.pixels(i)),
            height: self.height,
            width: self.width,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_set_checks_sizes_and_labels() {
        assert!(ImageSet::new(vec![0; 2 * 12], vec![0, 1], 2, 2, 2).is_ok());
        let err = ImageSet::new(vec![0; 23], vec![0, 1], 2, 2, 2).unwrap_err();
        assert!(err.to_string().contains("23 bytes"), "{err}");
        let err = ImageSet::new(vec![0; 24], vec![0, 2], 2, 2, 2).unwrap_err();
        assert!(err.to_string().contains("label 2"), "{err}");
        let set = ImageSet::new((0..24).collect(), vec![0, 1], 2, 2, 2).unwrap();
        assert_eq!(set.pixels(1), &(12..24).collect::<Vec<u8>>()[..]);
        let img = set.image(1).unwrap();
        assert_eq!((img.height, img.width, set.len()), (2, 2, 2));
        assert!(
            matches!(img.pixels, Cow::Borrowed(_)),
            "in-memory images are not copied"
        );
    }
}
