//! The projection head g(·) that maps the representation h to the space where the
//! contrastive loss is applied: z = g(h).
//!
//! SimCLR, Section 2.1: "a small neural network projection head g(·) ... We use a MLP with
//! one hidden layer to obtain z = W(2)σ(W(1)h)", and Section 4.2: "a nonlinear projection is
//! better than a linear projection (+3%), and much better than no projection (>10%)".
//! SimCLRv2 (Chen et al. 2020b, <https://arxiv.org/abs/2006.10029>, Section 2) makes it deeper,
//! "a 3-layer projection head", and fine-tunes "from the middle layer of the projection head".
//!
//! Layer i of `layers`: Linear, then BatchNorm1d on every hidden layer, then ReLU on every
//! hidden layer. The last layer has no ReLU; it is
//! - a plain Linear with bias (SimCLRv1, the default), or
//! - with `bn` (SimCLRv2, the official `tf2/model.py`): Linear without bias, then BatchNorm1d
//!   with a scale but no shift ("for the final layer, neither bias nor relu is used").
//!
//! A Linear followed by BN has no bias (BN's shift takes its place). Widths: in_dim -> hidden
//! (x layers−1) -> proj_dim. SimCLRv1: `layers = 2`; SimCLRv2: `layers = 3, bn = true`.
//!
//! The output of layer k (after its ReLU) is reachable through [`ProjectionHead::forward_to`]:
//! k = 0 is h itself, k = `layers` is z.
//!
//! # Shapes
//! h `[B, in_dim]` -> layer k `[B, hidden]` (0 < k < layers) -> z `[B, proj_dim]`.
use super::norm::BatchNorm;
use super::ModelConfig;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// PyTorch's default `nn.Linear` initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn linear(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    let bound = 1.0 / (c_in as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init: init,
            bs_init: bias.then_some(init),
            bias,
        },
    )
}

/// BatchNorm1d with a learned scale, and a learned shift only when `shift` (SimCLRv2's last
/// layer has none: Keras' `center=False`).
fn batch_norm(p: nn::Path, dim: i64, shift: bool) -> BatchNorm {
    if shift {
        let cfg = nn::BatchNormConfig::default();
        return BatchNorm::new(nn::batch_norm1d(p, dim, cfg), &cfg);
    }
    let cfg = nn::BatchNormConfig {
        affine: false,
        ..Default::default()
    };
    let mut bn = nn::batch_norm1d(&p, dim, cfg);
    bn.ws = Some(p.var("weight", &[dim], nn::Init::Const(1.0)));
    BatchNorm::new(bn, &cfg)
}

/// One layer of the head: Linear -> BN (optional) -> ReLU (hidden layers).
#[derive(Debug)]
struct Layer {
    linear: nn::Linear,
    bn: Option<BatchNorm>,
    relu: bool,
}

/// The MLP projection head.
#[derive(Debug)]
pub struct ProjectionHead {
    layers: Vec<Layer>,
}

impl ProjectionHead {
    /// The head of `cfg` on a representation of width `in_dim` (hidden width: `head_hidden`,
    /// or `in_dim` as in the paper).
    pub fn new(p: &nn::Path, in_dim: i64, cfg: &ModelConfig) -> Self {
        let hidden = cfg.head_hidden.unwrap_or(in_dim);
        let count = cfg.head_layers.max(1);
        let layers = (0..count)
            .map(|i| {
                let last = i + 1 == count;
                let c_in = if i == 0 { in_dim } else { hidden };
                let c_out = if last { cfg.proj_dim } else { hidden };
                let bn = !last || cfg.head_bn;
                Layer {
                    linear: linear(p / i / "linear", c_in, c_out, !bn),
                    bn: bn.then(|| batch_norm(p / i / "bn", c_out, !last)),
                    relu: !last,
                }
            })
            .collect();
        ProjectionHead { layers }
    }

