//! `simclr bench step`: its report, and that `scripts/bench/step_pytorch.py` benchmarks the
//! same network (equal parameter counts for both stems and both block types).
mod common;
use common::{last_json, python_ok, run, run_ok};

const TINY: [&str; 8] = [
    "--width",
    "0.125",
    "--batch-size",
    "4",
    "--warmup",
    "1",
    "--steps",
    "1",
];

#[test]
fn rust_and_pytorch_steps_report_the_same_network() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench/step_pytorch.py");
    for (arch, size) in [("resnet18", "16"), ("resnet50", "64")] {
        let flags: Vec<&str> = TINY
            .iter()
            .copied()
            .chain(["--arch", arch, "--image-size", size, "--device", "cpu"])
            .collect();
        let rust = last_json(&run_ok(
            &[&["bench", "step", "--json"], &flags[..]].concat(),
        ));
        let pytorch = last_json(&python_ok(&[&[script], &flags[..]].concat()));
        assert_eq!(rust["parameters"], pytorch["parameters"], "{arch}");
        for report in [&rust, &pytorch] {
            assert!(
                report["images_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
                "{report}"
            );
            assert!(
                report["peak_memory"]["bytes"].as_i64().unwrap_or(0) > 0,
                "{report}"
            );
            // At initialisation NT-Xent is near ln(2N - 1) = ln 7.
            let loss = report["mean_loss"].as_f64().unwrap_or(f64::NAN);
            assert!((loss - 7f64.ln()).abs() < 1.0, "{report}");
        }
    }
}

#[test]
fn bad_flags_name_the_value() {
    let out = run(&["bench", "step", "--steps", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--steps") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
