//! `simclr`: SimCLR contrastive self-supervised pre-training of image encoders on libtorch.
//! This file only runs the command line ([`simclr::cli`]) and turns an error into one line.
use std::process::ExitCode;

fn main() -> ExitCode {
    simclr::allocator::keep_freed_tensor_memory();
    match simclr::cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
