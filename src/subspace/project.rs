//! Projection of an optimizer update out of a frozen singular subspace, on the GPU.
//!
//! strict: ΔW ← (I − U_kU_kᵀ) ΔW (I − V_kV_kᵀ)   (what the public implementations enforce)
//! paper:  ΔW ← ΔW − U_k U_kᵀ ΔW V_k V_kᵀ          (the paper's equation)
//!
//! Only thin products are formed, never an m×m or n×n matrix. On a side where the SVD gives
//! a full basis (the min(m, n) side) and more than half of it is frozen, strict mode keeps
//! the complement Q = U[:, k:] instead: (I − U_kU_kᵀ) = QQᵀ there, which is cheaper and smaller.

use anyhow::{bail, Result};

use crate::kernels::matmul::{gemm, Gemm};
use crate::tensor::{DType, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Strict,
    Paper,
}

/// One side's orthonormal basis, `[dim, cols]` row-major (cols padded with zero columns to a
/// multiple of 4 where built by [`padded_basis`]).
pub enum Basis {
    /// The frozen directions themselves (U_k or V_k).
    Frozen(Tensor),
    /// An orthonormal basis of the trainable complement (only where the SVD side is full).
    Complement(Tensor),
}

impl Basis {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Basis::Frozen(t) | Basis::Complement(t) => t,
        }
    }
    fn cols(&self) -> usize {
        self.tensor().shape()[1]
    }
}

/// The frozen subspace of one m×n target matrix.
pub struct FrozenSubspace {
    pub rows: usize,
    pub cols: usize,
    pub k: usize,
    pub left: Basis,
    pub right: Basis,
}

/// Host-side columns `from..to` of a row-major `[dim, r]` matrix.
fn columns(data: &[f32], dim: usize, r: usize, from: usize, to: usize) -> Vec<f32> {
    (0..dim).flat_map(|i| data[i * r + from..i * r + to].iter().copied()).collect()
}

/// A `[dim, cols]` basis on the GPU with zero columns appended up to a multiple of 4: the
/// projection's matmuls then read its rows as vec4 (on a CPU adapter the aligned kernels are
/// several times faster), and zero columns change neither U Uᵀ nor Q Qᵀ.
pub fn padded_basis(gpu: &crate::Gpu, data: &[f32], dim: usize, cols: usize) -> Result<Tensor> {
    let width = cols.next_multiple_of(4);
    let mut out = vec![0.0f32; dim * width];
    for i in 0..dim {
        out[i * width..i * width + cols].copy_from_slice(&data[i * cols..(i + 1) * cols]);
    }
    Tensor::from_f32(gpu, &[dim, width], &out)
}

impl FrozenSubspace {
    /// From a thin SVD on the host: `u` is `[m, r]`, `v` is `[n, r]`, r = min(m, n),
    /// columns sorted by descending singular value; the top `k` directions are frozen.
    pub fn from_svd(
        gpu: &crate::Gpu,
        (m, n): (usize, usize),
        u: &[f32],
        v: &[f32],
        k: usize,
        mode: Mode,
    ) -> Result<FrozenSubspace> {
        let r = m.min(n);
        if u.len() != m * r || v.len() != n * r {
            bail!("from_svd: U has {} values and V {}, expected {m}x{r} and {n}x{r}", u.len(), v.len());
        }
        if k > r {
            bail!("from_svd: k = {k} exceeds min(m, n) = {r}");
        }
        let side = |data: &[f32], dim: usize| -> Result<Basis> {
            if mode == Mode::Strict && dim == r && 2 * k > dim {
                Ok(Basis::Complement(padded_basis(gpu, &columns(data, dim, r, k, r), dim, dim - k)?))
            } else {
                Ok(Basis::Frozen(padded_basis(gpu, &columns(data, dim, r, 0, k), dim, k)?))
            }
        };
        Ok(FrozenSubspace { rows: m, cols: n, k, left: side(u, m)?, right: side(v, n)? })
    }

    /// Extra GPU memory this subspace holds, in f32 elements.
    pub fn elements(&self) -> usize {
        self.left.tensor().len() + self.right.tensor().len()
    }
}

