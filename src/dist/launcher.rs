//! Starting and watching the worker processes of a data-parallel run, and reading the
//! environment that any launcher gives its workers.
//!
//! `simclr train --nproc-per-node N` re-runs this binary N times with the same arguments and
//! torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`);
//! a process that finds `RANK` and `WORLD_SIZE` set is a worker, whoever started it (this
//! launcher, torchrun, or a Slurm script that exports them). With `--nnodes M --node-rank K`
//! the same command on each of M nodes makes ranks `K·N .. K·N+N−1` of `M·N`.
//!
//! Failure handling: a worker that exits non-zero (or dies by a signal) makes the launcher stop
//! the others (SIGTERM, then SIGKILL after [`GRACE`]) and exit non-zero, naming the rank. A
//! worker that hangs makes the others' next collective time out (their own error names their
//! rank), which the launcher then sees. Workers die with the launcher (`PR_SET_PDEATHSIG`), so
//! no orphan is left behind even when the launcher is killed. Workers run in their own process
//! group: Ctrl-C reaches the launcher only, which forwards each SIGINT/SIGTERM to every worker
//! once, so the workers stop together at an agreed step (see `train`).
use super::Rendezvous;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long stopped workers get to exit after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(10);

/// How often the launcher looks at its workers.
const POLL: Duration = Duration::from_millis(50);

/// PyTorch's default rendezvous port, taken when `MASTER_PORT` is absent.
const DEFAULT_PORT: u16 = 29500;

/// The shape of a launch: processes per node, nodes, and where rank 0 listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    /// None: a free port of this machine (single node only).
    pub master_port: Option<u16>,
}

/// The rendezvous given by a launcher's environment, or None when this process was not
/// started as a worker (`RANK` or `WORLD_SIZE` unset).
pub fn worker_env() -> Result<Option<Rendezvous>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(rank), Some(world_size)) = (var("RANK"), var("WORLD_SIZE")) else {
        return Ok(None);
    };
    let number = |name: &str, value: &str| -> Result<usize> {
        value
            .parse()
            .with_context(|| format!("environment variable {name}={value:?} is not a number"))
    };
    let rank = number("RANK", &rank)?;
    let world_size = number("WORLD_SIZE", &world_size)?;
    let local_rank = match var("LOCAL_RANK") {
        Some(v) => number("LOCAL_RANK", &v)?,
        None => rank,
    };
    let master_port = match var("MASTER_PORT") {
        Some(v) => v
            .parse()
            .with_context(|| format!("environment variable MASTER_PORT={v:?} is not a port"))?,
        None => DEFAULT_PORT,
    };
    if world_size == 0 || rank >= world_size {
        bail!("environment RANK={rank} must be below WORLD_SIZE={world_size}");
    }
    Ok(Some(Rendezvous {
        master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
        master_port,
        rank,
        world_size,
        local_rank,
    }))
}

/// A port nobody listens on now (the OS's choice); rank 0 binds it moments later.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// One started worker.
struct Worker {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

/// A worker's end in words: "exited with code 1" or "was killed by signal 9".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended with {status}"),
    }
}

