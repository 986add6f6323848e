//! `simclr`: SimCLR contrastive self-supervised pre-training of image encoders on libtorch.
//! This file only parses the command line and dispatches; see README.md for the commands.
mod checkpoint;
mod cli;
mod config;
mod data;
mod eval;
mod export;
mod logging;
mod model;
mod objective;
mod optim;
mod shim;
mod train;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
