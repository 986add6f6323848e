//! Weighted k-nearest-neighbour classification on L2-normalised representations, the monitor
//! used by lightly, solo-learn and InstDisc (Wu et al. 2018): the train split is the feature
//! bank, each test image votes with its k most similar bank entries, weighted by exp(sim/T).
//! Cheap enough to run during training, and a faithful trend of linear-probe accuracy.
use crate::data::loader::EvalTransform;
use crate::data::Dataset;
use crate::eval::features::representations;
use crate::model::resnet::ResNet;
use tch::{Device, Kind, Tensor};

/// Temperature of the vote weights (0.1, as in InstDisc and lightly).
pub const KNN_TEMPERATURE: f64 = 0.1;
const QUERY_BATCH: i64 = 256;

/// Unit-norm representations h of every image (evaluation transform, eval mode).
///
/// # Shapes
/// -> (features `[N, D]` f32, labels `[N]` i64), on `device`.
pub fn features(
    encoder: &ResNet,
    set: &dyn Dataset,
    transform: EvalTransform,
    device: Device,
) -> (Tensor, Tensor) {
    let split = representations(encoder, set, transform, device, false);
    (unit_rows(&split.features), split.labels)
}

/// Each row of `h` scaled to unit L2 norm (zero rows stay zero).
pub fn unit_rows(h: &Tensor) -> Tensor {
    let h = h.to_kind(Kind::Float);
    &h / h.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
}

/// Top-1 accuracy of weighted kNN: each query takes the `k` most cosine-similar bank rows,
/// each voting for its class with weight exp(sim / T).
///
/// # Shapes
/// `bank [N, D]`, `bank_labels [N]`, `queries [M, D]`, `query_labels [M]` (rows unit-norm).
pub fn weighted_knn_top1(
    bank: &Tensor,
    bank_labels: &Tensor,
    queries: &Tensor,
    query_labels: &Tensor,
    num_classes: i64,
    k: i64,
    temperature: f64,
) -> f64 {
    let k = k.min(bank.size()[0]);
    let mut correct = 0i64;
    for (q, y) in queries
        .split(QUERY_BATCH, 0)
        .iter()
        .zip(query_labels.split(QUERY_BATCH, 0))
    {
        let sim = q.matmul(&bank.tr()); // [m, N]
        let (top_sim, top_idx) = sim.topk(k, 1, true, true); // [m, k]
        let top_labels = bank_labels
            .index_select(0, &top_idx.flatten(0, -1))
            .view_as(&top_idx); // [m, k]
        let weights = (top_sim / temperature).exp(); // [m, k]
        let votes = Tensor::zeros([q.size()[0], num_classes], (Kind::Float, q.device()))
            .scatter_add(1, &top_labels, &weights); // [m, C]
        correct += votes
            .argmax(1, false)
            .eq_tensor(&y)
            .sum(Kind::Int64)
            .int64_value(&[]);
    }
    correct as f64 / queries.size()[0].max(1) as f64
}

/// kNN top-1 of `encoder`'s representation: `train` as the bank, `test` queried.
pub fn monitor(
    encoder: &ResNet,
    train: &dyn Dataset,
    test: &dyn Dataset,
    transform: EvalTransform,
    k: usize,
    device: Device,
) -> f64 {
    let (bank, bank_labels) = features(encoder, train, transform, device);
    let (queries, query_labels) = features(encoder, test, transform, device);
    weighted_knn_top1(
        &bank,
        &bank_labels,
        &queries,
        &query_labels,
        train.num_classes() as i64,
        k as i64,
        KNN_TEMPERATURE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let t = Tensor::from_slice(&flat).view([rows.len() as i64, 2]);
        &t / t.norm_scalaropt_dim(2, [1], true)
    }

    #[test]
    fn separable_clusters_are_classified() {
        let bank = unit(&[[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]);
        let bank_labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
        let queries = unit(&[[1.0, 0.0], [0.0, 1.0]]);
        let acc = weighted_knn_top1(
            &bank,
            &bank_labels,
            &queries,
            &Tensor::from_slice(&[0i64, 1]),
            2,
            2,
            0.1,
        );
        assert_eq!(acc, 1.0);
    }

    /// The weights matter: one very close neighbour of class 1 outvotes two far ones of class 0.
    #[test]
    fn votes_are_similarity_weighted() {
        let bank = unit(&[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]);
        let bank_labels = Tensor::from_slice(&[1i64, 0, 0]);
        let queries = unit(&[[1.0, 0.05]]);
        let acc = weighted_knn_top1(
            &bank,
            &bank_labels,
            &queries,
            &Tensor::from_slice(&[1i64]),
            2,
            3,
            0.1,
        );
        assert_eq!(acc, 1.0);
    }
}