/// Records the projection of `update` (`[m, n]`, in place) out of the frozen subspace.
pub fn project(update: &Tensor, s: &FrozenSubspace, mode: Mode) -> Result<()> {
    let (m, n) = (s.rows, s.cols);
    if update.shape() != [m, n] {
        bail!("projection: update has shape {:?}, the frozen subspace is for {m}x{n}", update.shape());
    }
    if s.k == 0 {
        return Ok(());
    }
    let gpu = update.gpu();
    match mode {
        Mode::Strict => {
            // A side frozen whole (its complement has no column) leaves nothing to train.
            if [&s.left, &s.right].iter().any(|b| matches!(b, Basis::Complement(_)) && b.cols() == 0) {
                return update.fill_zero();
            }
            project_left(update, &s.left)?;
            project_right(update, &s.right)
        }
        Mode::Paper => {
            let (Basis::Frozen(u), Basis::Frozen(v)) = (&s.left, &s.right) else {
                bail!("paper-mode projection needs the frozen bases U_k and V_k, not complements");
            };
            // The bases' width: k and any zero padding columns, which add nothing.
            let k = u.shape()[1];
            // T = ΔW V_k (m×k); C = U_kᵀ T (k×k); E = U_k C (m×k); ΔW −= E V_kᵀ
            let t = Tensor::uninit(gpu, &[m, k], DType::F32)?;
            gemm(&Gemm::new(m, k, n, false, false), update, v, &t)?;
            let c = Tensor::uninit(gpu, &[k, k], DType::F32)?;
            gemm(&Gemm::new(k, k, m, true, false), u, &t, &c)?;
            gemm(&Gemm::new(m, k, k, false, false), u, &c, &t)?;
            gemm(&Gemm { alpha: -1.0, beta: 1.0, ..Gemm::new(m, n, k, false, true) }, &t, v, update)
        }
    }
}

/// ΔW ← (I − U Uᵀ) ΔW, or ΔW ← Q Qᵀ ΔW with the complement Q.
fn project_left(update: &Tensor, basis: &Basis) -> Result<()> {
    let (m, n) = (update.shape()[0], update.shape()[1]);
    let b = basis.tensor();
    let c = basis.cols();
    let a = Tensor::uninit(update.gpu(), &[c, n], DType::F32)?;
    gemm(&Gemm::new(c, n, m, true, false), b, update, &a)?;
    match basis {
        Basis::Frozen(_) => gemm(&Gemm { alpha: -1.0, beta: 1.0, ..Gemm::new(m, n, c, false, false) }, b, &a, update),
        Basis::Complement(_) => gemm(&Gemm::new(m, n, c, false, false), b, &a, update),
    }
}

