//! The frozen subspaces of every target matrix of a model, built at a task boundary by
//! one batched GPU SVD per matrix shape, and used as the optimizer's update filter.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::project::{project, FrozenSubspace, Mode};
use super::rank::RankPolicy;
use super::targets::is_target;
use crate::kernels::jacobi::{max_batch, svd_batched};
use crate::optim::UpdateFilter;
use crate::tensor::Tensor;

/// What the rank policy chose for one matrix (logged and written to the results).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankChoice {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub importance: f64,
    pub k: usize,
}

pub struct SubspaceSet {
    pub mode: Mode,
    pub policy: RankPolicy,
    pub frozen: BTreeMap<String, FrozenSubspace>,
    pub choices: Vec<RankChoice>,
}

impl SubspaceSet {
    /// An empty set (subspaces are added with [`SubspaceSet::insert`]).
    pub fn new(mode: Mode, policy: RankPolicy) -> SubspaceSet {
        SubspaceSet { mode, policy, frozen: BTreeMap::new(), choices: Vec::new() }
    }

    pub fn insert(&mut self, subspace: FrozenSubspace, choice: RankChoice) {
        log::info!(
            "subspace {} {}x{}: importance {:.3}, k = {}",
            choice.name,
            choice.rows,
            choice.cols,
            choice.importance,
            choice.k
        );
        self.frozen.insert(choice.name.clone(), subspace);
        self.choices.push(choice);
    }

    /// Decomposes every 2-D parameter whose name matches `targets`; `importance(name)` gives
    /// the matrix's normalised importance for the policies that read one, and `decomposition`
    /// counts the run's decompositions (1 at the first) for the growing schedule.
    pub fn build(
        params: &BTreeMap<String, Tensor>,
        targets: &[String],
        policy: RankPolicy,
        mode: Mode,
        importance: impl Fn(&str) -> f64,
        decomposition: usize,
    ) -> Result<SubspaceSet> {
        policy.validate()?;
        let mut by_shape: BTreeMap<(usize, usize), Vec<&String>> = BTreeMap::new();
        for (name, p) in params {
            if let &[m, n] = p.shape() {
                if is_target(targets, name) {
                    by_shape.entry((m, n)).or_default().push(name);
                }
            }
        }
        if by_shape.is_empty() {
            bail!("no parameter matches the target patterns {targets:?}");
        }
        let mut set = SubspaceSet::new(mode, policy);
        for ((m, n), all) in by_shape {
            let gpu = params[all[0]].gpu();
            // As many matrices per decomposition as the adapter's buffers hold.
            for names in all.chunks(max_batch(gpu, m, n)?) {
                let mut stacked = Vec::with_capacity(names.len() * m * n);
                for name in names {
                    stacked.extend(params[*name].to_f32()?);
                }
                let svd = svd_batched(&Tensor::from_f32(gpu, &[names.len(), m, n], &stacked)?)?;
                let (u, v) = (svd.u.to_f32()?, svd.v.to_f32()?);
                let r = m.min(n);
                for (i, name) in names.iter().enumerate() {
                    let imp = importance(name);
                    let k = policy.frozen_rank(imp, m, n, decomposition);
                    let (ui, vi) = (&u[i * m * r..(i + 1) * m * r], &v[i * n * r..(i + 1) * n * r]);
                    let subspace = FrozenSubspace::from_svd(gpu, (m, n), ui, vi, k, mode)?;
                    set.insert(subspace, RankChoice { name: name.to_string(), rows: m, cols: n, importance: imp, k });
                }
            }
        }
        Ok(set)
    }
}

impl UpdateFilter for SubspaceSet {
    fn filters(&self, name: &str) -> bool {
        self.frozen.contains_key(name)
    }
    fn filter(&self, name: &str, update: &Tensor) -> Result<()> {
        project(update, &self.frozen[name], self.mode)
    }
}
