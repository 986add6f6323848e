//! Every dataset format through the binary: files made in the test (CIFAR-10/100 and STL-10 in
//! their official binary layouts, an ImageFolder of JPEG/PNG files in every colour mode), a
//! short training run on each, unreadable images skipped and counted, malformed datasets
//! refused with one line.
mod common;
use common::{last_json, metrics, python_output, run};
use simclr::data::cifar::{write_records, Variant};
use std::path::Path;

/// Flags of a one-epoch run on `data` small enough for a test (batch 8, 16 px views).
fn train(out: &Path, data: &str, extra: &[&str]) -> std::process::Output {
    let out = out.to_string_lossy();
    let mut args = vec![
        "train",
        "--data",
        data,
        "--out",
        &out,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--image-size",
        "16",
        "--width",
        "0.0625",
        "--log-every",
        "1",
        "--workers",
        "2",
        "--device",
        "cpu",
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn assert_trained(out: &std::process::Output, expected_steps: u64) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "training failed:\n{stderr}");
    let summary = last_json(out);
    assert_eq!(summary["steps"], expected_steps, "{summary}");
    assert!(summary["knn_top1"].as_f64().is_some(), "{summary}");
    summary
}

/// `n` deterministic 32x32 HWC images.
fn cifar_images(n: usize, seed: usize) -> Vec<u8> {
    (0..n * 32 * 32 * 3)
        .map(|i| ((i * 7 + seed * 13) % 251) as u8)
        .collect()
}

#[test]
fn cifar10_and_cifar100_train_from_their_binary_files() {
    let tmp = tempfile::tempdir().unwrap();
    for (variant, name, train_files) in [
        (
            Variant::Cifar10,
            "cifar10",
            vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
        ),
        (Variant::Cifar100, "cifar100", vec!["train.bin"]),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let per_file = 40 / train_files.len();
        for (f, file) in train_files.iter().enumerate() {
            let labels: Vec<u8> = (0..per_file).map(|i| (i % 10) as u8).collect();
            write_records(
                variant,
                &dir.join(file),
                &labels,
                &cifar_images(per_file, f),
            )
            .unwrap();
        }
        let test = if variant == Variant::Cifar10 {
            "test_batch.bin"
        } else {
            "test.bin"
        };
        write_records(variant, &dir.join(test), &[1, 2, 3], &cifar_images(3, 9)).unwrap();
        let spec = format!("{name}:{}", dir.display());
        let out = train(&tmp.path().join(format!("run-{name}")), &spec, &[]);
        assert_trained(&out, 5);
    }
}

#[test]
fn stl10_pretrains_on_train_plus_unlabeled() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stl10_binary");
    std::fs::create_dir(&dir).unwrap();
    let images = |n: usize| -> Vec<u8> { (0..n * 96 * 96 * 3).map(|i| (i % 253) as u8).collect() };
    std::fs::write(dir.join("train_X.bin"), images(8)).unwrap();
    std::fs::write(dir.join("train_y.bin"), [1u8, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    std::fs::write(dir.join("test_X.bin"), images(4)).unwrap();
    std::fs::write(dir.join("test_y.bin"), [1u8, 2, 3, 10]).unwrap();
    std::fs::write(dir.join("unlabeled_X.bin"), images(16)).unwrap();
    // The spec names the parent: the archive's stl10_binary/ is found inside it.
    let spec = format!("stl10:{}", tmp.path().display());
    let out = train(&tmp.path().join("run"), &spec, &[]);
    // 8 train + 16 unlabeled images make 3 batches of 8.
    assert_trained(&out, 3);
}

/// Writes an ImageFolder with every colour mode PIL can save, plus `bad` unreadable files.
fn image_folder(root: &Path, bad: bool) {
    let code = r#"
import sys, os
import numpy as np
from PIL import Image
root, bad = sys.argv[1], sys.argv[2] == "1"
rng = np.random.default_rng(0)
def rgb(h, w):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
for split, n in (("train", 10), ("val", 2)):
    for c in ("cat", "dog"):
        d = os.path.join(root, split, c)
        os.makedirs(d)
        for i in range(n):
            kind = i % 6
            img = rgb(40 + 7 * i, 50 + 3 * i)
            if kind == 0: img.save(f"{d}/{i}.jpg", quality=90)
            if kind == 1: img.convert("L").save(f"{d}/{i}.png")
            if kind == 2: img.convert("RGBA").save(f"{d}/{i}.PNG")
            if kind == 3: Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257)).save(f"{d}/{i}.png")
            if kind == 4: img.convert("CMYK").save(f"{d}/{i}.jpeg", quality=95)
            if kind == 5: img.convert("P").save(f"{d}/{i}.png")
