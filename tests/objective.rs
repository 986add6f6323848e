//! The objectives against independent oracles, in f64 (src/objective/, README "Objectives"):
//!
//! - loss values against a deliberately naive implementation written here from the method
//!   notes and SimCLR's Algorithm 1 (per-anchor loops over plain `Vec<f64>`), for every loss x
//!   similarity x normalisation;
//! - autograd's gradient of ℓ_i with respect to the anchor u = z_i against the notes' closed-form
//!   negative gradients (sign included) to 1e-8 relative, for every loss with the dot and cosine
//!   similarities, the margin triplet's zero-gradient branch included;
//! - autograd against central finite differences for the whole loss (through anchors and
//!   candidates), and for the learned bilinear and concat parameters;
//! - invariances: to rescaling z (cosine or normalised similarities) and to permuting the batch.
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use simclr::objective::{
    loss, Layout, LossKind, Objective, ObjectiveConfig, Similarity, SimilarityKind,
};
use std::collections::HashMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

const LOSSES: [LossKind; 3] = [
    LossKind::NtXent,
    LossKind::NtLogistic,
    LossKind::MarginTriplet,
];
const SIMILARITIES: [SimilarityKind; 4] = [
    SimilarityKind::Dot,
    SimilarityKind::Cosine,
    SimilarityKind::Bilinear,
    SimilarityKind::Concat,
];
/// Every loss x similarity x normalisation.
fn every_combination() -> Vec<(LossKind, SimilarityKind, bool)> {
    LOSSES
        .into_iter()
        .flat_map(|l| SIMILARITIES.into_iter().map(move |s| (l, s)))
        .flat_map(|(l, s)| [(l, s, false), (l, s, true)])
        .collect()
}

/// Images per batch, projection width and concat hidden width of the small test problems.
const N: usize = 4;
const D: usize = 5;
const H: usize = 3;

