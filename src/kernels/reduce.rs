//! Row and column reductions and the global sum of squares used for gradient-norm
//! clipping. Launcher for `shaders/reduce.wgsl`; also holds the helpers shared by the other
//! one-workgroup-per-row families (softmax, norm, loss), whose shaders all append
//! `shaders/workgroup_reduce.wgsl`.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Launch, Shader};
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::row_shader!("reduce");

/// Invocations per workgroup of the row-wise kernels of reduce, softmax, norm and loss (`WG` in
/// each of their shaders).
pub(crate) const WG: u64 = 256;
/// Steps of the tree reduction over WG values.
const REDUCTION_STEPS: u64 = WG.ilog2() as u64;
/// The shared `wg_scratch` array of workgroup_reduce.wgsl.
pub(crate) const ROW_WORKGROUP_BYTES: u64 = WG * 4;
/// col_sum: adjacent columns per workgroup and row lanes (COL_TILE, ROW_LANES in reduce.wgsl).
const COL_TILE: u64 = 32;
const ROW_LANES: u64 = WG / COL_TILE;
/// Elements per sumsq_partials workgroup (WG x SUMSQ_ITEMS in reduce.wgsl).
const SUMSQ_ITEMS: u64 = 64;
const SUMSQ_CHUNK: u64 = WG * SUMSQ_ITEMS;

/// Worst-case loop iterations of one invocation of a one-workgroup-per-row kernel that
/// makes `passes` strided passes over `cols` columns and `reductions` workgroup reductions.
pub(crate) fn row_loop_iterations(cols: usize, passes: u64, reductions: u64) -> u64 {
    passes * (cols as u64).div_ceil(WG) + reductions * REDUCTION_STEPS
}

/// (rows, cols) of an f32 tensor seen as rows over its last dimension.
pub(crate) fn rows_cols(what: &str, name: &str, t: &Tensor) -> Result<(usize, usize)> {
    if t.dtype() != DType::F32 {
        bail!("{what}: {name} must be f32, got {:?}", t.dtype());
    }
    let Some(&cols) = t.shape().last() else {
        bail!("{what}: {name} must have at least one dimension, got a scalar");
    };
    if cols == 0 {
        bail!("{what}: {name} {:?} has empty rows", t.shape());
    }
    if t.len() > u32::MAX as usize {
        bail!("{what}: {name} {:?} has more elements than 32-bit indices reach", t.shape());
    }
    Ok((t.len() / cols, cols))
}

/// Records a one-workgroup-per-row dispatch of a row-wise family.
pub(crate) fn launch_rows(
    shader: &'static Shader,
    entry: &'static str,
    params: &[u8],
    read: &[&Tensor],
    write: &[&Tensor],
    rows: usize,
    loop_iterations: u64,
) -> Result<()> {
    write[0].gpu().launch(&Launch {
        shader,
        entry,
        constants: &[],
        params,
        read,
        write,
        workgroups: grid_1d(rows as u64),
        loop_iterations,
        workgroup_bytes: ROW_WORKGROUP_BYTES,
    })
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    /// row_reduce: the op; col_sum: accumulate; sumsq_partials: offset into the partials.
    a: u32,
    _pad: u32,
}

