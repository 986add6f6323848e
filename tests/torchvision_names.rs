//! The encoder's parameter names and shapes equal torchvision's ResNets (minus `fc`), so its
//! weights map one to one onto `torchvision.models.resnet*`.
mod common;
use common::python_output;
use simclr::model::{Arch, ModelConfig, SimClr, Stem};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Device};

/// torchvision's state_dict names and shapes, without `fc.*` and `num_batches_tracked`.
fn torchvision_params(arch: &str) -> BTreeMap<String, Vec<i64>> {
    let code = "import sys, json, torchvision\n\
                m = getattr(torchvision.models, sys.argv[1])()\n\
                print(json.dumps({k: list(v.shape) for k, v in m.state_dict().items()\n\
                                  if not k.startswith('fc.') and not k.endswith('num_batches_tracked')}))";
    serde_json::from_str(python_output(code, &[arch]).trim()).expect("Python prints a JSON object")
}

fn our_params(arch: Arch) -> BTreeMap<String, Vec<i64>> {
    let vs = VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        arch,
        stem: Stem::Imagenet,
        ..Default::default()
    };
    let _model = SimClr::new(&vs.root(), &cfg, 224);
    let prefix = format!("{}.", SimClr::ENCODER);
    vs.variables()
        .into_iter()
        .filter_map(|(name, t)| {
            name.strip_prefix(&prefix)
                .map(|n| (n.to_string(), t.size()))
        })
        .collect()
}

#[test]
fn resnet18_matches_torchvision() {
    assert_eq!(our_params(Arch::Resnet18), torchvision_params("resnet18"));
}

#[test]
fn resnet50_matches_torchvision() {
    assert_eq!(our_params(Arch::Resnet50), torchvision_params("resnet50"));
}
