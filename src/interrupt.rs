//! Graceful interruption: the first SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption)
//! asks the training loop to stop after the current step, write a checkpoint and exit with
//! 128 + the signal (130 or 143); a second signal exits at once with the same code.
use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Set by the signal handlers, polled by the training loop once per step.
pub struct StopRequest {
    signal: Arc<AtomicUsize>,
}

impl StopRequest {
    /// Installs the handlers for SIGINT and SIGTERM.
    pub fn install() -> Result<StopRequest> {
        let signal = Arc::new(AtomicUsize::new(0));
        let requested = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Registered first, so it sees the flag as the previous signal left it: a second
            // signal finds it set and exits at once.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, requested.clone())
                .and_then(|_| signal_hook::flag::register(sig, requested.clone()))
                .and_then(|_| signal_hook::flag::register_usize(sig, signal.clone(), sig as usize))
                .with_context(|| format!("installing the handler of signal {sig}"))?;
        }
        Ok(StopRequest { signal })
    }

    /// The signal that asked to stop, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::Relaxed) {
            0 => None,
            sig => Some(sig as i32),
        }
    }
}
