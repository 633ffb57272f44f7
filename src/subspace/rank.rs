//! How many singular directions of each target matrix are frozen (k of an m × n matrix,
//! d = min(m, n)).
//!
//! - `official`: the adaptive rule of the official implementation (Red-Hat-AI-Innovation-Team/
//!   orthogonal-subspace-learning, `notebooks/finetune_svd.py`, `auto_generate_target_svd_config`
//!   with importance). Each matrix's importance I is the mean cosine between the first d features
//!   of its input and of its output on samples of the previous task; divided by the mean over
//!   all targets, I_n = I / (mean + 1e-8); k = round(d·mrr + I_n·(d·trr − d·mrr)), clamped to
//!   [1, d]. The official values are mrr = 0.5, trr = 1: a matrix of average importance is
//!   frozen whole, and only those below the mean keep trainable directions.
//! - `official-schedule`: the released T5 scripts (`run_finetuning.sh`): the n-th decomposition
//!   of a run freezes k = ⌊n·step·max(m, n)⌋, clamped to d, with step = 0.07.
//! - `fixed`: k = ⌊ratio·d⌋ for every matrix.
//! - `block-minmax`: sculpt's earlier variant: importance per block (cosine of the residual
//!   stream entering and leaving it), min-max normalised across blocks to [0, 1] (all equal:
//!   0.5), k = ⌊(mrr + I·(trr − mrr))·d⌋ with mrr = 0.1, trr = 0.8; a target outside every
//!   block (an LM head) gets importance 1, the most frozen.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum RankPolicy {
    /// Fraction of min(m, n) frozen.
    Fixed { ratio: f64 },
    /// The official per-matrix rule; mrr and trr are fractions of d.
    Official { mrr: f64, trr: f64 },
    /// The released scripts' share growing by `step` of max(m, n) per decomposition.
    OfficialSchedule { step: f64 },
    /// sculpt's per-block, min-max normalised variant.
    #[serde(alias = "adaptive")]
    BlockMinmax { mrr: f64, trr: f64 },
}

/// Which importance a policy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportanceKind {
    None,
    PerMatrix,
    PerBlock,
}

impl RankPolicy {
    pub const OFFICIAL: RankPolicy = RankPolicy::Official { mrr: 0.5, trr: 1.0 };
    pub const OFFICIAL_SCHEDULE: RankPolicy = RankPolicy::OfficialSchedule { step: 0.07 };
    pub const BLOCK_MINMAX: RankPolicy = RankPolicy::BlockMinmax { mrr: 0.1, trr: 0.8 };

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
            RankPolicy::Official { mrr, trr } | RankPolicy::BlockMinmax { mrr, trr }
                if !(0.0 <= mrr && mrr <= trr && trr <= 1.0) =>
            {
                bail!("--mrr and --trr need 0 <= mrr <= trr <= 1, got mrr {mrr}, trr {trr}")
            }
            RankPolicy::OfficialSchedule { step } if !(step > 0.0 && step <= 1.0) => {
                bail!("--schedule-step must lie in (0, 1], got {step}")
            }
            _ => Ok(()),
        }
    }

    pub fn importance(&self) -> ImportanceKind {
        match self {
            RankPolicy::Official { .. } => ImportanceKind::PerMatrix,
            RankPolicy::BlockMinmax { .. } => ImportanceKind::PerBlock,
            RankPolicy::Fixed { .. } | RankPolicy::OfficialSchedule { .. } => ImportanceKind::None,
        }
    }

    /// k for an m×n matrix with normalised importance `importance` (official: I / mean;
    /// block-minmax: in [0, 1]; ignored by the others) at the `decomposition`-th (1-based)
    /// decomposition of the run.
    pub fn frozen_rank(&self, importance: f64, m: usize, n: usize, decomposition: usize) -> usize {
        let d = m.min(n);
        let floor = |x: f64| (x + 1e-9).floor().max(0.0) as usize;
        match *self {
            RankPolicy::Fixed { ratio } => floor(ratio * d as f64).min(d),
            RankPolicy::BlockMinmax { mrr, trr } => {
                floor((mrr + importance.clamp(0.0, 1.0) * (trr - mrr)) * d as f64).min(d)
            }
            RankPolicy::Official { mrr, trr } => {
                let (low, high) = (mrr * d as f64, trr * d as f64);
                // Python's round(): halves go to the even neighbour.
                let k = (low + importance * (high - low)).round_ties_even();
                k.clamp(1.0, d as f64) as usize
            }
            RankPolicy::OfficialSchedule { step } => floor(decomposition as f64 * step * m.max(n) as f64).min(d),
        }
    }

    /// The largest fraction of d any matrix may have frozen (for the memory plan).
    pub fn max_ratio(&self) -> f64 {
        match *self {
            RankPolicy::Fixed { ratio } => ratio,
            RankPolicy::BlockMinmax { trr, .. } => trr,
            RankPolicy::Official { .. } | RankPolicy::OfficialSchedule { .. } => 1.0,
        }
    }
}

