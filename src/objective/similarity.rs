//! Similarities s(u, v) between projections, computed for all pairs of two sets at once
//! (one `[M, K]` score matrix, no per-pair loops). The method notes (SimCLR section
//! "Contrastive Loss Comparison") list them, the names coming from Luong et al. 2015
//! (<https://arxiv.org/abs/1508.04025>):
//!
//! | kind | s(u, v) | learned |
//! |---|---|---|
//! | `dot` | u·v | - |
//! | `cosine` | u·v / (‖u‖‖v‖) | - |
//! | `bilinear` ("general") | uᵀ W v | W `[D, D]`, initialised to the identity |
//! | `concat` (additive) | wᵀ tanh(W_u u + W_v v) | W_u, W_v `[H, D]`, w `[H]` |
//!
//! "sometimes L2 normalization may be performed before computing the similarities to ensure
//! vectors are of the same scale" (the notes): with `normalize`, u and v are L2-normalised
//! first (dot then equals cosine; cosine is normalised by definition either way).
//!
//! The bilinear W starts as the identity, so that training starts from the dot (or, normalised,
//! the cosine) similarity and learns the metric from there. W_u, W_v and w take PyTorch's
//! `nn.Linear` initialisation, U(±1/√fan_in); no bias, as in the notes' formula. The learned
//! parameters live in the var store under `similarity.` (`weight`; `w_u`, `w_v`, `w`): they are
//! trained and checkpointed with the network, but are no part of the exported encoder.
//!
//! The concat similarity is the only one that cannot be one matrix product: every pair needs
//! its own H-vector tanh(W_u u + W_v v). It runs in blocks of anchor rows of at most
//! [`CHUNK_ELEMENTS`] pre-activations, with a backward pass that recomputes each block
//! (`crate::shim::additive_scores`), so the `[M, K, H]` tensor never exists: besides the
//! `[M, H]` and `[K, H]` projections, the extra memory is a few blocks of 16 MiB (f32).
//!
//! # Shapes
//! u `[M, D]`, v `[K, D]` -> scores `[M, K]`, `scores[i][j] = s(u_i, v_j)`, in the inputs' dtype.
use crate::shim;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Which similarity the loss compares projections with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SimilarityKind {
    /// u·v.
    Dot,
    /// u·v / (|u||v|), SimCLR's choice.
    Cosine,
    /// uᵀWv with a learned W ("general").
    Bilinear,
    /// wᵀtanh(W_u u + W_v v) with learned W_u, W_v, w ("additive").
    Concat,
}

/// Largest number of concat pre-activations held at once: 2²² elements, 16 MiB in f32
/// (e.g. 64 anchor rows of a 2N = 512, H = 128 batch).
pub const CHUNK_ELEMENTS: i64 = 1 << 22;

/// The form of s(u, v) and its learned parameters.
#[derive(Debug)]
enum Form {
    Dot,
    Bilinear { weight: Tensor },
    Concat { w_u: Tensor, w_v: Tensor, w: Tensor },
}

/// A similarity function over projections of width D.
#[derive(Debug)]
pub struct Similarity {
    form: Form,
    normalize: bool,
}

/// PyTorch's `nn.Linear` weight initialisation for a layer with `fan_in` inputs.
fn uniform_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// Rows scaled to unit L2 norm.
///
/// # Shapes
/// `[M, D]` -> `[M, D]`.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
}

impl Similarity {
    /// Builds `kind` for D = `dim` under `p` (learned parameters only for bilinear and concat;
    /// `hidden` is the concat similarity's H).
    pub fn new(
        p: &nn::Path,
        kind: SimilarityKind,
        normalize: bool,
        dim: i64,
        hidden: i64,
    ) -> Similarity {
        let form = match kind {
            SimilarityKind::Dot | SimilarityKind::Cosine => Form::Dot,
            SimilarityKind::Bilinear => Form::Bilinear {
                weight: p.var_copy("weight", &Tensor::eye(dim, (p.kind(), p.device()))),
            },
            SimilarityKind::Concat => Form::Concat {
                w_u: p.var("w_u", &[hidden, dim], uniform_init(dim)),
                w_v: p.var("w_v", &[hidden, dim], uniform_init(dim)),
                w: p.var("w", &[hidden], uniform_init(hidden)),
            },
        };
        Similarity {
            form,
            normalize: normalize || kind == SimilarityKind::Cosine,
        }
    }

