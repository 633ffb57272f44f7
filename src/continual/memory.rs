//! The memory plan of a run, made before any work: what the weights, their gradients, the AdamW
//! moments, the frozen subspaces and a step's activations take, and the largest single buffer
//! (which must fit the adapter's binding limit). Printed at the start (`RUST_LOG=info`) and kept
//! in run.json beside the peak the buffer pool really reached.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::model::Model;
use crate::subspace::targets::is_target;
use crate::subspace::{Mode, RankPolicy};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPlan {
    pub weights: u64,
    pub gradients: u64,
    /// AdamW's two moments of every parameter.
    pub optimizer: u64,
    /// U_k and V_k (or their complements) of every target, at the policy's largest ratio.
    pub subspaces: u64,
    /// A training step's activations at the largest batch of the run.
    pub activations: u64,
    /// The optimizer step's scratch: each target's projected gradient and update, and the
    /// projection's products.
    pub optimizer_scratch: u64,
    pub total: u64,
    /// The largest single buffer and what it holds.
    pub largest_buffer: u64,
    pub largest_buffer_holds: String,
}

/// The frozen bases a target of `m`×`n` keeps at frozen rank `k` (see
/// [`crate::subspace::project::FrozenSubspace::from_svd`]): per side, k columns, or the
/// n − k columns of the complement where strict mode finds that smaller.
fn subspace_elements(m: usize, n: usize, k: usize, mode: Mode) -> u64 {
    let r = m.min(n);
    let side = |dim: usize| {
        let columns = if mode == Mode::Strict && dim == r && 2 * k > dim { dim - k } else { k };
        (dim * columns) as u64
    };
    side(m) + side(n)
}

impl MemoryPlan {
    /// The plan of training `model` in batches of `batch_size` pairs of at most these
    /// lengths; `subspaces_of` gives the targets, policy and mode of an OSFT run.
    pub fn new(
        model: &dyn Model,
        batch_size: usize,
        source_len: usize,
        target_len: usize,
        subspaces_of: Option<(&[String], RankPolicy, Mode)>,
    ) -> MemoryPlan {
        let weights: u64 = model.params().values().map(|p| p.byte_size()).sum();
        let (mut subspaces, mut optimizer_scratch) = (0, 0);
        if let Some((targets, policy, mode)) = subspaces_of {
            // The most any matrix may have frozen under the policy.
            let most = RankPolicy::Fixed { ratio: policy.max_ratio() };
            for (name, p) in model.params() {
                if let (&[m, n], true) = (p.shape(), is_target(targets, name)) {
                    let k = most.frozen_rank(0.0, m, n, 1);
                    let basis = subspace_elements(m, n, k, mode);
                    subspaces += 4 * basis;
                    // Projected gradient and update, and per projection a product as large
                    // as the bases (measured from the pool).
                    optimizer_scratch += 4 * (2 * (m * n) as u64 + basis);
                }
            }
        }
        let activations = model.activation_bytes(batch_size, source_len, target_len);
        let (largest_buffer, largest_buffer_holds) =
            model.step_buffers(batch_size, source_len, target_len).into_iter().max_by_key(|b| b.0).unwrap_or_default();
        MemoryPlan {
            weights,
            gradients: weights,
            optimizer: 2 * weights,
            subspaces,
            activations,
            optimizer_scratch,
            total: 4 * weights + subspaces + activations + optimizer_scratch,
            largest_buffer,
            largest_buffer_holds,
        }
    }

    /// Every part on one line, in MiB.
    pub fn describe(&self) -> String {
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
        format!(
            "weights {}, gradients {}, AdamW moments {}, frozen subspaces {}, activations {}, optimizer scratch {}: total {}; largest buffer {} ({})",
            mib(self.weights),
            mib(self.gradients),
            mib(self.optimizer),
            mib(self.subspaces),
            mib(self.activations),
            mib(self.optimizer_scratch),
            mib(self.total),
            mib(self.largest_buffer),
            self.largest_buffer_holds
        )
    }
}

/// Records the plan and the pool's measured peak under "memory" in `dir/run.json`.
pub fn record(dir: &Path, plan: &MemoryPlan, peak_bytes_in_use: Option<u64>) -> Result<()> {
    let mut memory = serde_json::to_value(plan)?;
    memory["peak_bytes_in_use"] = serde_json::json!(peak_bytes_in_use);
    super::run_dir::record(dir, "memory", memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_mode_keeps_the_smaller_of_a_basis_and_its_complement() {
        // 8x4 at k = 3: the left side (8 rows) keeps U_k (8x3); the right side (r = 4) keeps
        // its 1-column complement in strict mode, V_k (4x3) in paper mode.
        assert_eq!(subspace_elements(8, 4, 3, Mode::Strict), 8 * 3 + 4);
        assert_eq!(subspace_elements(8, 4, 3, Mode::Paper), 8 * 3 + 4 * 3);
        assert_eq!(subspace_elements(8, 4, 0, Mode::Strict), 0);
    }
}
