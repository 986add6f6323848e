//! Nothing is lost on interruption: a run stopped by SIGINT (checkpoint written on the way out)
//! or killed by SIGKILL (with per-step checkpoints) and resumed ends with exactly the weights,
//! optimiser state and per-step losses of the same run left alone.
mod common;
use common::{as_strs, assert_same_final_state, metrics, run_dir, run_ok, simclr, tiny_run};
use simclr::checkpoint;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};
use tch::Device;

const EPOCHS: usize = 6; // 18 steps of the tiny configuration

/// Per-step training losses of a run (a step logged twice must have the same value).
fn losses(dir: &Path) -> BTreeMap<u64, f64> {
    let mut by_step = BTreeMap::new();
    for r in metrics(dir).iter().filter(|r| r["train/loss"].is_number()) {
        let (step, loss) = (
            r["step"].as_u64().expect("step"),
            r["train/loss"].as_f64().expect("loss"),
        );
        if let Some(previous) = by_step.insert(step, loss) {
            assert_eq!(
                previous, loss,
                "step {step} logged twice with different losses"
            );
        }
    }
    by_step
}

/// Starts the tiny run in `dir`, waits until it has logged `kill_after` steps, sends `signal`,
/// and returns the exit status.
fn interrupted_run(
    dir: &Path,
    extra: &[&str],
    signal: &str,
    kill_after: u64,
) -> std::process::ExitStatus {
    let mut child = simclr()
        .args(as_strs(&tiny_run(dir, EPOCHS)))
        .args(extra)
        .spawn()
        .expect("simclr starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let logged =
            dir.join("metrics.jsonl").exists() && losses(dir).keys().any(|&s| s >= kill_after);
        if logged || Instant::now() > deadline {
            break;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the run ended ({status}) before step {kill_after}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    child.wait().expect("wait")
}

/// Resumes `dir` to the end and checks it against the uninterrupted run `full`.
fn assert_resumes_to(dir: &Path, full: &Path) {
    run_ok(&["train", "--resume", &dir.to_string_lossy()]);
    assert_eq!(losses(dir), losses(full), "per-step losses");
    assert_same_final_state(full, dir);
}

/// A step in 3..=14 that changes from one test run to the next.
fn random_step() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    3 + u64::from(nanos) % 12
}

#[test]
fn sigint_writes_a_checkpoint_and_the_run_resumes_exactly() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let full = run_dir(&tmp, "full");
    run_ok(&as_strs(&tiny_run(&full, EPOCHS)));

    let dir = run_dir(&tmp, "interrupted");
    let kill_after = random_step();
    let status = interrupted_run(&dir, &[], "-INT", kill_after);
    assert_eq!(
        status.code(),
        Some(130),
        "SIGINT after step {kill_after} exits with 130"
    );
    let ckpt = checkpoint::load(&checkpoint::last_path(&dir), Device::Cpu)
        .expect("checkpoint written on SIGINT");
    assert!(
        ckpt.meta.step >= kill_after && ckpt.meta.step < 18,
        "checkpoint at step {}",
        ckpt.meta.step
    );
    assert!(
        !dir.join("encoder.pt").exists(),
        "an interrupted run exports nothing"
    );
    assert_resumes_to(&dir, &full);
}

#[test]
fn sigkill_with_step_checkpoints_loses_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let full = run_dir(&tmp, "full");
    run_ok(&as_strs(&tiny_run(&full, EPOCHS)));

    let dir = run_dir(&tmp, "killed");
    let kill_after = random_step();
    let status = interrupted_run(&dir, &["--ckpt-every-steps", "1"], "-KILL", kill_after);
    assert_eq!(status.code(), None, "killed by a signal");
    assert_resumes_to(&dir, &full);
}
