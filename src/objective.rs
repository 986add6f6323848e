//! The contrastive objective: NT-Xent, the normalised temperature-scaled cross-entropy of
//! SimCLR (Chen et al. 2020, Section 2.1, Algorithm 1).
//!
//! For 2N views where views k and k+N come from the same image, with s(u, v) the cosine
//! similarity u·v / (|u||v|):
//!
//! ℓ(i, j) = −log( exp(s(z_i, z_j)/τ) / Σ_{k≠i} exp(s(z_i, z_k)/τ) ),  L = 1/(2N) Σ_i ℓ(i, pos(i))
//!
//! The "k ≠ i" is essential: the self-similarity s(z_i, z_i)/τ = 1/τ is the largest logit in
//! every row and must be masked out of the denominator (a bug several implementations shipped).
//! The loss is computed in f32 whatever the precision of z.
use tch::{Kind, Tensor};

/// The loss and what is needed to read its quality (contrastive accuracy) at logging points.
#[derive(Debug)]
pub struct Contrastive {
    /// Mean NT-Xent over the 2N anchors (scalar, f32).
    pub loss: Tensor,
    /// Fraction of anchors whose most similar other view is their positive (scalar, f32).
    pub accuracy: Tensor,
}

/// NT-Xent of two batches of projections, `z1[k]` and `z2[k]` being views of image k.
///
/// # Shapes
/// `z1`, `z2`: `[N, D]` -> scalars. N >= 1 (then the positive is the only candidate).
pub fn nt_xent(z1: &Tensor, z2: &Tensor, temperature: f64) -> Contrastive {
    let n = z1.size()[0];
    let z = Tensor::cat(&[z1, z2], 0).to_kind(Kind::Float); // [2N, D]
    let z = &z / z.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12); // unit rows
    let logits = z.matmul(&z.tr()) / temperature; // [2N, 2N]
    let self_mask = Tensor::eye(2 * n, (Kind::Bool, z.device())); // [2N, 2N]
    let logits = logits.masked_fill(&self_mask, f64::NEG_INFINITY);
    // Anchor i's positive is i+N for i < N and i-N otherwise.
    let positives = (Tensor::arange(2 * n, (Kind::Int64, z.device())) + n).remainder(2 * n); // [2N]
    let loss = logits.cross_entropy_for_logits(&positives);
    let accuracy = logits
        .argmax(1, false)
        .eq_tensor(&positives)
        .to_kind(Kind::Float)
        .mean(Kind::Float);
    Contrastive { loss, accuracy }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(rows: &[[f64; 2]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    /// Two images, unit vectors at right angles; each view's positive is identical to it.
    /// Row i: logits to the 3 others are 1/τ (positive), 0 and 0 (the negatives), so
    /// ℓ = −log(e^{1/τ} / (e^{1/τ} + 2)). Without the self-mask the denominator would gain
    /// another e^{1/τ}.
    #[test]
    fn hand_computed_example_with_masking() {
        let z1 = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let z2 = t(&[[2.0, 0.0], [0.0, 3.0]]);
        let tau = 0.5;
        let out = nt_xent(&z1, &z2, tau);
        let e = (1.0f64 / tau).exp();
        let expected = -(e / (e + 2.0)).ln();
        assert!((out.loss.double_value(&[]) - expected).abs() < 1e-6);
        assert_eq!(out.accuracy.double_value(&[]), 1.0);
    }

    /// When every embedding is equal, all 2N-1 candidates tie: L = ln(2N - 1).
    #[test]
    fn equal_embeddings_give_log_of_candidates() {
        let n = 5;
        let z = Tensor::ones([n, 8], (Kind::Float, Device::Cpu));
        let out = nt_xent(&z, &z, 0.1);
        let expected = ((2 * n - 1) as f64).ln();
        assert!((out.loss.double_value(&[]) - expected).abs() < 1e-5);
    }

    /// Cosine similarity makes the loss invariant to the scale of z.
    #[test]
    fn invariant_to_rescaling() {
        let z1 = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
        let z2 = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
        let a = nt_xent(&z1, &z2, 0.2).loss.double_value(&[]);
        let b = nt_xent(&(&z1 * 7.0), &(&z2 * 0.3), 0.2)
            .loss
            .double_value(&[]);
        assert!((a - b).abs() < 1e-5);
    }
}
