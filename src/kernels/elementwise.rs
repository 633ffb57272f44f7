//! Elementwise ops: fill, scale, relu, gelu_new (T5 v1.1's tanh form), silu (Llama's SwiGLU),
//! axpby, add, mul and
//! the activation backwards. Launcher for `shaders/elementwise.wgsl`.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Launch, Shader};
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::shader!("elementwise");

const WG: u64 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    op: u32,
    alpha: f32,
    beta: f32,
}

pub(super) fn contract() -> ShaderContract {
    let params = crate::uniform_layout!("Params", Params { n, op, alpha, beta });
    ShaderContract { shader: &SHADER, uniforms: vec![params], constants: vec![("WG", WG)] }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Scale = 0,
    Relu = 1,
    GeluNew = 2,
    /// y = alpha * x + beta * y, in place on y.
    Axpby = 3,
    /// x * sigmoid(x)
    Silu = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add = 0,
    Mul = 1,
    /// upstream gradient a, forward input b: a * relu'(b)
    ReluBackward = 2,
    /// upstream gradient a, forward input b: a * gelu_new'(b)
    GeluNewBackward = 3,
    /// upstream gradient a, forward input b: a * silu'(b)
    SiluBackward = 4,
}

fn check_f32(what: &str, tensors: &[&Tensor]) -> Result<usize> {
    let n = tensors[0].len();
    for t in tensors {
        if t.dtype() != DType::F32 {
            bail!("{what}: expected f32 tensors, got {:?}", t.dtype());
        }
        if t.len() != n {
            bail!("{what}: element counts differ: {:?} vs {:?}", tensors[0].shape(), t.shape());
        }
    }
    if n > u32::MAX as usize {
        bail!("{what}: {n} elements exceed the 32-bit index range");
    }
    Ok(n)
}

fn launch(
    entry: &'static str,
    n: usize,
    op: u32,
    alpha: f32,
    beta: f32,
    read: &[&Tensor],
    write: &Tensor,
) -> Result<()> {
    let params = Params { n: n as u32, op, alpha, beta };
    write.gpu().launch(&Launch {
        shader: &SHADER,
        entry,
        constants: &[],
        params: bytemuck::bytes_of(&params),
        read,
        write: &[write],
        workgroups: grid_1d((n as u64).div_ceil(WG)),
        loop_iterations: 0,
        workgroup_bytes: 0,
    })
}

/// Records y = value for every element.
pub fn fill(y: &Tensor, value: f32) -> Result<()> {
    let n = check_f32("fill", &[y])?;
    launch("fill", n, 0, value, 0.0, &[], y)
}

/// Records y = op(x) into an existing tensor (`Axpby` also reads y).
pub fn unary_into(op: Unary, x: &Tensor, y: &Tensor, alpha: f32, beta: f32) -> Result<()> {
    let n = check_f32("unary", &[x, y])?;
    launch("unary", n, op as u32, alpha, beta, &[x], y)
}

pub fn unary(op: Unary, x: &Tensor, alpha: f32) -> Result<Tensor> {
    let y = Tensor::uninit(x.gpu(), x.shape(), DType::F32)?;
    unary_into(op, x, &y, alpha, 0.0)?;
    Ok(y)
}

/// Records out = op(a, b) into an existing tensor.
pub fn binary_into(op: Binary, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()> {
    let n = check_f32("binary", &[a, b, out])?;
    launch("binary", n, op as u32, 0.0, 0.0, &[a, b], out)
}

pub fn binary(op: Binary, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = Tensor::uninit(a.gpu(), a.shape(), DType::F32)?;
    binary_into(op, a, b, &out)?;
    Ok(out)
}

pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    unary(Unary::Scale, x, alpha)
}
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary(Unary::Relu, x, 1.0)
}
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    unary(Unary::GeluNew, x, 1.0)
}
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary(Unary::Silu, x, 1.0)
}
/// y ← alpha·x + y
pub fn axpy(alpha: f32, x: &Tensor, y: &Tensor) -> Result<()> {
    unary_into(Unary::Axpby, x, y, alpha, 1.0)
}
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(Binary::Add, a, b)
}
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(Binary::Mul, a, b)
}
pub fn relu_backward(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    binary(Binary::ReluBackward, dy, x)
}
pub fn gelu_new_backward(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    binary(Binary::GeluNewBackward, dy, x)
}
pub fn silu_backward(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    binary(Binary::SiluBackward, dy, x)
}

