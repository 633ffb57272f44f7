//! How many singular directions of each target matrix are frozen.
//!
//! `fixed`: k = ⌊ratio · min(m, n)⌋ for every matrix.
//! `adaptive` (the paper's rule): layer importance I_l is the mean cosine similarity
//! between a layer's input and output hidden states over samples of the previous task.
//! The raw similarities of all layers are min-max normalised to [0, 1] (every layer equal
//! gives 0.5 everywhere), then r_l = mrr + I_l · (trr − mrr) and k = ⌊r_l · min(m, n)⌋.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase")]
pub enum RankPolicy {
    /// Fraction of min(m, n) frozen.
    Fixed { ratio: f64 },
    /// Minimum and target rank ratios (the paper's mrr = 0.1, trr = 0.8).
    Adaptive { mrr: f64, trr: f64 },
}

impl Default for RankPolicy {
    fn default() -> Self {
        RankPolicy::Adaptive { mrr: 0.1, trr: 0.8 }
    }
}

impl RankPolicy {
    /// A fixed policy from the fraction that stays trainable (mini_trainer's `unfreeze_rank_ratio`).
    pub fn from_unfreeze_ratio(unfreeze: f64) -> Result<RankPolicy> {
        if !(0.0..=1.0).contains(&unfreeze) {
            bail!("unfreeze_rank_ratio must lie in [0, 1], got {unfreeze}");
        }
        Ok(RankPolicy::Fixed { ratio: 1.0 - unfreeze })
    }

    pub fn validate(&self) -> Result<()> {
        match *self {
            RankPolicy::Fixed { ratio } if !(0.0..=1.0).contains(&ratio) => {
                bail!("--rank-ratio must lie in [0, 1], got {ratio}")
            }
            RankPolicy::Adaptive { mrr, trr } if !(0.0 <= mrr && mrr <= trr && trr <= 1.0) => {
                bail!("adaptive ranks need 0 <= mrr <= trr <= 1, got mrr {mrr}, trr {trr}")
            }
            _ => Ok(()),
        }
    }

    /// The frozen ratio r_l of a layer with normalised importance `importance` in [0, 1].
    pub fn ratio(&self, importance: f64) -> f64 {
        match *self {
            RankPolicy::Fixed { ratio } => ratio,
            RankPolicy::Adaptive { mrr, trr } => mrr + importance.clamp(0.0, 1.0) * (trr - mrr),
        }
    }

    /// k for an m×n matrix of a layer with normalised importance `importance`.
    pub fn frozen_rank(&self, importance: f64, m: usize, n: usize) -> usize {
        let r = m.min(n);
        ((self.ratio(importance) * r as f64 + 1e-9).floor() as usize).min(r)
    }
}

/// Min-max normalisation of raw layer similarities to [0, 1]; equal values give 0.5.
pub fn normalise_importance(raw: &[f64]) -> Vec<f64> {
    let lo = raw.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    raw.iter().map(|&x| if hi - lo > 1e-12 { (x - lo) / (hi - lo) } else { 0.5 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_rank_follows_the_papers_rule() {
        let p = RankPolicy::default();
        assert_eq!(p.frozen_rank(0.0, 512, 2048), 51); // 0.1 · 512
        assert_eq!(p.frozen_rank(1.0, 512, 512), 409); // 0.8 · 512
        assert_eq!(p.frozen_rank(0.5, 100, 40), 18); // 0.45 · 40
    }

    #[test]
    fn fixed_ratio_and_unfreeze_spelling_agree() {
        let a = RankPolicy::Fixed { ratio: 0.75 };
        let b = RankPolicy::from_unfreeze_ratio(0.25).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.frozen_rank(0.3, 32, 64), 24);
        assert!(RankPolicy::from_unfreeze_ratio(1.5).is_err());
        assert!(RankPolicy::Fixed { ratio: -0.1 }.validate().is_err());
        assert!(RankPolicy::Adaptive { mrr: 0.9, trr: 0.1 }.validate().is_err());
    }

    #[test]
    fn importance_is_min_max_normalised() {
        assert_eq!(normalise_importance(&[0.25, 0.5, 0.75]), vec![0.0, 0.5, 1.0]);
        assert_eq!(normalise_importance(&[0.7, 0.7]), vec![0.5, 0.5]);
    }
}
