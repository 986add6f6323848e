//! Benchmarks behind `simclr bench`: the throughput of one part of training measured on its
//! own, after warm-up, with the peak memory it needed; `--json` prints one object that scripts
//! compare across runs and against PyTorch (`scripts/bench/`).
//!
//! - [`loader`]: the two-view loader alone (`simclr bench loader`);
//! - [`step`]: the full SimCLR training step on synthetic input (`simclr bench step`).
//!
//! Peak memory is what PyTorch users read for the same purpose: on CUDA the caching
//! allocator's peak of bytes held in tensors (`torch.cuda.max_memory_allocated`), on the CPU
//! the process's peak resident set (`VmHWM`), which also counts the libraries and the
//! allocator's slack and so is only comparable between runs of the same program.
pub mod loader;
pub mod step;

use crate::shim;
use anyhow::{Context, Result};
use serde::Serialize;
use tch::Device;

/// CPU time this process has used so far, all threads, user and system (`/proc/self/stat`, in
/// clock ticks of 1/100 s): next to wall time it shows how much of a slow run was waiting for
/// cores that other processes held, which matters on a shared machine.
pub fn process_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name (which may hold spaces, so split after its closing paren):
    // state is field 3, utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) / CLOCK_TICKS_PER_SEC),
        _ => anyhow::bail!("unexpected /proc/self/stat: {stat}"),
    }
}

/// `sysconf(_SC_CLK_TCK)`, 100 on every Linux architecture libtorch ships for.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// A peak of memory use and what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct PeakMemory {
    pub bytes: i64,
    /// `cuda_allocated` (tensor bytes on the GPU) or `host_rss` (the process's resident set).
    pub kind: &'static str,
}

/// Starts a new peak from the current use, so that the warm-up's is not counted. On the CPU
/// this asks Linux to reset `VmHWM` (`/proc/self/clear_refs`, since Linux 4.0); where that is
/// refused the peak keeps the warm-up's, which runs the same step.
pub fn reset_peak_memory(device: Device) -> Result<()> {
    match device {
        Device::Cuda(index) => shim::accelerator_peak_memory(index, true).map(|_| ()),
        _ => {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            Ok(())
        }
    }
}

/// The peak since the last [`reset_peak_memory`] (or the process's start).
pub fn peak_memory(device: Device) -> Result<PeakMemory> {
    if let Device::Cuda(index) = device {
        return Ok(PeakMemory {
            bytes: shim::accelerator_peak_memory(index, false)?,
            kind: "cuda_allocated",
        });
    }
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<i64>()
                .ok()
        })
        .context("no VmHWM line in /proc/self/status")?;
    Ok(PeakMemory {
        bytes: kib * 1024,
        kind: "host_rss",
    })
}
