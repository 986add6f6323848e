//! Helpers shared by the end-to-end tests: running the binary and the venv's Python.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `simclr` binary built for these tests.
pub fn simclr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_simclr"))
}

/// Runs `simclr ARGS`, returning its output (whatever the exit status).
pub fn run(args: &[&str]) -> Output {
    simclr()
        .args(args)
        .output()
        .expect("the simclr binary runs")
}

/// Runs `simclr ARGS` and fails the test, showing stderr, unless it succeeds.
pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "simclr {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The last line of stdout parsed as JSON (the `--json` contract).
pub fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("--json prints a line");
    serde_json::from_str(line).expect("the last line of stdout is JSON")
}

/// The venv's Python (made by scripts/setup.sh), with torch and torchvision.
pub fn python() -> Command {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    Command::new(python)
}

/// Runs the venv's Python with `args` (a script and its arguments, or `-c CODE ...`), failing
/// the test, with its stderr, unless it succeeds.
pub fn python_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let out = python().args(args).output().expect("python runs");
    assert!(
        out.status.success(),
        "python {:?} failed:\n{}",
        args.first().map(|a| a.as_ref().to_os_string()),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a Python snippet with arguments and returns its stdout, failing the test on error.
pub fn python_output(code: &str, args: &[&str]) -> String {
    let out = python_ok(&[&["-c", code], args].concat());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flags of a run small enough for a test: 96 images, 3 steps an epoch, a 1/16-width ResNet-18.
pub fn tiny_run(out: &Path, epochs: usize) -> Vec<String> {
    let flags = format!(
        "train --out {} --epochs {epochs} --max-train-images 96 --max-test-images 40 --batch-size 32 \
         --width 0.0625 --knn-every 1 --checkpoint-every 1 --log-every 1 --workers 1 --device cpu --json",
        out.display()
    );
    flags.split_whitespace().map(String::from).collect()
}

/// `tiny_run`'s flags as `&str`s.
pub fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The `metrics.jsonl` records of a run.
pub fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .expect("metrics.jsonl exists")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// A fresh temporary directory path for a run (not created).
pub fn run_dir(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
    tmp.path().join(name)
}

/// The last checkpoints of two runs hold the same step, weights and optimiser state, bit for bit.
pub fn assert_same_final_state(expected: &Path, got: &Path) {
    let load = |dir: &Path| {
        simclr::checkpoint::load(&simclr::checkpoint::last_path(dir), tch::Device::Cpu)
            .expect("checkpoint loads")
    };
    let (a, b) = (load(expected), load(got));
    assert_eq!(a.meta.step, b.meta.step);
    for (name, t) in &a.model {
        assert!(t.equal(&b.model[name]), "weight {name} differs");
    }
    for (name, t) in &a.optimizer {
        assert!(
            t.equal(&b.optimizer[name]),
            "optimizer state {name} differs"
        );
    }
}
