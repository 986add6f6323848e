//! A full disk during training: a run directory on a small tmpfs (mounted in a private user
//! and mount namespace, so no privileges are needed and nothing outlives the test) fills up at
//! a checkpoint write. The run must stop with one line naming the file, no panic, and the
//! previous checkpoint must still load.
mod common;
use common::{as_strs, tiny_run};
use std::path::Path;
use std::process::Command;

/// True when this machine lets an unprivileged process mount a tmpfs in its own namespace.
fn can_mount_tmpfs() -> bool {
    Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /tmp"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_full_disk_at_a_checkpoint_is_one_clear_line_and_the_previous_checkpoint_survives() {
    assert!(
        can_mount_tmpfs(),
        "this test needs `unshare -rm` and tmpfs mounts (util-linux, user namespaces)"
    );
    let tmp = tempfile::tempdir().unwrap();
    // The size of one checkpoint of the tiny run, from a run on the ordinary disk.
    let probe = tmp.path().join("probe");
    common::run_ok(&as_strs(&tiny_run(&probe, 1)));
    let ckpt_bytes = std::fs::metadata(probe.join("checkpoints/last.pt"))
        .unwrap()
        .len();

    // On the tmpfs: epoch-0000.pt is a hard link to the first last.pt, so after the first
    // step's checkpoint two checkpoint files exist; the second step's temporary file would
    // be the third, which 2.5 checkpoints of space cannot hold.
    let mount = tmp.path().join("small-disk");
    std::fs::create_dir(&mount).unwrap();
    let saved = tmp.path().join("saved-last.pt");
    let run_dir = mount.join("run");
    let mut args = tiny_run(&run_dir, 1);
    args.extend(["--ckpt-every-steps".into(), "1".into()]);
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs {mount} && \"$0\" \"$@\"; code=$?; \
         cp {mount}/run/checkpoints/last.pt {saved}; ls -la {mount}/run/checkpoints >&2; exit $code",
        size = ckpt_bytes * 5 / 2 + 256 * 1024,
        mount = mount.display(),
        saved = saved.display(),
    );
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script, env!("CARGO_BIN_EXE_simclr")])
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run did not fail:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let error = errors[0];
    assert!(
        error.contains("last.pt") && error.contains("unchanged"),
        "{error}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("frame #"),
        "{stderr}"
    );
    // The directory listing (`ls -la`, printed after the run) has no temporary file left.
    assert!(
        !stderr.lines().any(|l| l.ends_with(".pt.tmp")),
        "a temporary file was left behind:\n{stderr}"
    );
    let ckpt = simclr::checkpoint::load(Path::new(&saved), tch::Device::Cpu)
        .expect("the previous checkpoint still loads and verifies");
    assert_eq!(
        ckpt.meta.step, 1,
        "the last good checkpoint is the first step's"
    );
}
