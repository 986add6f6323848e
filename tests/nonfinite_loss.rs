//! A NaN/Inf loss never reaches a checkpoint: without `--skip-nonfinite` the run stops at the
//! first logging point with one line; with it, such steps are skipped and counted, and an
//! epoch with no finite step at all still stops the run. An unnormalised dot similarity at a
//! temperature of 1e-38 overflows f32 from the first step (s/τ > 3.4e38), a natural way to get
//! a non-finite loss through the binary.
mod common;
use common::{as_strs, metrics, run, tiny_run};
use std::path::Path;

fn diverging_run(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = tiny_run(dir, 2);
    args.extend(
        ["--similarity", "dot", "--temperature", "1e-38"]
            .into_iter()
            .chain(extra.iter().copied())
            .map(String::from),
    );
    run(&as_strs(&args))
}

/// The run failed with one error line containing `expected`, no panic, and its last
/// checkpoint is the initial one (step 0), intact.
fn assert_stopped_with_initial_checkpoint(out: &std::process::Output, dir: &Path, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run did not stop:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(expected), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let ckpt = simclr::checkpoint::load(&simclr::checkpoint::last_path(dir), tch::Device::Cpu)
        .expect("the last good checkpoint loads");
    assert_eq!(ckpt.meta.step, 0);
}

#[test]
fn a_non_finite_loss_stops_the_run_before_any_checkpoint_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = diverging_run(&dir, &[]);
    assert_stopped_with_initial_checkpoint(&out, &dir, "loss became");
}

#[test]
fn skip_nonfinite_skips_and_counts_such_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = diverging_run(&dir, &["--skip-nonfinite"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("non-finite loss at step 1: update skipped"),
        "{stderr}"
    );
    assert_stopped_with_initial_checkpoint(
        &out,
        &dir,
        "every step of epoch 1 had a non-finite loss (3 skipped)",
    );
    let skipped: Vec<f64> = metrics(&dir)
        .iter()
        .filter_map(|m| m["train/skipped_steps"].as_f64())
        .collect();
    assert_eq!(skipped, [1.0, 2.0, 3.0], "one logged point per step");
}