/// CPU references (f64 inside), shared with the model tests.
pub mod reference {
    const C: f64 = 0.7978845608028654;
    pub fn gelu_new(x: f32) -> f32 {
        let x = x as f64;
        (0.5 * x * (1.0 + (C * (x + 0.044715 * x.powi(3))).tanh())) as f32
    }
    pub fn gelu_new_grad(x: f32) -> f32 {
        let x = x as f64;
        let t = (C * (x + 0.044715 * x.powi(3))).tanh();
        (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044715 * x * x)) as f32
    }
    pub fn silu(x: f32) -> f32 {
        let x = x as f64;
        (x / (1.0 + (-x).exp())) as f32
    }
    pub fn silu_grad(x: f32) -> f32 {
        let x = x as f64;
        let s = 1.0 / (1.0 + (-x).exp());
        (s * (1.0 + x * (1.0 - s))) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{assert_close, random};

    type UnaryCase = (Unary, fn(f32) -> f32);
    type BinaryCase = (Binary, fn(f32, f32) -> f32);

    const SIZES: &[usize] = &[1, 3, 17, 63, 64, 65, 127, 255, 256, 257, 4099];

    #[test]
    fn unary_ops_match_reference() {
        let gpu = gpu();
        for &n in SIZES {
            let xs: Vec<f32> = random(n, n as u64).iter().map(|v| v * 4.0).collect();
            let x = Tensor::from_f32(&gpu, &[n], &xs).unwrap();
            let cases: [UnaryCase; 4] = [
                (Unary::Scale, |v| -1.5 * v),
                (Unary::Relu, |v| v.max(0.0)),
                (Unary::GeluNew, reference::gelu_new),
                (Unary::Silu, reference::silu),
            ];
            for (op, f) in cases {
                let y = unary(op, &x, -1.5).unwrap().to_f32().unwrap();
                let want: Vec<f32> = xs.iter().map(|&v| f(v)).collect();
                assert_close(&y, &want, 1e-5);
            }
        }
    }

    #[test]
    fn axpy_fill_and_binary_ops_match_reference() {
        let gpu = gpu();
        for &n in SIZES {
            let a = random(n, 1 + n as u64);
            let bv: Vec<f32> = random(n, 2 + n as u64).iter().map(|v| v * 3.0).collect();
            let ta = Tensor::from_f32(&gpu, &[n], &a).unwrap();
            let tb = Tensor::from_f32(&gpu, &[n], &bv).unwrap();
            let cases: [BinaryCase; 5] = [
                (Binary::Add, |a, b| a + b),
                (Binary::Mul, |a, b| a * b),
                (Binary::ReluBackward, |a, b| if b > 0.0 { a } else { 0.0 }),
                (Binary::GeluNewBackward, |a, b| a * reference::gelu_new_grad(b)),
                (Binary::SiluBackward, |a, b| a * reference::silu_grad(b)),
            ];
            for (op, f) in cases {
                let got = binary(op, &ta, &tb).unwrap().to_f32().unwrap();
                let want: Vec<f32> = a.iter().zip(&bv).map(|(&x, &y)| f(x, y)).collect();
                assert_close(&got, &want, 1e-5);
            }
            let y = Tensor::from_f32(&gpu, &[n], &bv).unwrap();
            axpy(0.25, &ta, &y).unwrap();
            let want: Vec<f32> = a.iter().zip(&bv).map(|(&x, &y)| 0.25 * x + y).collect();
            assert_close(&y.to_f32().unwrap(), &want, 1e-6);
            fill(&y, 7.0).unwrap();
            assert!(y.to_f32().unwrap().iter().all(|&v| v == 7.0));
        }
    }

    #[test]
    fn activation_gradients_match_finite_differences() {
        type Pair = (fn(f32) -> f32, fn(f32) -> f32);
        let pairs: [Pair; 2] =
            [(reference::gelu_new, reference::gelu_new_grad), (reference::silu, reference::silu_grad)];
        for (f, grad) in pairs {
            for i in -40..=40 {
                let x = i as f32 * 0.1;
                let h = 1e-3f64;
                let fd = (f((x as f64 + h) as f32) as f64 - f((x as f64 - h) as f32) as f64) / (2.0 * h);
                assert!((fd - grad(x) as f64).abs() < 2e-3, "x={x}");
            }
        }
    }

    #[test]
    fn silu_stays_finite_far_out() {
        let gpu = gpu();
        let xs = [-200.0f32, -90.0, 90.0, 200.0];
        let x = Tensor::from_f32(&gpu, &[4], &xs).unwrap();
        let ones = Tensor::from_f32(&gpu, &[4], &[1.0; 4]).unwrap();
        let y = silu(&x).unwrap().to_f32().unwrap();
        let dy = silu_backward(&ones, &x).unwrap().to_f32().unwrap();
        assert_close(&y, &[0.0, 0.0, 90.0, 200.0], 1e-6);
        assert_close(&dy, &[0.0, 0.0, 1.0, 1.0], 1e-6);
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let gpu = gpu();
        let a = Tensor::zeros(&gpu, &[3], DType::F32).unwrap();
        let b = Tensor::zeros(&gpu, &[4], DType::F32).unwrap();
        let err = add(&a, &b).unwrap_err().to_string();
        assert!(err.contains("element counts differ"), "{err}");
    }
}
