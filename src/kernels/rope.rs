//! Rotary position embedding (Hugging Face Llama's rotate-half convention) and its backward,
//! one kernel with a sign on sin. Launcher for `shaders/rope.wgsl`.
//!
//! The frequencies follow transformers' `modeling_rope_utils` for the "default", "linear" and
//! "llama3" rope types; the cos/sin table is computed on the host in f64 and uploaded once
//! per sequence length.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Gpu, Launch, Shader};
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::shader!("rope");

const WG: u64 = 256;

/// How the rotary frequencies are rescaled for longer contexts (config.json's rope scaling).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = theta^(-2i/Dh)`.
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// The Dh/2 inverse frequencies of a head of `head_dim` dims, as transformers computes them.
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f64> {
    let base: Vec<f64> = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect();
    match *scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let low_freq_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_freq_wavelen = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// cos and sin of position * inv_freq for positions 0..positions, [positions, Dh/2] each.
pub struct RopeTable {
    pub cos: Tensor,
    pub sin: Tensor,
    pub positions: usize,
    pub half_dim: usize,
}

impl RopeTable {
    pub fn new(gpu: &Gpu, inv_freq: &[f64], positions: usize) -> Result<RopeTable> {
        ensure!(!inv_freq.is_empty() && positions > 0, "rope table: needs at least one frequency and one position");
        let angles = |f: fn(f64) -> f64| -> Vec<f32> {
            (0..positions).flat_map(|p| inv_freq.iter().map(move |&w| f(p as f64 * w) as f32)).collect()
        };
        let shape = [positions, inv_freq.len()];
        Ok(RopeTable {
            cos: Tensor::from_f32(gpu, &shape, &angles(f64::cos))?,
            sin: Tensor::from_f32(gpu, &shape, &angles(f64::sin))?,
            positions,
            half_dim: inv_freq.len(),
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    seq_len: u32,
    heads: u32,
    half_dim: u32,
    first_position: u32,
    sign: f32,
    _pad: [u32; 2],
}

pub(super) fn contract() -> ShaderContract {
    let params =
        crate::uniform_layout!("Params", Params { rows, seq_len, heads, half_dim, first_position, sign, _pad });
    ShaderContract { shader: &SHADER, uniforms: vec![params], constants: vec![("WG", WG)] }
}

/// Which way to rotate: the forward embedding, or its transpose for the gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// Rotates x [B, S, H*Dh] (or [B*S, H*Dh]) whose rows are sequences of `seq_len` positions
/// starting at absolute position `first_position`. `Backward` applies the transposed rotation
/// (d x from d y). Query and key tensors pass their own head counts (grouped-query attention).
pub fn rope(
    x: &Tensor,
    table: &RopeTable,
    heads: usize,
    seq_len: usize,
    first_position: usize,
    direction: Direction,
) -> Result<Tensor> {
    let width = heads * 2 * table.half_dim;
    ensure!(x.dtype() == DType::F32, "rope: x must be f32, got {:?}", x.dtype());
    ensure!(
        heads > 0 && seq_len > 0 && x.len().is_multiple_of(width * seq_len),
        "rope: x has shape {:?}, not whole sequences of {seq_len} rows of {heads} heads x {} dims",
        x.shape(),
        2 * table.half_dim
    );
    ensure!(
        first_position + seq_len <= table.positions,
        "rope: positions {first_position}..{} exceed the table's {} positions",
        first_position + seq_len,
        table.positions
    );
    let rows = x.len() / width;
    ensure!(x.len() < u32::MAX as usize, "rope: {:?} exceeds the 32-bit index range", x.shape());
    let params = Params {
        rows: rows as u32,
        seq_len: seq_len as u32,
        heads: heads as u32,
        half_dim: table.half_dim as u32,
        first_position: first_position as u32,
        sign: if direction == Direction::Forward { 1.0 } else { -1.0 },
        _pad: [0; 2],
    };
    let y = Tensor::uninit(x.gpu(), x.shape(), DType::F32)?;
    x.gpu().launch(&Launch {
        shader: &SHADER,
        entry: "rope",
        constants: &[],
        params: bytemuck::bytes_of(&params),
        read: &[x, &table.cos, &table.sin],
        write: &[&y],
        workgroups: grid_1d(((rows * heads * table.half_dim) as u64).div_ceil(WG)),
        loop_iterations: 0,
        workgroup_bytes: 0,
    })?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{assert_close, random};

    /// f64 reference of the rotation with angle position * inv_freq (negated for Backward).
    fn reference(x: &[f32], inv_freq: &[f64], heads: usize, seq_len: usize, first: usize, sign: f64) -> Vec<f32> {
        let half = inv_freq.len();
        let mut y = vec![0.0; x.len()];
        for (r, row) in x.chunks(heads * 2 * half).enumerate() {
            let position = (first + r % seq_len) as f64;
            for h in 0..heads {
                for i in 0..half {
                    let (c, s) = ((position * inv_freq[i]).cos(), sign * (position * inv_freq[i]).sin());
                    let (x1, x2) = (row[h * 2 * half + i] as f64, row[h * 2 * half + i + half] as f64);
                    let base = r * heads * 2 * half + h * 2 * half;
                    y[base + i] = (x1 * c - x2 * s) as f32;
                    y[base + i + half] = (x2 * c + x1 * s) as f32;
                }
            }
        }
        y
    }

    #[test]
    fn rotation_and_its_transpose_match_reference_over_awkward_shapes() {
        let gpu = gpu();
        // (batch, seq_len, heads, head_dim, first_position)
        for (n, &(batch, seq_len, heads, head_dim, first)) in [
            (1, 1, 1, 2, 0),
            (3, 17, 3, 8, 0),
            (2, 65, 2, 34, 0),
            (1, 1, 4, 128, 63),
            (2, 3, 1, 254, 5),
            (1, 127, 1, 16, 1),
        ]
        .iter()
        .enumerate()
        {
            let inv_freq = inverse_frequencies(head_dim, 10000.0, &RopeScaling::None);
            let table = RopeTable::new(&gpu, &inv_freq, first + seq_len).unwrap();
            let host = random(batch * seq_len * heads * head_dim, n as u64);
            let x = Tensor::from_f32(&gpu, &[batch, seq_len, heads * head_dim], &host).unwrap();
            for (direction, sign) in [(Direction::Forward, 1.0), (Direction::Backward, -1.0)] {
                let y = rope(&x, &table, heads, seq_len, first, direction).unwrap().to_f32().unwrap();
                assert_close(&y, &reference(&host, &inv_freq, heads, seq_len, first, sign), 2e-6);
            }
        }
    }

    #[test]
    fn backward_is_the_transpose_of_forward() {
        // <rope(x), g> = <x, rope_backward(g)> for any x, g; and backward undoes forward.
        let gpu = gpu();
        let (seq_len, heads, head_dim) = (9, 3, 12);
        let inv_freq = inverse_frequencies(head_dim, 500.0, &RopeScaling::Linear { factor: 2.0 });
        let table = RopeTable::new(&gpu, &inv_freq, seq_len).unwrap();
        let n = 2 * seq_len * heads * head_dim;
        let (xh, gh) = (random(n, 1), random(n, 2));
        let x = Tensor::from_f32(&gpu, &[2 * seq_len, heads * head_dim], &xh).unwrap();
        let g = Tensor::from_f32(&gpu, &[2 * seq_len, heads * head_dim], &gh).unwrap();
        let y = rope(&x, &table, heads, seq_len, 0, Direction::Forward).unwrap();
        let dx = rope(&g, &table, heads, seq_len, 0, Direction::Backward).unwrap().to_f32().unwrap();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>();
        let (lhs, rhs) = (dot(&y.to_f32().unwrap(), &gh), dot(&xh, &dx));
        assert!((lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
        let back = rope(&y, &table, heads, seq_len, 0, Direction::Backward).unwrap().to_f32().unwrap();
        assert_close(&back, &xh, 1e-6);
    }

    #[test]
    fn scaled_frequencies_follow_the_rope_type() {
        let plain = inverse_frequencies(16, 10000.0, &RopeScaling::None);
        assert_eq!(plain.len(), 8);
        assert_eq!(plain[0], 1.0);
        assert!((plain[1] - 10000f64.powf(-2.0 / 16.0)).abs() < 1e-15);
        let linear = inverse_frequencies(16, 10000.0, &RopeScaling::Linear { factor: 4.0 });
        assert!(linear.iter().zip(&plain).all(|(l, p)| (l * 4.0 - p).abs() < 1e-15));
        // Wavelengths 2π/f: 6.3, 19.9, 62.8, 199, ... against 64/4 = 16 and 64/1 = 64.
        let llama3 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        };
        let scaled = inverse_frequencies(16, 10000.0, &llama3);
        assert_eq!(scaled[0], plain[0], "short wavelengths are kept");
        for i in 3..8 {
            assert!((scaled[i] * 8.0 - plain[i]).abs() < 1e-15, "long wavelength {i} is divided by the factor");
        }
        for i in 1..3 {
            let (wavelen, f) = (2.0 * std::f64::consts::PI / plain[i], plain[i]);
            let smooth = (64.0 / wavelen - 1.0) / 3.0;
            assert!(smooth > 0.0 && smooth < 1.0);
            assert!((scaled[i] - ((1.0 - smooth) * f / 8.0 + smooth * f)).abs() < 1e-15);
            assert!(scaled[i] < f && scaled[i] > f / 8.0, "medium wavelengths blend");
        }
    }

    #[test]
    fn positions_beyond_the_table_are_refused() {
        let gpu = gpu();
        let table = RopeTable::new(&gpu, &inverse_frequencies(4, 10000.0, &RopeScaling::None), 4).unwrap();
        let x = Tensor::zeros(&gpu, &[1, 3, 4], DType::F32).unwrap();
        let err = rope(&x, &table, 1, 3, 2, Direction::Forward).unwrap_err().to_string();
        assert!(err.contains("positions 2..5 exceed the table's 4 positions"), "{err}");
        let err = rope(&x, &table, 2, 3, 0, Direction::Forward).unwrap_err().to_string();
        assert!(err.contains("not whole sequences"), "{err}");
    }
}