/// The official normalisation: every matrix's importance divided by the mean over all targets
/// (plus 1e-8, as the official code adds).
pub fn normalise_by_mean(raw: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mean = raw.values().sum::<f64>() / raw.len().max(1) as f64;
    raw.iter().map(|(name, &i)| (name.clone(), i / (mean + 1e-8))).collect()
}

/// Min-max normalisation of raw block similarities to [0, 1]; equal values give 0.5.
pub fn normalise_min_max(raw: &[f64]) -> Vec<f64> {
    let lo = raw.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    raw.iter().map(|&x| if hi - lo > 1e-12 { (x - lo) / (hi - lo) } else { 0.5 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_minmax_rank_interpolates_between_mrr_and_trr() {
        let p = RankPolicy::BLOCK_MINMAX;
        assert_eq!(p.frozen_rank(0.0, 512, 2048, 1), 51); // 0.1 · 512
        assert_eq!(p.frozen_rank(1.0, 512, 512, 1), 409); // 0.8 · 512
        assert_eq!(p.frozen_rank(0.5, 100, 40, 1), 18); // 0.45 · 40
    }

    #[test]
    fn official_rule_freezes_an_average_matrix_whole() {
        let p = RankPolicy::OFFICIAL;
        assert_eq!(p.frozen_rank(1.0, 64, 256, 1), 64);
        assert_eq!(p.frozen_rank(1.7, 64, 256, 1), 64); // clamped to d
        assert_eq!(p.frozen_rank(0.5, 64, 256, 1), 48); // 32 + 0.5 · 32
        assert_eq!(p.frozen_rank(-3.0, 64, 256, 1), 1); // clamped to 1
        assert_eq!(p.frozen_rank(0.0, 5, 5, 1), 2); // round(2.5) = 2, as Python rounds
        assert_eq!(p.frozen_rank(0.2, 5, 5, 1), 3); // round(3.0)
    }

    #[test]
    fn official_schedule_grows_with_each_decomposition() {
        let p = RankPolicy::OFFICIAL_SCHEDULE;
        assert_eq!(p.frozen_rank(0.0, 1024, 4096, 1), 286); // ⌊0.07 · 4096⌋
        assert_eq!(p.frozen_rank(0.0, 1024, 4096, 3), 860); // ⌊0.21 · 4096⌋
        assert_eq!(p.frozen_rank(0.0, 1024, 4096, 4), 1024); // clamped to d
    }

    #[test]
    fn fixed_ratio_and_unfreeze_spelling_agree() {
        let a = RankPolicy::Fixed { ratio: 0.75 };
        let b = RankPolicy::from_unfreeze_ratio(0.25).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.frozen_rank(0.3, 32, 64, 2), 24);
        assert!(RankPolicy::from_unfreeze_ratio(1.5).is_err());
        assert!(RankPolicy::Fixed { ratio: -0.1 }.validate().is_err());
        assert!(RankPolicy::BlockMinmax { mrr: 0.9, trr: 0.1 }.validate().is_err());
        assert!(RankPolicy::OfficialSchedule { step: 0.0 }.validate().is_err());
    }

    #[test]
    fn normalisations() {
        assert_eq!(normalise_min_max(&[0.25, 0.5, 0.75]), vec![0.0, 0.5, 1.0]);
        assert_eq!(normalise_min_max(&[0.7, 0.7]), vec![0.5, 0.5]);
        let raw: BTreeMap<String, f64> = [("a".to_string(), 0.2), ("b".to_string(), 0.6)].into();
        let n = normalise_by_mean(&raw);
        assert!((n["a"] - 0.5).abs() < 1e-7 && (n["b"] - 1.5).abs() < 1e-7);
    }

    #[test]
    fn policies_keep_their_names_in_json_and_old_runs_read_as_block_minmax() {
        let json = serde_json::to_string(&RankPolicy::OFFICIAL_SCHEDULE).unwrap();
        assert_eq!(json, r#"{"policy":"official-schedule","step":0.07}"#);
        let old: RankPolicy = serde_json::from_str(r#"{"policy":"adaptive","mrr":0.1,"trr":0.8}"#).unwrap();
        assert_eq!(old, RankPolicy::BLOCK_MINMAX);
    }
}
