//! Evaluation of the representation h: the kNN monitor (during training and `simclr eval
//! knn`), the linear evaluation protocol (`simclr eval linear`) over representations computed
//! (and cached) by [`features`], and label-fraction fine-tuning (`simclr finetune`).
pub mod features;
pub mod finetune;
pub mod knn;
pub mod linear;