    /// Every batch-norm layer (to synchronize them across ranks).
    pub fn batch_norms_mut(&mut self) -> impl Iterator<Item = &mut BatchNorm> {
        self.layers.iter_mut().filter_map(|layer| layer.bn.as_mut())
    }

    /// Number of layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// The output of the first `k` layers (k = 0: h itself; k >= `depth()`: z).
    ///
    /// # Shapes
    /// h `[B, in_dim]` -> `[B, hidden]` (0 < k < depth), `[B, proj_dim]` (k = depth).
    pub fn forward_to(&self, h: &Tensor, k: usize, train: bool) -> Tensor {
        let mut x = h.shallow_clone();
        for layer in self.layers.iter().take(k) {
            x = x.apply(&layer.linear);
            if let Some(bn) = &layer.bn {
                x = x.apply_t(bn, train);
            }
            if layer.relu {
                x = x.relu();
            }
        }
        x
    }
}

impl ModuleT for ProjectionHead {
    /// h `[B, in_dim]` -> z `[B, proj_dim]`.
    fn forward_t(&self, h: &Tensor, train: bool) -> Tensor {
        self.forward_to(h, self.layers.len(), train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    fn names(layers: usize, bn: bool) -> Vec<(String, Vec<i64>)> {
        let vs = VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            head_layers: layers,
            head_hidden: Some(6),
            proj_dim: 3,
            head_bn: bn,
            ..Default::default()
        };
        let _head = ProjectionHead::new(&vs.root(), 5, &cfg);
        let mut named: Vec<_> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| (n, t.size()))
            .collect();
        named.sort();
        named
    }

    fn owned(expected: &[(&str, &[i64])]) -> Vec<(String, Vec<i64>)> {
        expected
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect()
    }

    /// SimCLRv1: Linear(no bias)+BN+ReLU, then Linear with bias.
    #[test]
    fn v1_head_parameters() {
        let expected = owned(&[
            ("0.bn.bias", &[6]),
            ("0.bn.weight", &[6]),
            ("0.linear.weight", &[6, 5]),
            ("1.linear.bias", &[3]),
            ("1.linear.weight", &[3, 6]),
        ]);
        assert_eq!(names(2, false), expected);
    }

    /// SimCLRv2: three Linear layers without bias, BN after each, the last BN without shift.
    #[test]
    fn v2_head_parameters() {
        let expected = owned(&[
            ("0.bn.bias", &[6]),
            ("0.bn.weight", &[6]),
            ("0.linear.weight", &[6, 5]),
            ("1.bn.bias", &[6]),
            ("1.bn.weight", &[6]),
            ("1.linear.weight", &[6, 6]),
            ("2.bn.weight", &[3]),
            ("2.linear.weight", &[3, 6]),
        ]);
        assert_eq!(names(3, true), expected);
    }

    /// Layer outputs: widths, ReLU on hidden layers only, and the last BN standardising z
    /// in training mode (zero mean per feature, since it has no shift).
    #[test]
    fn layer_outputs() {
        let vs = VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            head_layers: 3,
            head_hidden: Some(6),
            proj_dim: 3,
            head_bn: true,
            ..Default::default()
        };
        let head = ProjectionHead::new(&vs.root(), 5, &cfg);
        let h = Tensor::randn([8, 5], (Kind::Float, Device::Cpu));
        assert!(head.forward_to(&h, 0, true).equal(&h));
        for k in [1, 2] {
            let y = head.forward_to(&h, k, true);
            assert_eq!(y.size(), [8, 6]);
            assert!(y.min().double_value(&[]) >= 0.0, "layer {k} ends with ReLU");
        }
        let z = head.forward_t(&h, true);
        assert_eq!(z.size(), [8, 3]);
        assert!(z.min().double_value(&[]) < 0.0, "no ReLU on z");
        let feature_means = z
            .mean_dim(0, false, Kind::Float)
            .abs()
            .max()
            .double_value(&[]);
        assert!(feature_means < 1e-5, "{feature_means}");
    }
}
