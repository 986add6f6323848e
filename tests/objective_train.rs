//! Every loss x similarity trains through the binary on the built-in dataset for 50 steps
//! without a NaN: every step's loss and contrastive metrics are finite and in range, and the
//! learned similarities are saved with the network. Kept cheap (16-px views, batch 8, a
//! 1/16-width ResNet-18, about 2-6 s a run); the heads alternate between SimCLRv1's and
//! SimCLRv2's (`--head-layers 3 --head-bn`).
mod common;
use common::{last_json, metrics, run_dir, run_ok};
use simclr::checkpoint;
use tch::{Device, Kind, Tensor};

#[test]
fn every_combination_trains_50_steps_without_nan() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut index = 0;
    for loss in ["nt-xent", "nt-logistic", "margin-triplet"] {
        for similarity in ["dot", "cosine", "bilinear", "concat"] {
            index += 1;
            let dir = run_dir(&tmp, &format!("{loss}-{similarity}"));
            let head = if index % 2 == 0 {
                "--head-layers 3 --head-bn"
            } else {
                ""
            };
            let flags = format!(
                "train --out {} --loss {loss} --similarity {similarity} {head} \
                 --max-train-images 80 --max-test-images 20 --batch-size 8 --image-size 16 \
                 --width 0.0625 --epochs 5 --knn-every 0 --checkpoint-every 0 --log-every 1 \
                 --workers 1 --device cpu --json",
                dir.display()
            );
            let args: Vec<&str> = flags.split_whitespace().collect();
            let summary = last_json(&run_ok(&args));
            let label = format!("{loss} x {similarity}");
            assert_eq!(summary["steps"], 50, "{label}: {summary}");

            let steps: Vec<serde_json::Value> = metrics(&dir)
                .into_iter()
                .filter(|r| r.get("train/loss").is_some())
                .collect();
            assert_eq!(steps.len(), 50, "{label}: one record per step");
            let candidates = (2 * 8 - 1) as f64;
            for r in &steps {
                let value = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
                assert!(value("train/loss").is_finite(), "{label}: {r}");
                for key in ["train/contrast_acc", "train/contrast_top5"] {
                    assert!((0.0..=1.0).contains(&value(key)), "{label}: {key} in {r}");
                }
                let entropy = value("train/contrast_entropy");
                assert!(
                    (0.0..=candidates.ln() + 1e-4).contains(&entropy),
                    "{label}: entropy in {r}"
                );
            }

            // Learned similarities are checkpointed, and trained: the bilinear W has left
            // its identity initialisation.
            let ckpt = checkpoint::load(&checkpoint::last_path(&dir), Device::Cpu)
                .expect("checkpoint loads");
            let names: &[&str] = match similarity {
                "bilinear" => &["similarity.weight"],
                "concat" => &["similarity.w_u", "similarity.w_v", "similarity.w"],
                _ => &[],
            };
            for name in names {
                assert!(ckpt.model.contains_key(*name), "{label}: {name} not saved");
            }
            if similarity == "bilinear" {
                let w = &ckpt.model["similarity.weight"];
                let eye = Tensor::eye(w.size()[0], (Kind::Float, Device::Cpu));
                assert!(
                    !w.allclose(&eye, 1e-6, 1e-6, false),
                    "{label}: W never moved"
                );
            }
        }
    }
}
