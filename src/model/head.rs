//! The projection head g(·) that maps the representation h to the space where the
//! contrastive loss is applied: z = g(h).
//!
//! SimCLR, Section 2.1: "a small neural network projection head g(·) ... We use a MLP with
//! one hidden layer to obtain z = W(2)σ(W(1)h)", and Section 4.2: "a nonlinear projection is
//! better than a linear projection (+3%), and much better than no projection (>10%)".
//! Each hidden layer is Linear (no bias: BN follows) -> BatchNorm1d -> ReLU; the last layer is
//! a plain Linear. With `layers = 2` this is SimCLRv1's head.
//!
//! # Shapes
//! h `[B, in_dim]` -> z `[B, proj_dim]`.
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

/// A hidden layer of the head: Linear -> BN -> ReLU.
#[derive(Debug)]
struct Hidden {
    linear: nn::Linear,
    bn: nn::BatchNorm,
}

/// The MLP projection head.
#[derive(Debug)]
pub struct ProjectionHead {
    hidden: Vec<Hidden>,
    output: nn::Linear,
}

impl ProjectionHead {
    /// `layers` linear layers in all (>= 1), hidden width `hidden_dim`, output `proj_dim`.
    pub fn new(p: &nn::Path, in_dim: i64, hidden_dim: i64, proj_dim: i64, layers: usize) -> Self {
        let mut c_in = in_dim;
        let hidden = (0..layers.saturating_sub(1))
            .map(|i| {
                let layer = Hidden {
                    linear: linear(p / i / "linear", c_in, hidden_dim, false),
                    bn: nn::batch_norm1d(p / i / "bn", hidden_dim, Default::default()),
                };
                c_in = hidden_dim;
                layer
            })
            .collect();
        let output = linear(
            p / layers.saturating_sub(1) / "linear",
            c_in,
            proj_dim,
            true,
        );
        ProjectionHead { hidden, output }
    }
}

impl ModuleT for ProjectionHead {
    /// h `[B, in_dim]` -> z `[B, proj_dim]`.
    fn forward_t(&self, h: &Tensor, train: bool) -> Tensor {
        let mut x = h.shallow_clone();
        for layer in &self.hidden {
            x = x.apply(&layer.linear).apply_t(&layer.bn, train).relu();
        }
        x.apply(&self.output)
    }
}
