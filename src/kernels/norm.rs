//! T5 RMS norm (HF T5LayerNorm): y = w ⊙ x / sqrt(mean(x²) + eps) over the last dimension,
//! in f32, without mean subtraction or bias; and its backward. Launcher for `shaders/norm.wgsl`.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

use super::reduce::{col_sum_into, launch_rows, row_loop_iterations, rows_cols, WG};
use crate::gpu::Shader;
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::row_shader!("norm");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

pub(super) fn contract() -> ShaderContract {
    let params = crate::uniform_layout!("Params", Params { rows, cols, eps, _pad });
    ShaderContract { shader: &SHADER, uniforms: vec![params], constants: vec![("WG", WG)] }
}

fn check_weight(what: &str, name: &str, t: &Tensor, cols: usize) -> Result<()> {
    if t.dtype() != DType::F32 || t.shape() != [cols] {
        bail!("{what}: {name} must be f32 [{cols}] (the last dimension of x), got {:?} {:?}", t.dtype(), t.shape());
    }
    Ok(())
}

/// Returns (y shaped like x, inv_rms `[rows]`) where inv_rms = 1 / sqrt(mean(x²) + eps) per row.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (rows, cols) = rows_cols("rms_norm", "x", x)?;
    check_weight("rms_norm", "w", w, cols)?;
    let y = Tensor::uninit(x.gpu(), x.shape(), DType::F32)?;
    let inv_rms = Tensor::uninit(x.gpu(), &[rows], DType::F32)?;
    let params = Params { rows: rows as u32, cols: cols as u32, eps, _pad: 0 };
    // sum of squares and write passes, one reduction
    let loops = row_loop_iterations(cols, 2, 1);
    launch_rows(&SHADER, "rms_norm_forward", bytemuck::bytes_of(&params), &[x, w], &[&y, &inv_rms], rows, loops)?;
    Ok((y, inv_rms))
}

/// Returns dx and ACCUMULATES dw += Σ_rows dy ⊙ x ⊙ inv_rms. The per-row terms go to a
/// [rows, d] scratch that a deterministic column sum adds into dw (no atomics).
pub fn rms_norm_backward(dy: &Tensor, x: &Tensor, w: &Tensor, inv_rms: &Tensor, dw: &Tensor) -> Result<Tensor> {
    let what = "rms_norm_backward";
    let (rows, cols) = rows_cols(what, "x", x)?;
    if dy.shape() != x.shape() || dy.dtype() != DType::F32 {
        bail!("{what}: dy {:?} {:?} must be f32 shaped like x {:?}", dy.dtype(), dy.shape(), x.shape());
    }
    check_weight(what, "w", w, cols)?;
    check_weight(what, "dw", dw, cols)?;
    if inv_rms.dtype() != DType::F32 || inv_rms.len() != rows {
        bail!(
            "{what}: inv_rms must be f32 with {rows} elements (rows of x {:?}), got {:?}",
            x.shape(),
            inv_rms.shape()
        );
    }
    let dx = Tensor::uninit(x.gpu(), x.shape(), DType::F32)?;
    let dw_rows = Tensor::uninit(x.gpu(), &[rows, cols], DType::F32)?;
    let params = Params { rows: rows as u32, cols: cols as u32, eps: 0.0, _pad: 0 };
    let loops = row_loop_iterations(cols, 2, 1);
    launch_rows(
        &SHADER,
        "rms_norm_backward",
        bytemuck::bytes_of(&params),
        &[x, w, dy, inv_rms],
        &[&dx, &dw_rows],
        rows,
        loops,
    )?;
    col_sum_into(&dw_rows, dw, true)?;
    Ok(dx)
}

/// CPU references in f64.
#[cfg(test)]
pub(crate) mod reference {
    /// (y, inv_rms)
    pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> (Vec<f64>, Vec<f64>) {
        let d = w.len();
        let mut y = Vec::with_capacity(x.len());
        let mut inv = Vec::new();
        for row in x.chunks(d) {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let r = 1.0 / (ms + eps as f64).sqrt();
            y.extend(row.iter().zip(w).map(|(&v, &wv)| wv as f64 * v as f64 * r));
            inv.push(r);
        }
        (y, inv)
    }