    /// s(u_i, v_j) for every pair of two sets.
    ///
    /// # Shapes
    /// `u [M, D]`, `v [K, D]` -> `[M, K]`.
    pub fn scores(&self, u: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.pairs(&self.prepare(u), &self.prepare(v))
    }

    /// s(z_i, z_j) for every pair of rows of one set (training: the 2N views are both anchors
    /// and candidates), normalising once.
    ///
    /// # Shapes
    /// `z [M, D]` -> `[M, M]`.
    pub fn within(&self, z: &Tensor) -> Result<Tensor> {
        let z = self.prepare(z);
        self.pairs(&z, &z)
    }

    /// The rows as the similarity sees them: L2-normalised or not.
    fn prepare(&self, x: &Tensor) -> Tensor {
        if self.normalize {
            l2_normalize(x)
        } else {
            x.shallow_clone()
        }
    }

    /// The score matrix of prepared rows.
    fn pairs(&self, u: &Tensor, v: &Tensor) -> Result<Tensor> {
        Ok(match &self.form {
            Form::Dot => u.matmul(&v.tr()),
            Form::Bilinear { weight } => u.matmul(weight).matmul(&v.tr()),
            Form::Concat { w_u, w_v, w } => shim::additive_scores(
                &u.matmul(&w_u.tr()), // [M, H]
                &v.matmul(&w_v.tr()), // [K, H]
                w,
                CHUNK_ELEMENTS,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Double, Device::Cpu))
    }

    /// The blocked concat scores equal the naive `[M, K, H]` computation, in value and in every
    /// gradient, whether blocks hold one row, several rows with a ragged last block, or all rows.
    #[test]
    fn blocked_additive_scores_match_the_naive_tensor() -> Result<()> {
        let (m, k, h) = (7, 5, 3);
        let (a, b, w) = (randn(&[m, h]), randn(&[k, h]), randn(&[h]));
        let naive = |a: &Tensor, b: &Tensor, w: &Tensor| {
            (a.unsqueeze(1) + b.unsqueeze(0)).tanh().matmul(w) // [M, K, H] -> [M, K]
        };
        let g = randn(&[m, k]); // an arbitrary upstream gradient
        let grads = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| -> Result<_> {
            let (a, b, w) = (
                a.copy().requires_grad_(true),
                b.copy().requires_grad_(true),
                w.copy().requires_grad_(true),
            );
            let s = f(&a, &b, &w)?;
            (&s * &g).sum(Kind::Double).backward();
            Ok([s.detach(), a.grad(), b.grad(), w.grad()])
        };
        let expected = grads(&|a, b, w| Ok(naive(a, b, w)))?;
        for budget in [1, 2 * k * h, m * k * h] {
            let got = grads(&|a, b, w| shim::additive_scores(a, b, w, budget))?;
            for (e, g) in expected.iter().zip(&got) {
                assert!(e.allclose(g, 1e-12, 1e-12, false), "budget {budget}");
            }
        }
        Ok(())
    }

    #[test]
    fn shapes_mismatch_is_an_error_not_a_crash() {
        let err = shim::additive_scores(&randn(&[2, 3]), &randn(&[2, 4]), &randn(&[3]), 8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("additive similarity"), "{err}");
    }

    /// Learned parameters sit under the path given, with the documented names and shapes; the
    /// bilinear similarity starts as the dot product.
    #[test]
    fn learned_parameters_and_initial_bilinear() -> Result<()> {
        let vs = VarStore::new(Device::Cpu);
        let p = vs.root() / "similarity";
        let bilinear = Similarity::new(&(&p / "b"), SimilarityKind::Bilinear, false, 4, 4);
        let _concat = Similarity::new(&(&p / "c"), SimilarityKind::Concat, false, 4, 6);
        let mut names: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ("similarity.b.weight".into(), vec![4, 4]),
                ("similarity.c.w".into(), vec![6]),
                ("similarity.c.w_u".into(), vec![6, 4]),
                ("similarity.c.w_v".into(), vec![6, 4]),
            ]
        );
        let (u, v) = (
            Tensor::randn([3, 4], (Kind::Float, Device::Cpu)),
            Tensor::randn([5, 4], (Kind::Float, Device::Cpu)),
        );
        assert!(bilinear
            .scores(&u, &v)?
            .allclose(&u.matmul(&v.tr()), 1e-6, 1e-6, false));
        Ok(())
    }
}
