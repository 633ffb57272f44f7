//! How much of the change ΔW = W_after − W_before of every target matrix lies in the frozen
//! subspace saved in the before checkpoint (`sculpt verify` prints it).
//!
//! Reported as ratios of Frobenius norms to ‖ΔW‖_F: ‖U_kᵀ ΔW V_k‖ (what paper mode keeps at
//! zero) and, for strict mode's two sides, ‖U_kᵀ ΔW‖ and ‖ΔW V_k‖. OSFT training gives
//! ratios at rounding level; unconstrained training moves the frozen directions freely.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::state::SUBSPACE_FILE;
use super::{Basis, Mode, SubspaceSet};
use crate::kernels::matmul::{gemm, matmul, Gemm};
use crate::model::weights::{Weights, WEIGHTS_FILE};
use crate::{Gpu, Tensor};

/// Norms of the frozen components, each divided by ‖ΔW‖_F (0 where ΔW is zero).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Ratios {
    /// ‖U_kᵀ ΔW V_k‖_F / ‖ΔW‖_F
    pub both: f64,
    /// ‖U_kᵀ ΔW‖_F / ‖ΔW‖_F
    pub left: f64,
    /// ‖ΔW V_k‖_F / ‖ΔW‖_F
    pub right: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MatrixLeakage {
    pub name: String,
    pub shape: [usize; 2],
    pub k: usize,
    /// ‖ΔW‖_F
    pub delta_norm: f64,
    #[serde(flatten)]
    pub ratios: Ratios,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub mode: Mode,
    pub matrices: Vec<MatrixLeakage>,
    /// Over all target matrices together: √Σ‖part‖² / √Σ‖ΔW‖².
    pub overall: Ratios,
}

impl Verification {
    /// The largest per-matrix ratio of what `mode` holds fixed (strict: all three, paper: `both`).
    pub fn worst(&self) -> f64 {
        let held = |r: &Ratios| match self.mode {
            Mode::Strict => r.both.max(r.left).max(r.right),
            Mode::Paper => r.both,
        };
        self.matrices.iter().map(|m| held(&m.ratios)).fold(0.0, f64::max)
    }
}

/// A tensor with the Frobenius norm of `x`'s component in one side's frozen span:
/// left: U_kᵀ x, or x − Q Qᵀ x with the complement Q; right: x V_k, or x − x R Rᵀ.
fn frozen_part(x: &Tensor, basis: &Basis, left: bool) -> Result<Tensor> {
    let (r, c) = (x.shape()[0], x.shape()[1]);
    match (basis, left) {
        (Basis::Frozen(u), true) => matmul(u, x, true, false),
        (Basis::Frozen(v), false) => matmul(x, v, false, false),
        // A side frozen whole: all of x is in its span.
        (Basis::Complement(q), _) if q.shape()[1] == 0 => Ok(x.clone()),
        (Basis::Complement(q), _) => {
            let kept = if left { matmul(q, x, true, false)? } else { matmul(x, q, false, false)? };
            let rest = Tensor::uninit(x.gpu(), &[r, c], crate::DType::F32)?;
            rest.copy_from(x)?;
            let cols = q.shape()[1];
            let g = if left { Gemm::new(r, c, cols, false, false) } else { Gemm::new(r, c, cols, false, true) };
            let g = Gemm { alpha: -1.0, beta: 1.0, ..g };
            if left {
                gemm(&g, q, &kept, &rest)?;
            } else {
                gemm(&g, &kept, q, &rest)?;
            }
            Ok(rest)
        }
    }
}

fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.to_f32()?.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
}

/// (‖ΔW‖, ‖U_kᵀΔW V_k‖, ‖U_kᵀΔW‖, ‖ΔW V_k‖) of one matrix's change `delta` [m, n].
pub fn frozen_norms(set: &SubspaceSet, name: &str, delta: &Tensor) -> Result<[f64; 4]> {
    let s = set.frozen.get(name).with_context(|| format!("no frozen subspace for {name}"))?;
    if delta.shape() != [s.rows, s.cols] {
        bail!("{name}: the change has shape {:?}, the frozen subspace is for {}x{}", delta.shape(), s.rows, s.cols);
    }
    if s.k == 0 {
        return Ok([norm(delta)?, 0.0, 0.0, 0.0]);
    }
    let left = frozen_part(delta, &s.left, true)?;
    let both = frozen_part(&left, &s.right, false)?;
    let right = frozen_part(delta, &s.right, false)?;
    Ok([norm(delta)?, norm(&both)?, norm(&left)?, norm(&right)?])
}

/// Compares two checkpoint folders against the subspaces saved in `before`.
pub fn verify(gpu: &Gpu, before: &Path, after: &Path) -> Result<Verification> {
    let subspace = before.join(SUBSPACE_FILE);
    if !subspace.is_file() {
        bail!(
            "{} not found: --before must be a checkpoint written by an osft run (it saves the frozen subspaces there; seqft runs have none)",
            subspace.display()
        );
    }
    let set = SubspaceSet::load(gpu, &subspace)?;
    let (w0, w1) = (Weights::load(before)?, Weights::load(after)?);
    let ratio = |part: f64, whole: f64| if whole > 0.0 { part / whole } else { 0.0 };
    let mut matrices = Vec::with_capacity(set.frozen.len());
    let mut sums = [0.0f64; 4];
    for (name, s) in &set.frozen {
        let shape = [s.rows, s.cols];
        let a = w0.get(name, &shape).with_context(|| format!("{} holds {name} as {shape:?}", subspace.display()))?;
        let b = w1.get(name, &shape).with_context(|| {
            format!(
                "{}: {name} must have the shape {shape:?} of the before checkpoint",
                after.join(WEIGHTS_FILE).display()
            )
        })?;
        let delta: Vec<f32> = b.data.iter().zip(&a.data).map(|(x, y)| x - y).collect();
        let norms = frozen_norms(&set, name, &Tensor::from_f32(gpu, &shape, &delta)?)?;
        sums.iter_mut().zip(norms).for_each(|(s, v)| *s += v * v);
        let [d, both, left, right] = norms;
        matrices.push(MatrixLeakage {
            name: name.clone(),
            shape,
            k: s.k,
            delta_norm: d,
            ratios: Ratios { both: ratio(both, d), left: ratio(left, d), right: ratio(right, d) },
        });
    }
    let [d, both, left, right] = sums.map(f64::sqrt);
    let overall = Ratios { both: ratio(both, d), left: ratio(left, d), right: ratio(right, d) };
    Ok(Verification { mode: set.mode, matrices, overall })
}
