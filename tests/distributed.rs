//! Data-parallel training end to end, on CPU with Gloo: equivalence with one process holding the
//! global batch, and what happens when a worker dies.
mod common;

use common::{as_strs, metrics, run_dir, run_ok, simclr};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A run of 5 steps an epoch on 40 images: `batch` per process, `extra` flags added. The base
/// learning rate is a tenth of the default: at the default, SimCLR's training is chaotic enough
/// that float summation order alone (1e-7 in step 3's loss) grows to 1e-4 by step 5.
fn five_steps(out: &Path, batch: usize, epochs: usize, extra: &[&str]) -> Vec<String> {
    let flags = format!(
        "train --out {} --epochs {epochs} --max-train-images 40 --max-test-images 8 --batch-size {batch} \
         --image-size 16 --knn-every 0 --log-every 1 --workers 1 --device cpu --lr 0.2",
        out.display()
    );
    flags
        .split_whitespace()
        .chain(extra.iter().copied())
        .map(String::from)
        .collect()
}

/// The per-step training losses of a run.
fn losses(dir: &Path) -> Vec<f64> {
    metrics(dir)
        .iter()
        .filter_map(|r| r["train/loss"].as_f64())
        .collect()
}

/// Largest relative difference of two loss curves.
fn loss_gap(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs())
        .fold(0.0, f64::max)
}

/// Largest relative difference (‖a − b‖ / ‖a‖) over the final weights and buffers of two runs.
fn weight_gap(a: &Path, b: &Path) -> f64 {
    let load = |dir: &Path| {
        simclr::checkpoint::load(&simclr::checkpoint::last_path(dir), tch::Device::Cpu)
            .expect("checkpoint loads")
    };
    let (a, b) = (load(a), load(b));
    assert_eq!(a.meta.step, b.meta.step);
    a.model
        .iter()
        .filter(|(_, t)| t.is_floating_point())
        .map(|(name, t)| {
            let diff = (t - &b.model[name]).norm().double_value(&[]);
            diff / t.norm().double_value(&[]).max(1e-12)
        })
        .fold(0.0, f64::max)
}

/// 2 processes x batch 4 with sync BN and global negatives train exactly as 1 process x batch 8
/// (the loader gives rank r every other sample of each global batch, with the augmentation of
/// its global index): the same loss at each of the 5 steps and the same final weights, up to
/// float summation order. Switching global negatives or sync BN off must break the match.
#[test]
fn two_ranks_train_as_one_process_with_the_global_batch() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let single = run_dir(&tmp, "single");
    run_ok(&as_strs(&five_steps(&single, 8, 1, &[])));
    let data_parallel = |name: &str, extra: &[&str]| {
        let dir = run_dir(&tmp, name);
        let mut flags = vec!["--nproc-per-node", "2"];
        flags.extend_from_slice(extra);
        run_ok(&as_strs(&five_steps(&dir, 4, 1, &flags)));
        dir
    };

    let both = data_parallel("both", &[]);
    assert_eq!(losses(&single).len(), 5);
    let (loss, weights) = (
        loss_gap(&losses(&single), &losses(&both)),
        weight_gap(&single, &both),
    );
    assert!(
        loss < 1e-5 && weights < 1e-5,
        "loss gap {loss:e}, weight gap {weights:e}"
    );

    for off in ["--global-negatives=false", "--sync-bn=false"] {
        let dir = data_parallel(off.trim_start_matches("--"), &[off]);
        let loss = loss_gap(&losses(&single), &losses(&dir));
        assert!(loss > 1e-3, "{off}: the losses still match (gap {loss:e})");
    }
}

/// How a launch ended after one of its workers was sent a signal.
struct Stopped {
    status: std::process::ExitStatus,
    log: String,
    pids: Vec<i32>,
    seconds: f64,
}

/// Launches 2 CPU workers with `--dist-timeout timeout`, sends `signal` to rank 1 after the
/// first step, and waits (at most 60 s) for the launcher to exit.
fn signal_worker_1(name: &str, signal: i32, timeout: &str) -> Stopped {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = run_dir(&tmp, name);
    let flags = five_steps(
        &dir,
        4,
        100,
        &["--nproc-per-node", "2", "--dist-timeout", timeout],
    );
    let mut launcher = simclr()
        .args(&flags)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the launcher starts");
    let mut stderr = BufReader::new(launcher.stderr.take().expect("stderr"));
    let mut log = String::new();
    let mut pids = Vec::new();
    // Wait for both workers' pids and the first finished step.
    let mut line = String::new();
    while stderr.read_line(&mut line).expect("stderr") > 0 {
        log += &line;
        if let Some(pid) = line
            .strip_prefix("launcher: worker rank ")
            .and_then(|l| l.split(" is pid ").nth(1))
        {
            pids.push(pid.trim().parse::<i32>().expect("pid"));
        }
        if line.starts_with("epoch 1/100") {
            break;
        }
        line.clear();
    }
    assert_eq!(pids.len(), 2, "{log}");
    let signalled = Instant::now();
    unsafe { libc::kill(pids[1], signal) };

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = launcher.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = launcher.kill();
            pids.iter().for_each(|&pid| unsafe {
                libc::kill(pid, libc::SIGKILL);
            });
            panic!("the launcher still runs 60 s after the signal:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("stderr");
    log += &rest;
    Stopped {
        status,
        log,
        pids,
        seconds: signalled.elapsed().as_secs_f64(),
    }
}

/// Every worker process is gone (and reaped).
fn assert_no_worker_left(pids: &[i32]) {
    for &pid in pids {
        // kill(pid, 0) fails with ESRCH once the process is gone (and reaped).
        assert_eq!(
            unsafe { libc::kill(pid, 0) },
            -1,
            "worker {pid} is still alive"
        );
    }
}

/// SIGKILL of one worker mid-run: the launcher stops the other one and exits non-zero within a
/// bounded time, naming the dead rank, and no worker process is left.
#[test]
fn a_killed_worker_stops_the_launch() {
    let end = signal_worker_1("killed", libc::SIGKILL, "30");
    let log = &end.log;
    assert!(!end.status.success(), "{log}");
    assert!(
        log.contains("worker rank 1 (pid") && log.contains("was killed by signal 9"),
        "{log}"
    );
    assert!(
        log.contains("worker rank 0 exited with code") || log.contains("worker rank 0 was killed"),
        "rank 0's end is reported:\n{log}"
    );
    assert_no_worker_left(&end.pids);
    eprintln!("launcher exited {:.1}s after the kill", end.seconds);
}

/// A worker that hangs (SIGSTOP) mid-run: the other one's next collective times out after
/// `--dist-timeout`, it exits non-zero naming its rank and the timeout, and the launcher stops
/// the hung one (SIGKILL reaches a stopped process) and exits non-zero.
#[test]
fn a_hung_worker_times_the_launch_out() {
    let end = signal_worker_1("hung", libc::SIGSTOP, "5");
    let log = &end.log;
    assert!(!end.status.success(), "{log}");
    assert!(
        log.contains("rank 0 of 2") && log.contains("s timeout"),
        "rank 0 reports the timeout:\n{log}"
    );
    assert!(
        end.seconds >= 5.0,
        "stopped before the timeout: {:.1}s",
        end.seconds
    );
    assert_no_worker_left(&end.pids);
    eprintln!("launcher exited {:.1}s after the stop", end.seconds);
}
