//! AdamW (torch.optim.AdamW semantics) fused with global gradient-norm clipping.
//! Launcher for `shaders/adamw.wgsl`.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Launch, Shader};
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::shader!("adamw");

const WG: u64 = 256;

/// Hyperparameters of one AdamW step; `lr` already includes the schedule.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clip (0 = off), applied from `grad_sumsq` inside the kernel.
    pub max_grad_norm: f32,
    /// 1-based step count, for bias correction.
    pub step: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    max_grad_norm: f32,
    _pad: [u32; 3],
}

pub(super) fn contract() -> ShaderContract {
    let params = crate::uniform_layout!(
        "Params",
        Params { n, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt, max_grad_norm, _pad }
    );
    ShaderContract { shader: &SHADER, uniforms: vec![params], constants: vec![("WG", WG)] }
}

impl AdamWStep {
    fn params(&self, n: usize) -> Params {
        let t = self.step as i32;
        Params {
            n: n as u32,
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            bias_correction1: (1.0 - (self.beta1 as f64).powi(t)) as f32,
            bias_correction2_sqrt: (1.0 - (self.beta2 as f64).powi(t)).sqrt() as f32,
            max_grad_norm: self.max_grad_norm,
            _pad: [0; 3],
        }
    }
}

/// The first and second moments of one parameter.
pub struct Moments {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

impl Moments {
    pub fn zeros_like(param: &Tensor) -> Result<Moments> {
        Ok(Moments {
            exp_avg: Tensor::zeros(param.gpu(), param.shape(), DType::F32)?,
            exp_avg_sq: Tensor::zeros(param.gpu(), param.shape(), DType::F32)?,
        })
    }
}

fn check(step: &AdamWStep, param: &Tensor, grad: &Tensor, grad_sumsq: &Tensor, moments: &Moments) -> Result<usize> {
    if step.step == 0 {
        bail!("AdamW steps are counted from 1");
    }
    let n = param.len();
    for (name, t) in [("gradient", grad), ("exp_avg", &moments.exp_avg), ("exp_avg_sq", &moments.exp_avg_sq)] {
        if t.len() != n || t.dtype() != DType::F32 {
            bail!("AdamW: {name} {:?} {:?} does not match parameter {:?}", t.shape(), t.dtype(), param.shape());
        }
    }
    if grad_sumsq.len() != 1 {
        bail!("AdamW: grad_sumsq must hold one value, got shape {:?}", grad_sumsq.shape());
    }
    Ok(n)
}

fn launch(entry: &'static str, n: usize, step: &AdamWStep, read: &[&Tensor], write: &[&Tensor]) -> Result<()> {
    let params = step.params(n);
    read[0].gpu().launch(&Launch {
        shader: &SHADER,
        entry,
        constants: &[],
        params: bytemuck::bytes_of(&params),
        read,
        write,
        workgroups: grid_1d((n as u64).div_ceil(WG)),
        loop_iterations: 0,
        workgroup_bytes: 0,
    })
}

/// Records one AdamW step that updates `param` in place.
pub fn adamw_apply(
    step: &AdamWStep,
    param: &Tensor,
    grad: &Tensor,
    grad_sumsq: &Tensor,
    moments: &Moments,
) -> Result<()> {
    let n = check(step, param, grad, grad_sumsq, moments)?;
    launch("adamw_apply", n, step, &[grad, grad_sumsq], &[param, &moments.exp_avg, &moments.exp_avg_sq])
}

/// Records one AdamW step that writes the update (weight decay included) into `update`
/// and leaves `param` unchanged, so the update can be projected before it is applied.
pub fn adamw_update(
    step: &AdamWStep,
    param: &Tensor,
    grad: &Tensor,
    grad_sumsq: &Tensor,
    moments: &Moments,
    update: &Tensor,
) -> Result<()> {
    let n = check(step, param, grad, grad_sumsq, moments)?;
    if update.len() != n {
        bail!("AdamW: update {:?} does not match parameter {:?}", update.shape(), param.shape());
    }
    launch("adamw_update", n, step, &[grad, grad_sumsq, param], &[&moments.exp_avg, &moments.exp_avg_sq, update])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{assert_close, random};

    /// torch.optim.AdamW after torch.nn.utils.clip_grad_norm_, in f64.
    fn reference(steps: &[AdamWStep], p0: &[f32], grads: &[Vec<f32>]) -> Vec<f32> {
        let mut p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
        let (mut m, mut v) = (vec![0.0f64; p.len()], vec![0.0f64; p.len()]);
        for (s, g) in steps.iter().zip(grads) {
            let norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let clip = if s.max_grad_norm > 0.0 { (s.max_grad_norm as f64 / (norm + 1e-6)).min(1.0) } else { 1.0 };
            let (b1, b2, lr) = (s.beta1 as f64, s.beta2 as f64, s.lr as f64);
            let t = s.step as i32;
            for i in 0..p.len() {
                let gi = g[i] as f64 * clip;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p[i] *= 1.0 - lr * s.weight_decay as f64;
                let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + s.eps as f64;
                p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
            }
        }
        p.iter().map(|&x| x as f32).collect()
    }

    fn steps(max_grad_norm: f32) -> Vec<AdamWStep> {
        (1..=3)
            .map(|t| AdamWStep {
                lr: 1e-2 * (t as f32).min(2.0) / 2.0,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                max_grad_norm,
                step: t,
            })
            .collect()
    }

    #[test]
    fn three_steps_match_torch_semantics_with_and_without_clipping() {
        let gpu = gpu();
        for &n in &[1usize, 3, 17, 255, 1000] {
            for clip in [0.0f32, 0.5] {
                let p0 = random(n, n as u64);
                let grads: Vec<Vec<f32>> = (0..3).map(|s| random(n, 100 + s + n as u64)).collect();
                let want = reference(&steps(clip), &p0, &grads);

                // In place, and as a separate update added afterwards: both must agree with torch.
                let in_place = Tensor::from_f32(&gpu, &[n], &p0).unwrap();
                let projected_path = Tensor::from_f32(&gpu, &[n], &p0).unwrap();
                let (m1, m2) = (Moments::zeros_like(&in_place).unwrap(), Moments::zeros_like(&in_place).unwrap());
                let update = Tensor::zeros(&gpu, &[n], DType::F32).unwrap();
                for (s, g) in steps(clip).iter().zip(&grads) {
                    let grad = Tensor::from_f32(&gpu, &[n], g).unwrap();
                    let sumsq: f32 = g.iter().map(|x| x * x).sum();
                    let sumsq = Tensor::from_f32(&gpu, &[1], &[sumsq]).unwrap();
                    adamw_apply(s, &in_place, &grad, &sumsq, &m1).unwrap();
                    adamw_update(s, &projected_path, &grad, &sumsq, &m2, &update).unwrap();
                    crate::kernels::elementwise::axpy(1.0, &update, &projected_path).unwrap();
                }
                assert_close(&in_place.to_f32().unwrap(), &want, 1e-6);
                assert_close(&projected_path.to_f32().unwrap(), &want, 1e-6);
            }
        }
    }

    #[test]
    fn step_zero_and_mismatched_moments_are_refused() {
        let gpu = gpu();
        let p = Tensor::zeros(&gpu, &[4], DType::F32).unwrap();
        let g = Tensor::zeros(&gpu, &[5], DType::F32).unwrap();
        let sumsq = Tensor::zeros(&gpu, &[1], DType::F32).unwrap();
        let m = Moments::zeros_like(&p).unwrap();
        let mut s = steps(0.0)[0];
        assert!(adamw_apply(&s, &p, &g, &sumsq, &m).unwrap_err().to_string().contains("gradient"));
        s.step = 0;
        assert!(adamw_apply(&s, &p, &p, &sumsq, &m).unwrap_err().to_string().contains("counted from 1"));
    }
}
