//! The command line's contract: `info --json`, and one-line errors (no panic) for bad input.
mod common;
use common::{last_json, run, run_ok};

#[test]
fn info_reports_the_build() {
    let info = last_json(&run_ok(&["info", "--json"]));
    assert!(
        info["torch_version"]
            .as_str()
            .unwrap_or("")
            .starts_with("2.11"),
        "{info}"
    );
    for key in [
        "cuda_available",
        "cuda_device_count",
        "cudnn_available",
        "threads",
    ] {
        assert!(!info[key].is_null(), "info lacks {key}: {info}");
    }
    // scripts/setup.sh installs the Gloo and NCCL headers, so both must be compiled in.
    assert_eq!(info["gloo"], true, "{info}");
    assert_eq!(info["nccl"], true, "{info}");
}

/// Bad input fails with a non-zero exit and one line naming the culprit, never a panic.
#[test]
fn bad_input_gets_one_clear_line() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = tmp.path().join("bad.json");
    std::fs::write(&config, r#"{"run": {"epochz": 3}}"#).expect("write config");
    let out_dir = tmp.path().join("run");
    let out_dir = out_dir.to_string_lossy();
    let missing = tmp.path().join("nothing");
    let missing = missing.to_string_lossy();
    let cases: [(&[&str], &str); 7] = [
        (
            &["train", "--out", &out_dir, "--data", "imagenet"],
            "imagenet",
        ),
        (
            &["train", "--out", &out_dir, "--temperature", "0"],
            "objective.temperature",
        ),
        (
            &["train", "--out", &out_dir, "--batch-size", "1"],
            "run.batch_size",
        ),
        (
            &["train", "--out", &out_dir, "--margin=-1"],
            "objective.margin",
        ),
        (&["train", "--out", &out_dir, "--loss", "hinge"], "hinge"),
        (
            &[
                "train",
                "--out",
                &out_dir,
                "--config",
                &config.to_string_lossy(),
            ],
            "did you mean `epochs`",
        ),
        (&["train", "--resume", &missing], "does not exist"),
    ];
    for (args, culprit) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        // One error line (clap may add its "try '--help'" hint below it).
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: not one error line: {stderr}");
        assert!(
            errors[0].contains(culprit),
            "{args:?}: '{culprit}' not named in: {stderr}"
        );
    }
}

/// `--resume` takes flags that change a run's length or hardware, and refuses, in one line
/// naming each field, those that would make it another run.
#[test]
fn resume_accepts_a_longer_run_and_refuses_a_different_one() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("run");
    let args = common::tiny_run(&dir, 1);
    run_ok(&common::as_strs(&args));
    let dir = dir.to_string_lossy();

    let out = run(&[
        "train",
        "--resume",
        &dir,
        "--arch",
        "resnet34",
        "--temperature",
        "0.2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a different architecture was resumed"
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or("");
    assert!(
        error.contains("model.arch \"resnet34\" (the run has \"resnet18\")")
            && error.contains("objective.temperature 0.2 (the run has 0.5)"),
        "{stderr}"
    );

    let out = run_ok(&["train", "--resume", &dir, "--epochs", "2", "--json"]);
    let summary = last_json(&out);
    assert_eq!(
        (summary["epochs"].as_u64(), summary["steps"].as_u64()),
        (Some(2), Some(6))
    );
}