pub(super) fn contract() -> ShaderContract {
    let params = crate::uniform_layout!("Params", Params { rows, cols, a, _pad });
    let constants = vec![
        ("WG", WG),
        ("COL_TILE", COL_TILE),
        ("ROW_LANES", ROW_LANES),
        ("SUMSQ_ITEMS", SUMSQ_ITEMS),
        ("ROW_SUM", RowOp::Sum as u64),
        ("ROW_SUMSQ", RowOp::SumSquares as u64),
    ];
    ShaderContract { shader: &SHADER, uniforms: vec![params], constants }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOp {
    Sum = 0,
    SumSquares = 1,
    Max = 2,
}

/// `out[r]` = op over the last dimension of `x[r, ..]`; x [.., cols] -> [..]
pub fn row_reduce(op: RowOp, x: &Tensor) -> Result<Tensor> {
    let (rows, cols) = rows_cols("row_reduce", "x", x)?;
    let shape = &x.shape()[..x.shape().len() - 1];
    let out = Tensor::uninit(x.gpu(), if shape.is_empty() { &[1] } else { shape }, DType::F32)?;
    let params = Params { rows: rows as u32, cols: cols as u32, a: op as u32, _pad: 0 };
    let loops = row_loop_iterations(cols, 1, 1);
    launch_rows(&SHADER, "row_reduce", bytemuck::bytes_of(&params), &[x], &[&out], rows, loops)?;
    Ok(out)
}

pub fn row_sum(x: &Tensor) -> Result<Tensor> {
    row_reduce(RowOp::Sum, x)
}
pub fn row_sumsq(x: &Tensor) -> Result<Tensor> {
    row_reduce(RowOp::SumSquares, x)
}
pub fn row_max(x: &Tensor) -> Result<Tensor> {
    row_reduce(RowOp::Max, x)
}

/// `out[c] = Σ_r x[r, c]` (or `out[c] += ..` when `accumulate`); x [.., cols], out `[cols]`.
pub fn col_sum_into(x: &Tensor, out: &Tensor, accumulate: bool) -> Result<()> {
    let (rows, cols) = rows_cols("col_sum_into", "x", x)?;
    if out.dtype() != DType::F32 || out.len() != cols {
        bail!(
            "col_sum_into: out must be f32 with {cols} elements (the columns of x {:?}), got {:?} {:?}",
            x.shape(),
            out.dtype(),
            out.shape()
        );
    }
    let params = Params { rows: rows as u32, cols: cols as u32, a: accumulate as u32, _pad: 0 };
    let lane_steps = ROW_LANES.ilog2() as u64;
    out.gpu().launch(&Launch {
        shader: &SHADER,
        entry: "col_sum",
        constants: &[],
        params: bytemuck::bytes_of(&params),
        read: &[x],
        write: &[out],
        workgroups: grid_1d((cols as u64).div_ceil(COL_TILE)),
        loop_iterations: (rows as u64).div_ceil(ROW_LANES) + lane_steps,
        workgroup_bytes: ROW_WORKGROUP_BYTES,
    })
}

/// Σ over every element of every tensor of x², as a `[1]` tensor. One partials pass per
/// tensor (each workgroup sums SUMSQ_CHUNK elements into its own slot of one shared
/// buffer) and one final row reduction: deterministic, tensors + 1 dispatches.
pub fn sum_squares(xs: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = xs.first() else { bail!("sum_squares: no tensors given") };
    let gpu = first.gpu();
    let mut offsets = Vec::with_capacity(xs.len());
    let mut total = 0u64;
    for (i, x) in xs.iter().enumerate() {
        if x.dtype() != DType::F32 {
            bail!("sum_squares: tensor {i} {:?} must be f32, got {:?}", x.shape(), x.dtype());
        }
        if x.len() as u64 + SUMSQ_CHUNK > u32::MAX as u64 {
            bail!("sum_squares: tensor {i} {:?} has more elements than 32-bit indices reach", x.shape());
        }
        offsets.push(total);
        total += (x.len() as u64).div_ceil(SUMSQ_CHUNK);
    }
    if total == 0 {
        return Tensor::zeros(gpu, &[1], DType::F32);
    }
    let partials = Tensor::uninit(gpu, &[1, total as usize], DType::F32)?;
    for (&x, &offset) in xs.iter().zip(&offsets) {
        let groups = (x.len() as u64).div_ceil(SUMSQ_CHUNK);
        if groups == 0 {
            continue;
        }
        let params = Params { rows: 0, cols: x.len() as u32, a: offset as u32, _pad: 0 };
        gpu.launch(&Launch {
            shader: &SHADER,
            entry: "sumsq_partials",
            constants: &[],
            params: bytemuck::bytes_of(&params),
            read: &[x],
            write: &[&partials],
            workgroups: grid_1d(groups),
            loop_iterations: SUMSQ_ITEMS + REDUCTION_STEPS,
            workgroup_bytes: ROW_WORKGROUP_BYTES,
        })?;
    }
    row_sum(&partials)
}

/// CPU references (f64 inside), shared with other tests.
#[cfg(test)]
pub(crate) mod reference {
    pub fn row_reduce(x: &[f32], cols: usize, op: super::RowOp) -> Vec<f32> {
        use super::RowOp;
        x.chunks(cols)
            .map(|row| match op {
                RowOp::Sum => row.iter().map(|&v| v as f64).sum::<f64>() as f32,
                RowOp::SumSquares => row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() as f32,
                RowOp::Max => row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
            })
            .collect()
    }

    pub fn col_sum(x: &[f32], cols: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; cols];
        for row in x.chunks(cols) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += v as f64;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{assert_close, random, AWKWARD_DIMS};

    #[test]
    fn row_reductions_match_reference() {
        let gpu = gpu();
        for &rows in &[1, 3, 17, 64, 65] {
            for &cols in AWKWARD_DIMS {
                let xs = random(rows * cols, (rows * 31 + cols) as u64);
                let x = Tensor::from_f32(&gpu, &[rows, cols], &xs).unwrap();
                for op in [RowOp::Sum, RowOp::SumSquares, RowOp::Max] {
                    let got = row_reduce(op, &x).unwrap();
                    assert_eq!(got.shape(), &[rows]);
                    assert_close(&got.to_f32().unwrap(), &reference::row_reduce(&xs, cols, op), 1e-5);
                }
            }
        }
    }

    #[test]
    fn row_max_of_all_negative_rows_and_3d_shapes() {
        let gpu = gpu();
        let xs: Vec<f32> = random(2 * 3 * 255, 9).iter().map(|v| v - 5.0).collect();
        let x = Tensor::from_f32(&gpu, &[2, 3, 255], &xs).unwrap();
        let got = row_max(&x).unwrap();
        assert_eq!(got.shape(), &[2, 3]);
        assert_eq!(got.to_f32().unwrap(), reference::row_reduce(&xs, 255, RowOp::Max));
    }

    #[test]
    fn many_rows_use_a_folded_grid() {
        let gpu = gpu();
        let rows = 65_537;
        let xs = random(rows * 3, 4);
        let x = Tensor::from_f32(&gpu, &[rows, 3], &xs).unwrap();
        assert_close(&row_sum(&x).unwrap().to_f32().unwrap(), &reference::row_reduce(&xs, 3, RowOp::Sum), 1e-5);
    }

    #[test]
    fn col_sum_overwrites_or_accumulates() {
        let gpu = gpu();
        for &rows in AWKWARD_DIMS {
            for &cols in &[1, 3, 31, 32, 33, 65, 255] {
                let xs = random(rows * cols, (rows * 7 + cols) as u64);
                let x = Tensor::from_f32(&gpu, &[rows, cols], &xs).unwrap();
                let init = random(cols, 99);
                let out = Tensor::from_f32(&gpu, &[cols], &init).unwrap();
                let sums = reference::col_sum(&xs, cols);
                col_sum_into(&x, &out, false).unwrap();
                let want: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
                assert_close(&out.to_f32().unwrap(), &want, 1e-5);
                col_sum_into(&x, &out, true).unwrap();
                let twice: Vec<f32> = sums.iter().map(|&s| (2.0 * s) as f32).collect();
                assert_close(&out.to_f32().unwrap(), &twice, 1e-5);
            }
        }
    }

    #[test]
    fn sum_squares_over_many_tensors() {
        let gpu = gpu();
        let sizes = [1, 3, 17, 63, 64, 65, 127, 255, 1000, 4099, 16_384, 16_385, 40_000];
        let data: Vec<Vec<f32>> = sizes.iter().map(|&n| random(n, n as u64 + 5)).collect();
        let tensors: Vec<Tensor> = data.iter().map(|d| Tensor::from_f32(&gpu, &[d.len()], d).unwrap()).collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let got = sum_squares(&refs).unwrap();
        assert_eq!(got.shape(), &[1]);
        let want: f64 = data.iter().flatten().map(|&v| (v as f64).powi(2)).sum();
        assert_close(&got.to_f32().unwrap(), &[want as f32], 1e-5);
        // Deterministic: the same inputs give the same bits.
        assert_eq!(sum_squares(&refs).unwrap().to_f32().unwrap(), got.to_f32().unwrap());
    }

    #[test]
    fn over_budget_row_length_is_refused() {
        let gpu = gpu();
        // ceil(cols / 256) + 8 > 65,535 for one row of 16.8M columns.
        let cols = 65_528 * 256 + 1;
        let x = Tensor::uninit(&gpu, &[1, cols], DType::F32).unwrap();
        let err = row_sum(&x).unwrap_err().to_string();
        assert!(err.contains("loop iterations"), "{err}");
    }

    #[test]
    fn wrong_shapes_are_refused() {
        let gpu = gpu();
        let x = Tensor::zeros(&gpu, &[4, 5], DType::F32).unwrap();
        let out = Tensor::zeros(&gpu, &[4], DType::F32).unwrap();
        let err = col_sum_into(&x, &out, false).unwrap_err().to_string();
        assert!(err.contains("5 elements"), "{err}");
        let ids = Tensor::from_u32(&gpu, &[4], &[0; 4]).unwrap();
        assert!(row_sum(&ids).unwrap_err().to_string().contains("must be f32"));
    }
}
