//! TensorBoard summaries that tensorboard-rs does not write (or not for every image shape)
//! itself, built from TensorBoard's own protobuf messages: images of any aspect ratio (PNG),
//! text (the text plugin: a DT_STRING tensor) and hparams (the hparams
//! plugin: experiment, session start and session end records, whose metrics are ordinary
//! scalars of the same run), as `torch.utils.tensorboard`'s `add_text` and `add_hparams` do.
use protobuf::well_known_types::Value;
use protobuf::{Message, RepeatedField};
use serde_json::Value as Json;
use tensorboard_proto::api::{Experiment, HParamInfo, MetricInfo, MetricName, Status};
use tensorboard_proto::plugin_hparams::{HParamsPluginData, SessionEndInfo, SessionStartInfo};
use tensorboard_proto::summary::{
    Summary, SummaryMetadata, SummaryMetadata_PluginData, Summary_Image, Summary_Value,
};
use tensorboard_proto::tensor::TensorProto;
use tensorboard_proto::types::DataType;

/// A one-value summary carrying `plugin`'s metadata (and `content`), with an optional tensor.
fn plugin_summary(
    tag: &str,
    plugin: &str,
    content: Vec<u8>,
    tensor: Option<TensorProto>,
) -> Summary {
    let mut plugin_data = SummaryMetadata_PluginData::new();
    plugin_data.set_plugin_name(plugin.to_string());
    plugin_data.set_content(content);
    let mut metadata = SummaryMetadata::new();
    metadata.set_plugin_data(plugin_data);
    let mut value = Summary_Value::new();
    value.set_tag(tag.to_string());
    value.set_metadata(metadata);
    if let Some(tensor) = tensor {
        value.set_tensor(tensor);
    }
    let mut summary = Summary::new();
    summary.set_value(RepeatedField::from_vec(vec![value]));
    summary
}

/// An RGB image under `tag` (shown in TensorBoard's Images tab), PNG-encoded.
pub fn image(tag: &str, img: &image::RgbImage) -> anyhow::Result<Summary> {
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)?;
    let mut encoded = Summary_Image::new();
    encoded.set_height(img.height() as i32);
    encoded.set_width(img.width() as i32);
    encoded.set_colorspace(3);
    encoded.set_encoded_image_string(png.into_inner());
    let mut value = Summary_Value::new();
    value.set_tag(tag.to_string());
    value.set_image(encoded);
    let mut summary = Summary::new();
    summary.set_value(RepeatedField::from_vec(vec![value]));
    Ok(summary)
}

/// Markdown text under `tag` (shown in TensorBoard's Text tab).
pub fn text(tag: &str, markdown: &str) -> Summary {
    let mut tensor = TensorProto::new();
    tensor.set_dtype(DataType::DT_STRING);
    tensor.set_string_val(RepeatedField::from_vec(vec![markdown.as_bytes().to_vec()]));
    plugin_summary(tag, "text", Vec::new(), Some(tensor))
}

/// Scalar leaves of a JSON object, flattened to `a.b.c` names (arrays and nulls skipped).
pub fn flatten(json: &Json) -> Vec<(String, Json)> {
    crate::config::leaves(json)
        .into_iter()
        .filter(|(_, v)| v.is_boolean() || v.is_number() || v.is_string())
        .collect()
}

fn hparams_summary(tag: &str, data: HParamsPluginData) -> Summary {
    let content = data
        .write_to_bytes()
        .expect("in-memory protobuf encoding cannot fail");
    plugin_summary(tag, "hparams", content, None)
}

/// The experiment and session-start records of a run with hyper-parameters `hparams`
/// (scalar leaves, e.g. from [`flatten`]) whose results are the scalar tags `metrics`.
pub fn hparams_start(hparams: &[(String, Json)], metrics: &[&str]) -> [Summary; 2] {
    let mut experiment = Experiment::new();
    experiment.set_hparam_infos(RepeatedField::from_vec(
        hparams
            .iter()
            .map(|(name, _)| {
                let mut info = HParamInfo::new();
                info.set_name(name.clone());
                info
            })
            .collect(),
    ));
    experiment.set_metric_infos(RepeatedField::from_vec(
        metrics
            .iter()
            .map(|tag| {
                let mut name = MetricName::new();
                name.set_tag(tag.to_string());
                let mut info = MetricInfo::new();
                info.set_name(name);
                info
            })
            .collect(),
    ));
    let mut start = SessionStartInfo::new();
    for (name, json) in hparams {
        let mut value = Value::new();
        match json {
            Json::Bool(b) => value.set_bool_value(*b),
            Json::Number(n) => value.set_number_value(n.as_f64().unwrap_or(f64::NAN)),
            other => value.set_string_value(
                other
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| other.to_string()),
            ),
        }
        start.mut_hparams().insert(name.clone(), value);
    }
    let mut experiment_data = HParamsPluginData::new();
    experiment_data.set_experiment(experiment);
    let mut start_data = HParamsPluginData::new();
    start_data.set_session_start_info(start);
    [
        hparams_summary("_hparams_/experiment", experiment_data),
        hparams_summary("_hparams_/session_start_info", start_data),
    ]
}

/// The session-end record of a run that finished successfully.
pub fn hparams_end() -> Summary {
    let mut end = SessionEndInfo::new();
    end.set_status(Status::STATUS_SUCCESS);
    let mut data = HParamsPluginData::new();
    data.set_session_end_info(end);
    hparams_summary("_hparams_/session_end_info", data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_names_nested_scalars() {
        let json = serde_json::json!({"model": {"arch": "resnet18", "width": 0.5}, "run": {"seed": 3, "tags": [1]}});
        let names: Vec<String> = flatten(&json).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["model.arch", "model.width", "run.seed"]);
    }

    #[test]
    fn hparams_records_carry_plugin_metadata() {
        let [experiment, start] = hparams_start(
            &[("model.arch".into(), serde_json::json!("resnet18"))],
            &["eval/knn_top1"],
        );
        for (summary, tag) in [
            (&experiment, "_hparams_/experiment"),
            (&start, "_hparams_/session_start_info"),
        ] {
            let value = &summary.get_value()[0];
            assert_eq!(value.get_tag(), tag);
            assert_eq!(
                value.get_metadata().get_plugin_data().get_plugin_name(),
                "hparams"
            );
        }
        let data = HParamsPluginData::parse_from_bytes(
            start.get_value()[0]
                .get_metadata()
                .get_plugin_data()
                .get_content(),
        )
        .expect("decodes");
        assert_eq!(
            data.get_session_start_info().get_hparams()["model.arch"].get_string_value(),
            "resnet18"
        );
    }
}
