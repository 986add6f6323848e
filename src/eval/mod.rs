//! Evaluation of the representation h: the kNN monitor during training (linear probe and
//! fine-tuning come with their own commands).
pub mod knn;
