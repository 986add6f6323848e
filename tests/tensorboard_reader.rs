//! TensorBoard's own reader (the `tensorboard` package in the venv) sees what a run writes:
//! the scalars (training and evaluation), the augmentation image, the configuration as text, the hparams records and
//! the embedding-projector files.
mod common;
use common::{as_strs, python_output, run_dir, run_ok, tiny_run};

const READER: &str = r#"
import sys, json, os
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.projector import projector_config_pb2
from google.protobuf import text_format
run = sys.argv[1]
ea = EventAccumulator(run, size_guidance={"tensors": 0, "scalars": 0})
ea.Reload()
hp = ea.PluginTagToContent("hparams")
start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"])
experiment = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"])
config = projector_config_pb2.ProjectorConfig()
text_format.Parse(open(os.path.join(run, "projector_config.pbtxt")).read(), config)
emb = config.embeddings[0]
lines = lambda p: open(os.path.join(run, p)).read().splitlines()
print(json.dumps({
    "scalars": sorted(ea.Tags()["scalars"]),
    "images": {t: [ea.Images(t)[0].width, ea.Images(t)[0].height] for t in ea.Tags()["images"]},
    "hparams_tags": sorted(hp),
    "hparams": sorted(start.session_start_info.hparams),
    "arch": start.session_start_info.hparams["model.arch"].string_value,
    "metrics": [m.name.tag for m in experiment.experiment.metric_infos],
    "text": ea.Tensors("config")[0].tensor_proto.string_val[0].decode(),
    "rows": len(lines(emb.tensor_path)),
    "labels": len(lines(emb.metadata_path)),
    "sprite": os.path.isfile(os.path.join(run, emb.sprite.image_path)),
    "sprite_dims": list(emb.sprite.single_image_dim),
}))
"#;

#[test]
fn tensorboard_reads_scalars_text_hparams_and_projector() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = run_dir(&tmp, "run");
    run_ok(&as_strs(&tiny_run(&dir, 1)));
    let ckpt = dir.join("checkpoints/last.pt");
    run_ok(&[
        "eval",
        "linear",
        "--checkpoint",
        &ckpt.to_string_lossy(),
        "--device",
        "cpu",
    ]);

    let seen: serde_json::Value =
        serde_json::from_str(python_output(READER, &[&dir.to_string_lossy()]).trim())
            .expect("JSON");
    for tag in [
        "train/loss",
        "train/contrast_acc",
        "train/lr",
        "train/images_per_sec",
        "eval/knn_top1",
        "eval/linear_top1",
        "eval/linear_top5",
    ] {
        assert!(
            seen["scalars"]
                .as_array()
                .is_some_and(|a| a.iter().any(|t| t == tag)),
            "scalar {tag} not seen: {seen}"
        );
    }
    assert_eq!(
        seen["hparams_tags"],
        serde_json::json!([
            "_hparams_/experiment",
            "_hparams_/session_end_info",
            "_hparams_/session_start_info"
        ])
    );
    assert_eq!(seen["arch"], "resnet18");
    assert!(
        seen["hparams"]
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h == "objective.temperature")),
        "{seen}"
    );
    assert_eq!(
        seen["metrics"],
        serde_json::json!(["eval/knn_top1", "train/loss"])
    );
    assert!(
        seen["text"]
            .as_str()
            .is_some_and(|t| t.contains("\"batch_size\": 32")),
        "{seen}"
    );
    // The tiny run monitors 40 test images: one projector row, label and thumbnail each.
    assert_eq!(seen["rows"], 40);
    assert_eq!(seen["labels"], 40);
    assert_eq!(seen["sprite"], true);
    assert_eq!(seen["sprite_dims"], serde_json::json!([32, 32]));
}
