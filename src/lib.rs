//! simclr-rs: SimCLR (Chen, Kornblith, Norouzi, Hinton 2020, <https://arxiv.org/abs/2002.05709>)
//! contrastive self-supervised pre-training of image encoders on libtorch through `tch`.
//!
//! The data flows: [`data`] (datasets, two-view augmentation, loader) -> [`model`] (encoder f,
//! head g) -> [`objective`] (similarity and contrastive loss) -> [`optim`] (LARS, schedule) in
//! the loop of [`train`], reported by [`logging`] (with [`tensorboard`] summaries and a
//! [`projector`] export), saved by [`checkpoint`], watched by [`eval`], shipped by [`export`].
//! One training step (forward, loss, backward, update) is [`step`], which [`bench`] measures.
//! The binary's command line is [`cli`]; [`shim`] wraps the small C++ shim over libtorch.
pub mod allocator;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod dist;
pub mod eval;
pub mod event_file;
pub mod export;
pub mod interrupt;
pub mod logging;
pub mod model;
pub mod objective;
pub mod optim;
pub mod projector;
pub mod shim;
pub mod step;
pub mod tensorboard;
pub mod train;