/// Runs `launch.nproc_per_node` workers of this binary with `args` and waits for them all.
/// Returns the exit code of the launch: 0 when every worker succeeded, else the first failing
/// worker's code (128 + signal for one killed by a signal).
pub fn run(launch: &Launch, args: &[OsString]) -> Result<u8> {
    if launch.nproc_per_node == 0 || launch.nnodes == 0 || launch.node_rank >= launch.nnodes {
        bail!(
            "--nproc-per-node and --nnodes must be >= 1 and --node-rank below --nnodes, got {}, {} and {}",
            launch.nproc_per_node, launch.nnodes, launch.node_rank
        );
    }
    let port = match (launch.master_port, launch.nnodes) {
        (Some(port), _) => port,
        (None, 1) => free_port()?,
        (None, _) => {
            bail!("--master-port is required with --nnodes > 1 (every node must use the same)")
        }
    };
    let world_size = launch.nproc_per_node * launch.nnodes;
    // As torchrun: unless told otherwise, the workers share this node's cores instead of each
    // starting one thread per core.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = std::env::var("OMP_NUM_THREADS")
        .unwrap_or_else(|_| (cores / launch.nproc_per_node).max(1).to_string());
    let exe = std::env::current_exe().context("locating this executable to start the workers")?;
    let forwarded = Arc::new(AtomicUsize::new(0));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register_usize(signal, forwarded.clone(), signal as usize)
            .with_context(|| format!("installing the handler of signal {signal}"))?;
    }

    let mut workers = Vec::new();
    for local_rank in 0..launch.nproc_per_node {
        let rank = launch.node_rank * launch.nproc_per_node + local_rank;
        let mut command = Command::new(&exe);
        command
            .args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world_size.to_string())
            .env("LOCAL_RANK", local_rank.to_string())
            .env("LOCAL_WORLD_SIZE", launch.nproc_per_node.to_string())
            .env("MASTER_ADDR", &launch.master_addr)
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", &threads)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child when
        // the launcher (its parent) dies.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                stop_all(&mut workers, libc::SIGTERM);
                return Err(err).with_context(|| format!("starting worker rank {rank}"));
            }
        };
        eprintln!(
            "launcher: worker rank {rank} of {world_size} is pid {}",
            child.id()
        );
        workers.push(Worker {
            rank,
            child,
            status: None,
        });
    }
    watch(&mut workers, &forwarded)
}

/// Waits for the workers; on the first failure stops the others. See [`run`].
fn watch(workers: &mut [Worker], forwarded: &AtomicUsize) -> Result<u8> {
    let mut interrupted = false;
    let mut failure: Option<u8> = None;
    loop {
        // Forward a stop request from the user or the scheduler to every worker, once.
        let signal = forwarded.swap(0, Ordering::Relaxed) as i32;
        if signal != 0 {
            interrupted = true;
            signal_workers(workers, signal);
        }
        for worker in workers.iter_mut().filter(|w| w.status.is_none()) {
            let Some(status) = worker.child.try_wait().context("waiting for a worker")? else {
                continue;
            };
            worker.status = Some(status);
            // Interrupted workers exit with 128 + signal after their checkpoint: not a failure.
            if status.success() || (interrupted && failure.is_none()) {
                if !status.success() {
                    failure = Some(exit_code(status));
                }
                continue;
            }
            if failure.is_none() {
                eprintln!(
                    "launcher: worker rank {} (pid {}) {}; stopping the other workers",
                    worker.rank,
                    worker.child.id(),
                    describe(status)
                );
                failure = Some(exit_code(status));
            }
        }
        if workers.iter().all(|w| w.status.is_some()) {
            break;
        }
        if failure.is_some() && !interrupted {
            stop_all(workers, libc::SIGTERM);
            break;
        }
        std::thread::sleep(POLL);
    }
    for worker in workers.iter() {
        if let Some(status) = worker.status.filter(|s| !s.success()) {
            eprintln!("launcher: worker rank {} {}", worker.rank, describe(status));
        }
    }
    Ok(failure.unwrap_or(0))
}

/// 128 + signal for a worker killed by a signal, else its code (1 if it has none).
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1).max(1),
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        _ => 1,
    }
}

/// Sends `signal` to every worker still running.
fn signal_workers(workers: &[Worker], signal: i32) {
    for worker in workers.iter().filter(|w| w.status.is_none()) {
        // SAFETY: kill(2) on a child we started and have not reaped (its pid is still ours).
        unsafe { libc::kill(worker.child.id() as libc::pid_t, signal) };
    }
}

/// Sends `signal` to the running workers, waits up to [`GRACE`] for them, then kills the rest.
fn stop_all(workers: &mut [Worker], signal: i32) {
    signal_workers(workers, signal);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && workers.iter().any(|w| w.status.is_none()) {
        for worker in workers.iter_mut().filter(|w| w.status.is_none()) {
            worker.status = worker.child.try_wait().ok().flatten();
        }
        std::thread::sleep(POLL);
    }
    for worker in workers.iter_mut().filter(|w| w.status.is_none()) {
        let _ = worker.child.kill();
        worker.status = worker.child.wait().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_of_failures() {
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137); // killed by SIGKILL
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(describe(ExitStatus::from_raw(9)), "was killed by signal 9");
    }
}