/// ΔW ← ΔW (I − V Vᵀ), or ΔW ← ΔW R Rᵀ with the complement R.
fn project_right(update: &Tensor, basis: &Basis) -> Result<()> {
    let (m, n) = (update.shape()[0], update.shape()[1]);
    let b = basis.tensor();
    let c = basis.cols();
    let t = Tensor::uninit(update.gpu(), &[m, c], DType::F32)?;
    gemm(&Gemm::new(m, c, n, false, false), update, b, &t)?;
    match basis {
        Basis::Frozen(_) => gemm(&Gemm { alpha: -1.0, beta: 1.0, ..Gemm::new(m, n, c, false, true) }, &t, b, update),
        Basis::Complement(_) => gemm(&Gemm::new(m, n, c, false, true), &t, b, update),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::assert_close;

    fn fixture() -> safetensors::SafeTensors<'static> {
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let bytes = BYTES.get_or_init(|| {
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/projection.safetensors")).unwrap()
        });
        safetensors::SafeTensors::deserialize(bytes).unwrap()
    }

    fn read(st: &safetensors::SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).unwrap();
        (t.shape().to_vec(), bytemuck::pod_collect_to_vec(t.data()))
    }

    /// Orthonormal basis of span(cols)⊥ in R^dim: Gram-Schmidt that always takes the unit
    /// vector with the largest residual next (well conditioned).
    fn complement(basis: &[f32], dim: usize, k: usize) -> Vec<f32> {
        let mut kept: Vec<Vec<f64>> = (0..k).map(|j| (0..dim).map(|i| basis[i * k + j] as f64).collect()).collect();
        let residual = |e: usize, kept: &[Vec<f64>]| {
            let mut x: Vec<f64> = (0..dim).map(|i| (i == e) as u8 as f64).collect();
            for _ in 0..2 {
                for q in kept {
                    let d: f64 = q.iter().zip(&x).map(|(a, b)| a * b).sum();
                    x.iter_mut().zip(q).for_each(|(xi, qi)| *xi -= d * qi);
                }
            }
            x
        };
        let norm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
        for _ in k..dim {
            let best = (0..dim).map(|e| residual(e, &kept)).max_by(|a, b| norm(a).total_cmp(&norm(b))).unwrap();
            let nb = norm(&best);
            kept.push(best.iter().map(|v| v / nb).collect());
        }
        (0..dim).flat_map(|i| kept[k..].iter().map(move |c| c[i] as f32)).collect()
    }

    /// Through zero-padded bases, as the method builds them (k = 5, 12, 15: padded to 8, 12, 16).
    #[test]
    fn matches_the_pytorch_reference_in_both_modes() {
        let gpu = gpu();
        let st = fixture();
        for case in ["p24x16_k5", "p16x40_k12", "p20x20_k15"] {
            let (shape, delta) = read(&st, &format!("{case}.delta"));
            let (m, n) = (shape[0], shape[1]);
            let (uk_shape, uk) = read(&st, &format!("{case}.u_k"));
            let (_, vk) = read(&st, &format!("{case}.v_k"));
            let k = uk_shape[1];
            for (mode, name) in [(Mode::Strict, "strict"), (Mode::Paper, "paper")] {
                let (_, want) = read(&st, &format!("{case}.{name}"));
                let s = FrozenSubspace {
                    rows: m,
                    cols: n,
                    k,
                    left: Basis::Frozen(padded_basis(&gpu, &uk, m, k).unwrap()),
                    right: Basis::Frozen(padded_basis(&gpu, &vk, n, k).unwrap()),
                };
                let update = Tensor::from_f32(&gpu, &[m, n], &delta).unwrap();
                project(&update, &s, mode).unwrap();
                assert_close(&update.to_f32().unwrap(), &want, 1e-5);
            }
            // Strict mode through the complement basis wherever a side is full and mostly frozen.
            let side = |b: &[f32], dim: usize| {
                if dim == m.min(n) && 2 * k > dim {
                    Basis::Complement(padded_basis(&gpu, &complement(b, dim, k), dim, dim - k).unwrap())
                } else {
                    Basis::Frozen(padded_basis(&gpu, b, dim, k).unwrap())
                }
            };
            let s = FrozenSubspace { rows: m, cols: n, k, left: side(&uk, m), right: side(&vk, n) };
            let update = Tensor::from_f32(&gpu, &[m, n], &delta).unwrap();
            project(&update, &s, Mode::Strict).unwrap();
            assert_close(&update.to_f32().unwrap(), &read(&st, &format!("{case}.strict")).1, 1e-5);
        }
    }

    #[test]
    fn wrong_update_shape_and_paper_with_complement_are_refused() {
        let gpu = gpu();
        let s = FrozenSubspace {
            rows: 4,
            cols: 4,
            k: 3,
            left: Basis::Complement(Tensor::zeros(&gpu, &[4, 1], DType::F32).unwrap()),
            right: Basis::Complement(Tensor::zeros(&gpu, &[4, 1], DType::F32).unwrap()),
        };
        let bad = Tensor::zeros(&gpu, &[4, 5], DType::F32).unwrap();
        assert!(project(&bad, &s, Mode::Strict).unwrap_err().to_string().contains("4x4"));
        let ok = Tensor::zeros(&gpu, &[4, 4], DType::F32).unwrap();
        assert!(project(&ok, &s, Mode::Paper).unwrap_err().to_string().contains("paper-mode"));
    }

    #[test]
    fn a_matrix_frozen_whole_on_one_side_takes_no_update() {
        // 3x5 at k = 3: every left direction is frozen, so strict mode keeps none of ΔW;
        // paper mode removes only U Uᵀ ΔW V Vᵀ.
        let gpu = gpu();
        let (m, n, r) = (3, 5, 3);
        let eye = |dim: usize| (0..dim * r).map(|i| if i / r == i % r { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
        let data: Vec<f32> = (0..m * n).map(|i| i as f32 + 1.0).collect();
        for mode in [Mode::Strict, Mode::Paper] {
            let s = FrozenSubspace::from_svd(&gpu, (m, n), &eye(m), &eye(n), r, mode).unwrap();
            let update = Tensor::from_f32(&gpu, &[m, n], &data).unwrap();
            project(&update, &s, mode).unwrap();
            let got = update.to_f32().unwrap();
            // Paper mode: columns 0..3 (the frozen V_k span) go, columns 3..5 stay.
            let want: Vec<f32> = match mode {
                Mode::Strict => vec![0.0; m * n],
                Mode::Paper => data.iter().enumerate().map(|(i, &v)| if i % n < r { 0.0 } else { v }).collect(),
            };
            assert_close(&got, &want, 1e-6);
        }
    }
}
