//! Row softmax over the last dimension (max-subtracted) and its backward. Launcher for
//! `shaders/softmax.wgsl`.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

use super::reduce::{launch_rows, row_loop_iterations, rows_cols, WG};
use crate::gpu::Shader;
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::row_shader!("softmax");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

pub(super) fn contract() -> ShaderContract {
    let params = crate::uniform_layout!("Params", Params { rows, cols, _pad });
    ShaderContract { shader: &SHADER, uniforms: vec![params], constants: vec![("WG", WG)] }
}

pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let (rows, cols) = rows_cols("softmax", "x", x)?;
    let y = Tensor::uninit(x.gpu(), x.shape(), DType::F32)?;
    let params = Params { rows: rows as u32, cols: cols as u32, _pad: [0; 2] };
    // max, sum of exp and write passes; a max and a sum reduction
    let loops = row_loop_iterations(cols, 3, 2);
    launch_rows(&SHADER, "softmax_forward", bytemuck::bytes_of(&params), &[x], &[&y], rows, loops)?;
    Ok(y)
}

/// dx = y ⊙ (dy − Σ_row dy ⊙ y), from the forward output y.
pub fn softmax_backward(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (rows, cols) = rows_cols("softmax_backward", "y", y)?;
    if dy.shape() != y.shape() || dy.dtype() != DType::F32 {
        bail!("softmax_backward: dy {:?} {:?} must be f32 shaped like y {:?}", dy.shape(), dy.dtype(), y.shape());
    }
    let dx = Tensor::uninit(y.gpu(), y.shape(), DType::F32)?;
    let params = Params { rows: rows as u32, cols: cols as u32, _pad: [0; 2] };
    let loops = row_loop_iterations(cols, 2, 1);
    launch_rows(&SHADER, "softmax_backward", bytemuck::bytes_of(&params), &[dy, y], &[&dx], rows, loops)?;
    Ok(dx)
}

/// CPU references in f64.
#[cfg(test)]
pub(crate) mod reference {
    pub fn softmax(x: &[f32], cols: usize) -> Vec<f64> {
        x.chunks(cols)
            .flat_map(|row| {
                let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(move |v| v / s)
            })
            .collect()
    }

    pub fn softmax_backward(dy: &[f32], y: &[f64], cols: usize) -> Vec<f64> {
        dy.chunks(cols)
            .zip(y.chunks(cols))
            .flat_map(|(dy, y)| {
                let d: f64 = dy.iter().zip(y).map(|(&a, &b)| a as f64 * b).sum();
                dy.iter().zip(y).map(move |(&a, &b)| b * (a as f64 - d))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{
        assert_close, assert_matches_finite_differences, random, snapshot_text, AWKWARD_DIMS,
    };

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    #[test]
    fn softmax_and_backward_match_reference() {
        let gpu = gpu();
        for &rows in &[1, 3, 17, 65] {
            for &cols in AWKWARD_DIMS {
                // Large logits check the max subtraction.
                let xs: Vec<f32> = random(rows * cols, (rows * 13 + cols) as u64).iter().map(|v| v * 40.0).collect();
                let dys = random(rows * cols, (rows * 17 + cols) as u64);
                let x = Tensor::from_f32(&gpu, &[rows, cols], &xs).unwrap();
                let y = softmax(&x).unwrap();
                let want = reference::softmax(&xs, cols);
                assert_close(&y.to_f32().unwrap(), &f32s(&want), 1e-5);
                let dy = Tensor::from_f32(&gpu, &[rows, cols], &dys).unwrap();
                let dx = softmax_backward(&dy, &y).unwrap();
                assert_close(&dx.to_f32().unwrap(), &f32s(&reference::softmax_backward(&dys, &want, cols)), 1e-5);
            }
        }
    }

    #[test]
    fn backward_reference_matches_finite_differences() {
        // L = Σ dy ⊙ softmax(x); dL/dx_k by central differences of the f64 reference.
        let cols = 17;
        let xs = random(2 * cols, 3);
        let dys = random(2 * cols, 4);
        let y = reference::softmax(&xs, cols);
        let analytic = reference::softmax_backward(&dys, &y, cols);
        let loss =
            |x: &[f32]| -> f64 { reference::softmax(x, cols).iter().zip(&dys).map(|(a, &b)| a * b as f64).sum() };
        assert_matches_finite_differences("dx", &xs, &analytic, 1e-4, loss);
    }

    #[test]
    fn softmax_snapshot() {
        let gpu = gpu();
        let xs = [1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 0.5, 100.0];
        let x = Tensor::from_f32(&gpu, &[2, 4], &xs).unwrap();
        let y = softmax(&x).unwrap();
        let dy = Tensor::from_f32(&gpu, &[2, 4], &[0.5, -1.0, 0.25, 2.0, 1.0, 0.0, 0.0, -1.0]).unwrap();
        let dx = softmax_backward(&dy, &y).unwrap();
        insta::assert_snapshot!(format!(
            "y:\n{}\ndx:\n{}",
            snapshot_text(&y.to_f32().unwrap(), 4),
            snapshot_text(&dx.to_f32().unwrap(), 4)
        ));
    }

    #[test]
    fn over_budget_softmax_is_refused() {
        let gpu = gpu();
        // 3 * ceil(cols / 256) + 16 > 65,535
        let x = Tensor::uninit(&gpu, &[1, 21_840 * 256], DType::F32).unwrap();
        let err = softmax(&x).unwrap_err().to_string();
        assert!(err.contains("softmax_forward") && err.contains("loop iterations"), "{err}");
    }
}
