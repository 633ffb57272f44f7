//! Continual-learning metrics over the accuracy matrix R, where `R[i][j]` is the accuracy
//! on task j after training task i (rows: after each task; columns: tasks of the stream).
//!
//! AA  = mean of the last row.
//! BWT = mean over j < T of `R[T][j] − R[j][j]` (negative: forgetting).
//! FWT = mean over j > 0 of `R[j−1][j] − b[j]`, with b the accuracies before any training.
//! `forgetting[j]` = max over i < T of `R[i][j] − R[T][j]`, for j < T.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub aa: f64,
    pub bwt: f64,
    pub fwt: Option<f64>,
    pub forgetting: Vec<f64>,
}

/// Metrics of a square accuracy matrix (one row per trained task), with the optional
/// row measured before the first task.
pub fn metrics(r: &[Vec<f64>], before: Option<&[f64]>) -> Metrics {
    let t = r.len();
    assert!(t > 0 && r.iter().all(|row| row.len() == t), "the accuracy matrix must be square and non-empty");
    let last = &r[t - 1];
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let aa = mean(last);
    let bwt = mean(&(0..t - 1).map(|j| last[j] - r[j][j]).collect::<Vec<_>>());
    let fwt = before.map(|b| mean(&(1..t).map(|j| r[j - 1][j] - b[j]).collect::<Vec<_>>()));
    let forgetting =
        (0..t - 1).map(|j| (0..t - 1).map(|i| r[i][j]).fold(f64::NEG_INFINITY, f64::max) - last[j]).collect();
    Metrics { aa, bwt, fwt, forgetting }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textbook_example() {
        let r = vec![vec![0.9, 0.1, 0.0], vec![0.5, 0.8, 0.2], vec![0.3, 0.6, 0.7]];
        let m = metrics(&r, Some(&[0.0, 0.05, 0.1]));
        assert!((m.aa - (0.3 + 0.6 + 0.7) / 3.0).abs() < 1e-12);
        assert!((m.bwt - ((0.3 - 0.9) + (0.6 - 0.8)) / 2.0).abs() < 1e-12);
        assert!((m.fwt.unwrap() - ((0.1 - 0.05) + (0.2 - 0.1)) / 2.0).abs() < 1e-12);
        assert_eq!(m.forgetting.len(), 2);
        assert!((m.forgetting[0] - 0.6).abs() < 1e-12 && (m.forgetting[1] - 0.2).abs() < 1e-12);
    }

    #[test]
    fn single_task_has_no_backward_transfer() {
        let m = metrics(&[vec![0.4]], None);
        assert_eq!((m.aa, m.bwt, m.fwt), (0.4, 0.0, None));
        assert!(m.forgetting.is_empty());
    }
}