/// Rows of uniform(-1, 1) numbers, reproducible from `seed`.
fn random_rows(seed: u64, rows: usize, cols: usize) -> Vec<Vec<f64>> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    (0..rows)
        .map(|_| (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

/// A matrix's rows, or a vector as one row.
fn rows_of(t: &Tensor) -> Vec<Vec<f64>> {
    let cols = *t.size().last().unwrap_or(&1) as usize;
    let flat = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("f64 values");
    flat.chunks(cols).map(<[f64]>::to_vec).collect()
}

/// An f64 objective of the given kinds, its learned parameters (if any) drawn at random
/// (the bilinear W would otherwise start as the identity), and those parameters by name.
fn objective(
    loss: LossKind,
    similarity: SimilarityKind,
    normalize: bool,
    temperature: f64,
    margin: f64,
) -> (VarStore, Objective, HashMap<String, Tensor>) {
    let mut vs = VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let cfg = ObjectiveConfig {
        temperature,
        similarity,
        normalize,
        loss,
        margin,
        concat_hidden: Some(H as i64),
    };
    let objective = Objective::new(&vs.root(), &cfg, D as i64);
    let params = vs.variables();
    for t in params.values() {
        tch::no_grad(|| t.shallow_clone().copy_(&(Tensor::rand_like(t) * 2.0 - 1.0)));
    }
    (vs, objective, params)
}

// ---------------------------------------------------------------------------------------
// The naive reference: the notes' formulas, one anchor and one pair at a time.

/// s(u, v) with the learned parameters as plain numbers.
fn naive_similarity(
    kind: SimilarityKind,
    normalize: bool,
    params: &HashMap<String, Vec<Vec<f64>>>,
    u: &[f64],
    v: &[f64],
) -> f64 {
    let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
    let unit = |x: &[f64]| x.iter().map(|a| a / norm(x)).collect::<Vec<f64>>();
    let (u, v) = if normalize || kind == SimilarityKind::Cosine {
        (unit(u), unit(v))
    } else {
        (u.to_vec(), v.to_vec())
    };
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    match kind {
        SimilarityKind::Dot | SimilarityKind::Cosine => dot(&u, &v),
        SimilarityKind::Bilinear => {
            // uᵀ W v
            let w = &params["similarity.weight"];
            let mut s = 0.0;
            for a in 0..u.len() {
                for b in 0..v.len() {
                    s += u[a] * w[a][b] * v[b];
                }
            }
            s
        }
        SimilarityKind::Concat => {
            // wᵀ tanh(W_v v + W_u u)
            let (w_u, w_v, w) = (
                &params["similarity.w_u"],
                &params["similarity.w_v"],
                &params["similarity.w"][0],
            );
            (0..w.len())
                .map(|h| w[h] * (dot(&w_v[h], &v) + dot(&w_u[h], &u)).tanh())
                .sum()
        }
    }
}

/// L = 1/(2N) Σ_i ℓ_i over the views z (rows 0..N: first views, N..2N: second views).
fn naive_loss(
    kind: LossKind,
    similarity: SimilarityKind,
    normalize: bool,
    params: &HashMap<String, Vec<Vec<f64>>>,
    z: &[Vec<f64>],
    tau: f64,
    margin: f64,
) -> f64 {
    let views = z.len();
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let mut total = 0.0;
    for i in 0..views {
        let p = (i + views / 2) % views;
        let s = |k: usize| naive_similarity(similarity, normalize, params, &z[i], &z[k]);
        let s_pos = s(p);
        let s_neg: Vec<f64> = (0..views).filter(|&k| k != i && k != p).map(s).collect();
        let count = s_neg.len() as f64;
        total += match kind {
            LossKind::NtXent => {
                let z_sum: f64 =
                    (s_pos / tau).exp() + s_neg.iter().map(|s| (s / tau).exp()).sum::<f64>();
                -s_pos / tau + z_sum.ln()
            }
            LossKind::NtLogistic => {
                -sigmoid(s_pos / tau).ln()
                    - s_neg.iter().map(|s| sigmoid(-s / tau).ln()).sum::<f64>() / count
            }
            LossKind::MarginTriplet => {
                s_neg
                    .iter()
                    .map(|s| (s - s_pos + margin).max(0.0))
                    .sum::<f64>()
                    / count
            }
        };
    }
    total / views as f64
}

#[test]
fn loss_values_match_the_naive_implementation() {
    for (seed, (kind, similarity, normalize)) in every_combination().into_iter().enumerate() {
        let (tau, margin) = (0.4, 0.8);
        let (_vs, objective, params) = objective(kind, similarity, normalize, tau, margin);
        let params: HashMap<String, Vec<Vec<f64>>> = params
            .iter()
            .map(|(k, t)| (k.clone(), rows_of(t)))
            .collect();
        let z = random_rows(seed as u64, 2 * N, D);
        let ours = objective
            .forward(&tensor(&z[..N]), &tensor(&z[N..]))
            .expect("forward")
            .loss
            .double_value(&[]);
        let naive = naive_loss(kind, similarity, normalize, &params, &z, tau, margin);
        let rel = (ours - naive).abs() / naive.abs();
        assert!(
            rel < 1e-12,
            "{kind:?} {similarity:?} normalize={normalize}: {ours} vs naive {naive}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Closed-form gradients with respect to the anchor u (the notes' "negative gradients").

/// ∂s(u, v)/∂u: v for the dot product, (v̂ − s·û)/‖u‖ for the cosine similarity.
fn ds_du(similarity: SimilarityKind, u: &[f64], v: &[f64]) -> Vec<f64> {
    match similarity {
        SimilarityKind::Dot => v.to_vec(),
        SimilarityKind::Cosine => {
            let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
            let (nu, nv) = (norm(u), norm(v));
            let s = u.iter().zip(v).map(|(a, b)| a * b).sum::<f64>() / (nu * nv);
            u.iter()
                .zip(v)
                .map(|(a, b)| (b / nv - s * a / nu) / nu)
                .collect()
        }
        other => unreachable!("no closed form for {other:?}"),
    }
}

/// The notes' negative gradient −∂ℓ_i/∂u for anchor i, the negatives averaged (1/K each)
/// for the logistic and triplet losses, and softmax(s/τ) in the cross-entropy's.
fn negative_gradient(
    kind: LossKind,
    similarity: SimilarityKind,
    z: &[Vec<f64>],
    i: usize,
    tau: f64,
    margin: f64,
) -> Vec<f64> {
    let views = z.len();
    let p = (i + views / 2) % views;
    let s = |k: usize| naive_similarity(similarity, false, &HashMap::new(), &z[i], &z[k]);
    let negatives: Vec<usize> = (0..views).filter(|&k| k != i && k != p).collect();
    let count = negatives.len() as f64;
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let partition: f64 = (0..views)
        .filter(|&k| k != i)
        .map(|k| (s(k) / tau).exp())
        .sum();
    // (weight of ∂s⁺, weight of each ∂s⁻)
    let (w_pos, w_neg): (f64, Vec<f64>) = match kind {
        LossKind::NtXent => (
            (1.0 - (s(p) / tau).exp() / partition) / tau,
            negatives
                .iter()
                .map(|&k| (s(k) / tau).exp() / partition / tau)
                .collect(),
        ),
        LossKind::NtLogistic => (
            sigmoid(-s(p) / tau) / tau,
            negatives
                .iter()
                .map(|&k| sigmoid(s(k) / tau) / tau / count)
                .collect(),
        ),
        LossKind::MarginTriplet => {
            let active: Vec<f64> = negatives
                .iter()
                .map(|&k| {
                    if s(p) - s(k) < margin {
                        1.0 / count
                    } else {
                        0.0
                    }
                })
                .collect();
            (active.iter().sum(), active)
        }
    };
    let mut g: Vec<f64> = ds_du(similarity, &z[i], &z[p])
        .iter()
        .map(|d| w_pos * d)
        .collect();
    for (&k, w) in negatives.iter().zip(&w_neg) {
        for (gd, d) in g.iter_mut().zip(ds_du(similarity, &z[i], &z[k])) {
            *gd -= w * d;
        }
    }
    g
}

/// ∂ℓ_i/∂u_i for every anchor by autograd: anchors u require grad, candidates v are held
/// fixed (the notes' setting), ℓ_i depends on row i of u only.
fn autograd_anchor_gradients(
    kind: LossKind,
    similarity: SimilarityKind,
    z: &[Vec<f64>],
    tau: f64,
    margin: f64,
) -> Vec<Vec<f64>> {
    let vs = VarStore::new(Device::Cpu);
    let sim = Similarity::new(&vs.root(), similarity, false, D as i64, H as i64);
    let u = tensor(z).requires_grad_(true);
    let scores = sim.scores(&u, &tensor(z)).expect("scores");
    let layout = Layout::square(z.len() as i64, Device::Cpu);
    loss::per_anchor(kind, &scores, &layout, tau, margin)
        .sum(Kind::Double)
        .backward();
    rows_of(&u.grad())
}

/// Autograd's ∂ℓ_i/∂u_i equals minus the closed-form negative gradient for every anchor, to
/// 1e-8 relative, and exactly 0 where the closed form is 0; returns how many anchors had a zero
/// and a non-zero gradient.
fn check_anchor_gradients(
    kind: LossKind,
    similarity: SimilarityKind,
    z: &[Vec<f64>],
    tau: f64,
    margin: f64,
) -> (usize, usize) {
    let label = format!("{kind:?} {similarity:?} τ={tau}");
    let got = autograd_anchor_gradients(kind, similarity, z, tau, margin);
    let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
    let mut zero = 0;
    for (i, g) in got.iter().enumerate() {
        let e: Vec<f64> = negative_gradient(kind, similarity, z, i, tau, margin)
            .iter()
            .map(|d| -d)
            .collect();
        if norm(&e) == 0.0 {
            assert!(
                norm(g) == 0.0,
                "{label}, anchor {i}: expected 0, autograd {g:?}"
            );
            zero += 1;
        } else {
            let diff: Vec<f64> = g.iter().zip(&e).map(|(a, b)| a - b).collect();
            let rel = norm(&diff) / norm(&e);
            assert!(
                rel < 1e-8,
                "{label}, anchor {i}: relative error {rel}\n autograd {g:?}\n closed form {e:?}"
            );
        }
    }
    (zero, got.len() - zero)
}

#[test]
fn anchor_gradients_equal_the_closed_forms() {
    for (seed, kind) in LOSSES.into_iter().enumerate() {
        for similarity in [SimilarityKind::Dot, SimilarityKind::Cosine] {
            for tau in [1.0, 0.3] {
                let z = random_rows(100 + seed as u64, 2 * N, D);
                check_anchor_gradients(kind, similarity, &z, tau, 0.5);
            }
        }
    }
}

/// Image k's two views lie near the axis e_k, except image 0's, which are far apart: anchors of
/// images 1..N clear the margin against every negative (zero gradient), image 0's do not; and
/// within image 0's rows some negatives are inside the margin and some outside.
#[test]
fn margin_triplet_gradient_on_both_branches() {
    let noise = random_rows(7, 2 * N, D);
    let z: Vec<Vec<f64>> = (0..2 * N)
        .map(|row| {
            let image = row % N;
            let mut v: Vec<f64> = noise[row].iter().map(|e| 0.01 * e).collect();
            if image == 0 {
                // Views of image 0 point at e_0 + e_1 and e_0 - e_1 (+ some of e_2).
                v[0] += 1.0;
                v[1] += if row < N { 1.0 } else { -1.0 };
                v[2] += 0.6;
            } else {
                v[image] += 1.0;
            }
            v
        })
        .collect();
    let margin = 0.5;
    for similarity in [SimilarityKind::Dot, SimilarityKind::Cosine] {
        let (mut inside, mut outside) = (0, 0);
        for i in 0..2 * N {
            let p = (i + N) % (2 * N);
            let s = |k: usize| naive_similarity(similarity, false, &HashMap::new(), &z[i], &z[k]);
            for k in (0..2 * N).filter(|&k| k != i && k != p) {
                let gap = s(p) - s(k);
                assert!(
                    (gap - margin).abs() > 1e-3,
                    "too close to the margin's edge"
                );
                if gap < margin {
                    inside += 1;
                } else {
                    outside += 1;
                }
            }
        }
        assert!(
            inside > 0 && outside > 0,
            "{similarity:?}: {inside} inside, {outside} outside"
        );
        let (zero, nonzero) =
            check_anchor_gradients(LossKind::MarginTriplet, similarity, &z, 1.0, margin);
        assert!(
            zero > 0 && nonzero > 0,
            "{similarity:?}: {zero} zero, {nonzero} non-zero gradients"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Finite differences: the whole loss, through anchors and candidates, and the learned parameters.

/// Central differences of `f` at every entry of `x` (changed in place and restored).
fn finite_differences(x: &Tensor, f: &dyn Fn() -> f64) -> Vec<f64> {
    let eps = 1e-6;
    let flat = x.view([-1]);
    let set = |j: i64, value: f64| tch::no_grad(|| drop(flat.get(j).fill_(value)));
    (0..flat.size()[0])
        .map(|j| {
            let orig = flat.double_value(&[j]);
            set(j, orig + eps);
            let plus = f();
            set(j, orig - eps);
            let minus = f();
            set(j, orig);
            (plus - minus) / (2.0 * eps)
        })
        .collect()
}

fn assert_close_to_fd(label: &str, autograd: &Tensor, fd: &[f64]) {
    let got = Vec::<f64>::try_from(autograd.flatten(0, -1)).expect("f64 gradient");
    let scale = fd.iter().fold(0.0f64, |m, g| m.max(g.abs())).max(1e-3);
    for (j, (a, b)) in got.iter().zip(fd).enumerate() {
        assert!(
            (a - b).abs() < 1e-6 * scale,
            "{label}[{j}]: autograd {a}, finite differences {b}"
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    for (i, (kind, similarity, normalize)) in every_combination().into_iter().enumerate() {
        let (_vs, objective, params) = objective(kind, similarity, normalize, 0.5, 0.5);
        let z = tensor(&random_rows(200 + i as u64, 2 * N, D)).requires_grad_(true);
        let loss_of = || {
            let zs = z.chunk(2, 0);
            objective.forward(&zs[0], &zs[1]).expect("forward").loss
        };
        loss_of().backward();
        let value = || tch::no_grad(|| loss_of().double_value(&[]));
        let label = format!("{kind:?} {similarity:?} normalize={normalize}");
        assert_close_to_fd(
            &format!("{label} dL/dz"),
            &z.grad(),
            &finite_differences(&z, &value),
        );
        for (name, p) in &params {
            assert_close_to_fd(
                &format!("{label} dL/d{name}"),
                &p.grad(),
                &finite_differences(p, &value),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Invariances.

fn loss_value(objective: &Objective, z1: &Tensor, z2: &Tensor) -> f64 {
    objective
        .forward(z1, z2)
        .expect("forward")
        .loss
        .double_value(&[])
}

/// Cosine and normalised similarities ignore the scale of each projection, whatever the loss;
/// the unnormalised dot product does not (so the test can tell).
#[test]
fn normalised_similarities_ignore_the_scale_of_z() {
    let (z1, z2) = (
        tensor(&random_rows(300, N, D)),
        tensor(&random_rows(301, N, D)),
    );
    // A positive factor per row, from 0.1 to 10.
    let scale = |seed| (tensor(&random_rows(seed, N, 1)) * (2.0f64.ln() * 3.3)).exp();
    let (s1, s2) = (scale(302), scale(303));
    for kind in LOSSES {
        for (similarity, normalize) in [
            (SimilarityKind::Cosine, false),
            (SimilarityKind::Dot, true),
            (SimilarityKind::Bilinear, true),
            (SimilarityKind::Concat, true),
            (SimilarityKind::Dot, false),
        ] {
            let (_vs, objective, _) = objective(kind, similarity, normalize, 0.5, 1.0);
            let a = loss_value(&objective, &z1, &z2);
            let b = loss_value(&objective, &(&z1 * &s1), &(&z2 * &s2));
            let invariant = (a - b).abs() <= 1e-12 * a.abs();
            let expected = similarity == SimilarityKind::Cosine || normalize;
            assert_eq!(
                invariant, expected,
                "{kind:?} {similarity:?} normalize={normalize}: {a} vs {b}"
            );
        }
    }
}

/// Reordering the images (the same permutation for both views), or swapping the two views,
/// only reorders the anchors: the mean loss is unchanged, for every loss and similarity.
#[test]
fn losses_ignore_the_order_of_the_batch() {
    let (z1, z2) = (
        tensor(&random_rows(400, N, D)),
        tensor(&random_rows(401, N, D)),
    );
    let perm = Tensor::from_slice(&[2i64, 0, 3, 1]);
    for (kind, similarity, normalize) in every_combination() {
        let (_vs, objective, _) = objective(kind, similarity, normalize, 0.5, 1.0);
        let a = loss_value(&objective, &z1, &z2);
        let permuted = loss_value(
            &objective,
            &z1.index_select(0, &perm),
            &z2.index_select(0, &perm),
        );
        let swapped = loss_value(&objective, &z2, &z1);
        for b in [permuted, swapped] {
            assert!(
                (a - b).abs() <= 1e-12 * a.abs(),
                "{kind:?} {similarity:?} normalize={normalize}: {a} vs {b}"
            );
        }
    }
}
