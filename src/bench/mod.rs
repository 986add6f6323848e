//! Benchmarks behind `simclr bench`: measured figures for the README's Performance section,
//! each with a Python/PyTorch counterpart in `scripts/bench/` run side by side.
pub mod loader;