    /// (dx, dw)
    pub fn rms_norm_backward(dy: &[f32], x: &[f32], w: &[f32], eps: f32) -> (Vec<f64>, Vec<f64>) {
        let d = w.len();
        let (_, inv) = rms_norm(x, w, eps);
        let mut dx = Vec::with_capacity(x.len());
        let mut dw = vec![0.0; d];
        for ((dyr, xr), &r) in dy.chunks(d).zip(x.chunks(d)).zip(&inv) {
            let gx: f64 = (0..d).map(|c| dyr[c] as f64 * w[c] as f64 * xr[c] as f64).sum();
            for c in 0..d {
                dx.push(r * dyr[c] as f64 * w[c] as f64 - xr[c] as f64 * r.powi(3) * gx / d as f64);
                dw[c] += dyr[c] as f64 * xr[c] as f64 * r;
            }
        }
        (dx, dw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{
        assert_close, assert_matches_finite_differences, random, snapshot_text, AWKWARD_DIMS,
    };

    const EPS: f32 = 1e-6;

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        for &rows in &[1, 3, 17, 65] {
            for &d in AWKWARD_DIMS {
                let seed = (rows * 1000 + d) as u64;
                let xs: Vec<f32> = random(rows * d, seed).iter().map(|v| v * 3.0).collect();
                let ws: Vec<f32> = random(d, seed + 1).iter().map(|v| 1.0 + v).collect();
                let dys = random(rows * d, seed + 2);
                let dw0 = random(d, seed + 3);
                let x = Tensor::from_f32(&gpu, &[rows, d], &xs).unwrap();
                let w = Tensor::from_f32(&gpu, &[d], &ws).unwrap();
                let (y, inv_rms) = rms_norm(&x, &w, EPS).unwrap();
                let (want_y, want_inv) = reference::rms_norm(&xs, &ws, EPS);
                assert_close(&y.to_f32().unwrap(), &f32s(&want_y), 1e-5);
                assert_close(&inv_rms.to_f32().unwrap(), &f32s(&want_inv), 1e-5);

                let dy = Tensor::from_f32(&gpu, &[rows, d], &dys).unwrap();
                let dw = Tensor::from_f32(&gpu, &[d], &dw0).unwrap();
                let dx = rms_norm_backward(&dy, &x, &w, &inv_rms, &dw).unwrap();
                let (want_dx, want_dw) = reference::rms_norm_backward(&dys, &xs, &ws, EPS);
                assert_close(&dx.to_f32().unwrap(), &f32s(&want_dx), 1e-5);
                let accumulated: Vec<f32> = want_dw.iter().zip(&dw0).map(|(a, &b)| (a + b as f64) as f32).collect();
                assert_close(&dw.to_f32().unwrap(), &accumulated, 1e-5);
            }
        }
    }

    #[test]
    fn backward_reference_matches_finite_differences() {
        let d = 5;
        let xs = random(2 * d, 11);
        let ws: Vec<f32> = random(d, 12).iter().map(|v| 1.0 + v).collect();
        let dys = random(2 * d, 13);
        let (dx, dw) = reference::rms_norm_backward(&dys, &xs, &ws, EPS);
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            reference::rms_norm(x, w, EPS).0.iter().zip(&dys).map(|(a, &b)| a * b as f64).sum()
        };
        assert_matches_finite_differences("dx", &xs, &dx, 1e-3, |x| loss(x, &ws));
        assert_matches_finite_differences("dw", &ws, &dw, 1e-3, |w| loss(&xs, w));
    }

    #[test]
    fn rms_norm_snapshot() {
        let gpu = gpu();
        let x = Tensor::from_f32(&gpu, &[2, 4], &[1.0, -2.0, 3.0, 0.5, 0.0, 0.1, 0.0, -0.2]).unwrap();
        let w = Tensor::from_f32(&gpu, &[4], &[1.0, 0.5, -1.0, 2.0]).unwrap();
        let (y, inv_rms) = rms_norm(&x, &w, EPS).unwrap();
        insta::assert_snapshot!(format!(
            "y:\n{}\ninv_rms:\n{}",
            snapshot_text(&y.to_f32().unwrap(), 4),
            snapshot_text(&inv_rms.to_f32().unwrap(), 2)
        ));
    }

    #[test]
    fn mismatched_weight_is_refused() {
        let gpu = gpu();
        let x = Tensor::zeros(&gpu, &[2, 4], DType::F32).unwrap();
        let w = Tensor::zeros(&gpu, &[3], DType::F32).unwrap();
        let err = rms_norm(&x, &w, EPS).unwrap_err().to_string();
        assert!(err.contains("w must be f32 [4]"), "{err}");
    }
}
