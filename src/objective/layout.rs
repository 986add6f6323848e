//! Where, in a matrix of similarities, each anchor's self pair and positive sit.
//!
//! On one device the 2N views of a batch are both the anchors (rows) and the candidates
//! (columns): `scores [2N, 2N]`, view i's positive is view i+N (i < N) or i−N, its self pair
//! the diagonal ([`Layout::square`]). With global negatives (SimCLR, Section 2: "we aggregate
//! ... over all devices"), rank r's 2N views are the anchors and the 2N views of every rank,
//! all-gathered in rank order, the candidates: `scores [2N, 2N·W]`, and anchor i's self pair and
//! positive are the same as on one device, shifted by r·2N columns ([`Layout::global`]). The
//! loss over all ranks' anchors is then the loss of one device holding the global batch (its
//! views in another order, which a mean over anchors does not see).
//!
//! # Shapes
//! anchors M = 2N, candidates K (2N or 2N·W); index vectors `[M]` i64, masks `[M, K]` bool.
use tch::{Device, Kind, Tensor};

/// The self and positive column of every anchor row.
#[derive(Debug)]
pub struct Layout {
    self_cols: Tensor,
    positive_cols: Tensor,
}

impl Layout {
    /// One device: `views` = 2N anchors against the same 2N candidates.
    pub fn square(views: i64, device: Device) -> Layout {
        Layout::global(views, 0, device)
    }

    /// Rank `rank`'s `views` = 2N anchors against every rank's views gathered in rank order
    /// (rank r's views at columns r·2N .. r·2N + 2N).
    pub fn global(views: i64, rank: usize, device: Device) -> Layout {
        let offset = rank as i64 * views;
        let local = Tensor::arange(views, (Kind::Int64, device)); // [2N]
        let positives = (&local + views / 2).remainder(views); // [2N]
        Layout {
            self_cols: local + offset,
            positive_cols: positives + offset,
        }
    }

    /// Each anchor's positive column.
    ///
    /// # Shapes
    /// -> `[M]` i64.
    pub fn positive_cols(&self) -> &Tensor {
        &self.positive_cols
    }

    /// True at each anchor's self pair, which takes no part in any loss.
    ///
    /// # Shapes
    /// -> `[M, K]` bool.
    pub fn self_mask(&self, candidates: i64) -> Tensor {
        Self::one_per_row(&self.self_cols, candidates)
    }

    /// True at each anchor's positive.
    ///
    /// # Shapes
    /// -> `[M, K]` bool.
    pub fn positive_mask(&self, candidates: i64) -> Tensor {
        Self::one_per_row(&self.positive_cols, candidates)
    }

    /// Each anchor's similarity to its positive.
    ///
    /// # Shapes
    /// `scores [M, K]` -> `[M, 1]`.
    pub fn positive_scores(&self, scores: &Tensor) -> Tensor {
        scores.gather(1, &self.positive_cols.unsqueeze(1), false)
    }

    /// `[M, K]`, true at (i, cols[i]).
    fn one_per_row(cols: &Tensor, candidates: i64) -> Tensor {
        let columns = Tensor::arange(candidates, (Kind::Int64, cols.device())).unsqueeze(0); // [1, K]
        columns.eq_tensor(&cols.unsqueeze(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On one device the self pairs are the diagonal and the positives the two off-diagonal
    /// blocks' diagonals; rank 1 of a global layout is the same, shifted by 2N columns.
    #[test]
    fn square_and_shifted_masks() {
        let square = Layout::square(4, Device::Cpu);
        assert!(square
            .self_mask(4)
            .equal(&Tensor::eye(4, (Kind::Bool, Device::Cpu))));
        assert_eq!(
            Vec::<i64>::try_from(square.positive_cols()).ok(),
            Some(vec![2, 3, 0, 1])
        );
        let global = Layout::global(4, 1, Device::Cpu);
        let shifted = global.positive_mask(12).narrow(1, 4, 4);
        assert!(shifted.equal(&square.positive_mask(4)));
        assert_eq!(
            global.positive_mask(12).sum(Kind::Int64).int64_value(&[]),
            4
        );
    }
}
