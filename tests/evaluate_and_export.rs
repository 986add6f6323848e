//! `simclr export --format safetensors`, `simclr eval knn` and `simclr finetune` through the
//! binary, with torchvision (in the venv's Python) as the real client of the exported weights.
mod common;
use common::{as_strs, last_json, python_output, run, run_dir, run_ok, tiny_run};
use simclr::checkpoint;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// A standard-stem ResNet-18 (width 1, as torchvision's) trained for one tiny epoch.
fn tiny_standard_stem_run(tmp: &tempfile::TempDir) -> std::path::PathBuf {
    let dir = run_dir(tmp, "imagenet-stem");
    let flags = format!(
        "train --out {} --epochs 1 --max-train-images 64 --max-test-images 20 --batch-size 32 \
         --stem imagenet --width 1 --knn-every 0 --workers 1 --device cpu",
        dir.display()
    );
    run_ok(&flags.split_whitespace().collect::<Vec<_>>());
    dir
}

#[test]
fn safetensors_load_into_torchvision_with_the_same_features() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tiny_standard_stem_run(&tmp);
    let ckpt = dir.join("checkpoints/last.pt");
    let weights = dir.join("encoder.safetensors");
    run_ok(&[
        "export",
        "--checkpoint",
        &ckpt.to_string_lossy(),
        "--format",
        "safetensors",
        "--out",
        &weights.to_string_lossy(),
    ]);

    let code = "import sys, json, torch, torchvision\n\
                from safetensors.torch import load_file\n\
                m = torchvision.models.resnet18()\n\
                r = m.load_state_dict(load_file(sys.argv[1]), strict=False)\n\
                missing = sorted(k for k in r.missing_keys if not k.endswith('num_batches_tracked'))\n\
                m.fc = torch.nn.Identity()\n\
                m.eval()\n\
                n = 3 * 3 * 32 * 32\n\
                x = torch.arange(n, dtype=torch.float32).view(3, 3, 32, 32) / n\n\
                with torch.no_grad():\n    h = m(x).flatten().tolist()\n\
                print(json.dumps({'missing': missing, 'unexpected': r.unexpected_keys, 'h': h}))";
    let printed: serde_json::Value =
        serde_json::from_str(python_output(code, &[&weights.to_string_lossy()]).trim())
            .expect("JSON");
    assert_eq!(
        printed["missing"],
        serde_json::json!(["fc.bias", "fc.weight"])
    );
    assert_eq!(printed["unexpected"], serde_json::json!([]));

    let (_vs, model, _meta) = checkpoint::load_model(&ckpt, Device::Cpu).expect("checkpoint loads");
    let n = 3 * 3 * 32 * 32;
    let x = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([3, 3, 32, 32]) / n as f64;
    let ours = Vec::<f64>::try_from(
        tch::no_grad(|| model.encoder.forward_t(&x, false))
            .flatten(0, -1)
            .to_kind(Kind::Double),
    )
    .expect("values");
    let theirs: Vec<f64> = serde_json::from_value(printed["h"].clone()).expect("features");
    assert_eq!(ours.len(), theirs.len());
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-4, "torchvision's features differ by {diff}");
}

#[test]
fn eval_knn_reports_json_for_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = run_dir(&tmp, "tiny");
    run_ok(&as_strs(&tiny_run(&dir, 1)));
    let ckpt = dir.join("checkpoints/last.pt");
    let out = run_ok(&[
        "eval",
        "knn",
        "--checkpoint",
        &ckpt.to_string_lossy(),
        "--k",
        "20",
        "--device",
        "cpu",
        "--json",
    ]);
    let report = last_json(&out);
    let top1 = report["knn_top1"].as_f64().expect("knn_top1");
    assert!((0.0..=1.0).contains(&top1));
    assert_eq!(report["k"], 20);
    assert_eq!(report["data"], "synthetic");
}

#[test]
fn finetune_uses_a_balanced_label_fraction_and_reports_json() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = run_dir(&tmp, "tiny");
    run_ok(&as_strs(&tiny_run(&dir, 1)));
    let ckpt = dir.join("checkpoints/last.pt");
    let args = [
        "finetune",
        "--checkpoint",
        &ckpt.to_string_lossy(),
        "--label-fraction",
        "0.02",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--json",
    ];
    let report = last_json(&run_ok(&args));
    // The full synthetic train split has 500 images a class: 2% of each is 10, 100 in all.
    assert_eq!(report["labelled_images"], 100, "{report}");
    let (top1, top5) = (
        report["top1"].as_f64().expect("top1"),
        report["top5"].as_f64().expect("top5"),
    );
    assert!(
        (0.0..=1.0).contains(&top1) && top1 <= top5 && top5 <= 1.0,
        "{report}"
    );

    // SimCLRv2-style: the classifier after the head's first layer (the tiny model's head has 2).
    let from_layer = last_json(&run_ok(&[&args[..], &["--head-layer", "1"]].concat()));
    assert!(from_layer["top1"].as_f64().is_some(), "{from_layer}");
    let too_deep = run(&[&args[..], &["--head-layer", "3"]].concat());
    assert!(!too_deep.status.success());
    assert!(String::from_utf8_lossy(&too_deep.stderr).contains("head layer 3 does not exist"));
}