if bad:
    d = os.path.join(root, "train", "cat")
    open(f"{d}/empty.jpg", "wb").close()
    full = open(f"{d}/0.jpg", "rb").read()
    open(f"{d}/truncated.jpg", "wb").write(full[: len(full) // 3])
    open(f"{d}/notes.txt", "w").write("not an image, ignored")
"#;
    python_output(
        code,
        &[&root.to_string_lossy(), if bad { "1" } else { "0" }],
    );
}

#[test]
fn an_image_folder_of_mixed_modes_trains_and_unreadable_files_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    image_folder(&root, true);
    let spec = format!("folder:{}", root.display());
    // 22 train files, 2 unreadable: 9% of the set.
    let out = train(
        &tmp.path().join("run"),
        &spec,
        &["--max-skipped-fraction", "0.2"],
    );
    let summary = assert_trained(&out, 2);
    let skipped: f64 = metrics(Path::new(summary["run_dir"].as_str().unwrap()))
        .iter()
        .filter_map(|m| m["data/skipped_images"].as_f64())
        .fold(0.0, f64::max);
    assert!(skipped >= 1.0, "no skipped image logged");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipping an unreadable image"), "{stderr}");

    // With the default limit (1%) the same data stops the run with one line.
    let out = train(&tmp.path().join("run-strict"), &spec, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unreadable images in epoch 1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn every_colour_mode_decodes_like_pil_and_16_bit_is_scaled_not_clipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    image_folder(&root, false);
    let code = r#"
import sys, glob, numpy as np
from PIL import Image
for path in sorted(glob.glob(sys.argv[1] + "/train/cat/*")):
    im = Image.open(path)
    if im.mode.startswith("I;16"):
        # PIL's convert("RGB") clips 16-bit values at 255 (white images); the right 8-bit
        # value is v / 257, which is what simclr decodes.
        a = np.repeat(np.round(np.asarray(im) / 257.0)[..., None], 3, axis=2).astype(np.int64)
    else:
        a = np.asarray(im.convert("RGB"), dtype=np.int64)
    print(path, a.shape[0], a.shape[1], int(a.sum()))
"#;
    for line in python_output(code, &[&root.to_string_lossy()]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let rgb = simclr::data::decode::read_rgb(Path::new(f[0])).unwrap();
        assert_eq!(
            (rgb.height.to_string(), rgb.width.to_string()),
            (f[1].into(), f[2].into()),
            "{line}"
        );
        let sum: i64 = rgb.pixels.iter().map(|&v| v as i64).sum();
        let pil: i64 = f[3].parse().unwrap();
        // JPEG decoders may round differently: mean within 2 levels of PIL's.
        let mean_diff = (sum - pil).abs() as f64 / rgb.pixels.len() as f64;
        assert!(mean_diff <= 2.0, "{}: mean differs by {mean_diff:.2}", f[0]);
    }
}

#[test]
fn malformed_datasets_are_refused_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cifar = t.join("cifar");
    std::fs::create_dir(&cifar).unwrap();
    std::fs::write(cifar.join("test_batch.bin"), [0u8; 3073]).unwrap();
    std::fs::write(cifar.join("data_batch_1.bin"), [0u8; 3000]).unwrap();
    let empty_class = t.join("folder");
    std::fs::create_dir_all(empty_class.join("train/cat")).unwrap();
    std::fs::create_dir_all(empty_class.join("val/cat")).unwrap();
    let no_images = t.join("bare");
    std::fs::create_dir_all(no_images.join("train")).unwrap();
    let cases = [
        (
            format!("cifar10:{}", t.join("missing").display()),
            "missing: no such directory".to_string(),
        ),
        (
            format!("cifar10:{}", cifar.display()),
            "data_batch_1.bin: 3000 bytes is not a whole number".into(),
        ),
        (
            format!("stl10:{}", cifar.display()),
            "missing test_X.bin".into(),
        ),
        (
            format!("folder:{}", empty_class.display()),
            "train/cat: empty class".into(),
        ),
        (
            format!("folder:{}", no_images.display()),
            "train: no class folders".into(),
        ),
    ];
    for (i, (spec, expected)) in cases.iter().enumerate() {
        let out = train(&t.join(format!("run{i}")), spec, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec} was accepted");
        assert!(stderr.contains(expected.as_str()), "{spec}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{spec}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
