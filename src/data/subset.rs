//! Datasets made of other datasets: a [`Subset`] (the first N images of a quick run, the
//! labelled fraction of fine-tuning) and a [`Concat`] (STL-10's train + unlabeled splits for
//! pre-training). Both only map indices; no pixel is copied.

use std::sync::Arc;

use anyhow::{ensure, Result};

use super::{Dataset, Image};

/// The images of `inner` at `indices`, in that order.
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// Fails if an index is outside `inner`, naming it.
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            anyhow::bail!(
                "subset: index {bad} outside a set of {} images",
                inner.len()
            );
        }
        Ok(Self { inner, indices })
    }

    /// The first `max` images of `set` (all of it when `None` or when it is smaller), for quick
    /// runs; the synthetic set's labels cycle through the classes, so they stay balanced.
    pub fn first(set: Arc<dyn Dataset>, max: Option<usize>) -> Arc<dyn Dataset> {
        match max.filter(|&n| n < set.len()) {
            Some(n) => Arc::new(Self {
                inner: set,
                indices: (0..n).collect(),
            }),
            None => set,
        }
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn label(&self, i: usize) -> i64 {
        self.inner.label(self.indices[i])
    }

    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    fn image(&self, i: usize) -> Result<Image<'_>> {
        self.inner.image(self.indices[i])
    }
}

/// The images of several datasets one after another.
pub struct Concat {
    parts: Vec<Arc<dyn Dataset>>,
}

impl Concat {
    /// Fails when there is nothing to concatenate.
    pub fn new(parts: Vec<Arc<dyn Dataset>>) -> Result<Self> {
        ensure!(!parts.is_empty(), "concat: no datasets");
        Ok(Self { parts })
    }

    /// The part holding global index `i` and the index inside it.
    fn locate(&self, mut i: usize) -> (&dyn Dataset, usize) {
        for part in &self.parts {
            if i < part.len() {
                return (part.as_ref(), i);
            }
            i -= part.len();
        }
        panic!("concat: index out of range");
    }
}

impl Dataset for Concat {
    fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    fn label(&self, i: usize) -> i64 {
        let (part, j) = self.locate(i);
        part.label(j)
    }

    fn num_classes(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.num_classes())
            .max()
            .unwrap_or(0)
    }

    fn image(&self, i: usize) -> Result<Image<'_>> {
        let (part, j) = self.locate(i);
        part.image(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageSet;

    fn set(first_pixel: u8, n: usize) -> Arc<dyn Dataset> {
        let images = (0..n).flat_map(|i| [first_pixel + i as u8; 3]).collect();
        Arc::new(ImageSet::new(images, (0..n as i64).collect(), 1, 1, n).unwrap())
    }

    fn pixel(d: &dyn Dataset, i: usize) -> u8 {
        d.image(i).unwrap().pixels[0]
    }

    #[test]
    fn subset_maps_indices_and_refuses_out_of_range() {
        let s = Subset::new(set(10, 5), vec![4, 1]).unwrap();
        assert_eq!((s.len(), pixel(&s, 0), s.label(1)), (2, 14, 1));
        assert!(Subset::new(set(0, 5), vec![5])
            .err()
            .unwrap()
            .to_string()
            .contains("index 5"));
        assert_eq!(Subset::first(set(0, 5), Some(3)).len(), 3);
        assert_eq!(Subset::first(set(0, 5), Some(9)).len(), 5);
        assert_eq!(Subset::first(set(0, 5), None).len(), 5);
    }

    #[test]
    fn concat_walks_the_parts_in_order() {
        let c = Concat::new(vec![set(0, 2), set(100, 3)]).unwrap();
        assert_eq!(c.len(), 5);
        let pixels: Vec<u8> = (0..5).map(|i| pixel(&c, i)).collect();
        assert_eq!(pixels, [0, 1, 100, 101, 102]);
        assert_eq!((c.label(3), c.num_classes()), (1, 3));
    }
}
