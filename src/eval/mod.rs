//! Evaluation of the representation h: the kNN monitor (during training and `simclr eval
//! knn`) and the linear evaluation protocol (`simclr eval linear`), over representations
//! computed (and cached) by [`features`].
pub mod features;
pub mod knn;
pub mod linear;
