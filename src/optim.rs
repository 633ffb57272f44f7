//! Optimizer layer: learning-rate schedules and AdamW hyperparameters. The per-element
//! update runs on the GPU in `kernels::adamw`.

use serde::{Deserialize, Serialize};

pub use crate::kernels::adamw::{AdamWStep, Moments};

/// Learning-rate schedule, evaluated on the host once per optimizer step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    Constant,
    /// Linear warmup over `warmup` steps, then linear decay towards 0 at `total` steps.
    /// Like transformers' linear schedule, but the first step already trains (factor 1/warmup, not 0).
    Linear {
        warmup: u64,
        total: u64,
    },
}

impl Schedule {
    /// The factor on the base learning rate at 1-based optimizer step `step`.
    pub fn factor(&self, step: u64) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Linear { warmup, total } => {
                if step <= warmup {
                    step as f64 / warmup.max(1) as f64
                } else {
                    let done = (step - 1) as f64;
                    ((total as f64 - done) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
                }
            }
        }
    }
}

/// AdamW settings of a run (torch.optim.AdamW defaults where not stated).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub max_grad_norm: f32,
    pub schedule: Schedule,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            schedule: Schedule::Constant,
        }
    }
}

impl AdamWConfig {
    /// The kernel's view of 1-based optimizer step `step`.
    pub fn step(&self, step: u64) -> AdamWStep {
        AdamWStep {
            lr: (self.lr as f64 * self.schedule.factor(step)) as f32,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            step,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_warms_up_then_decays_to_zero() {
        let s = Schedule::Linear { warmup: 2, total: 6 };
        let f: Vec<f64> = (1..=7).map(|t| s.factor(t)).collect();
        assert_eq!(f, vec![0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(Schedule::Constant.factor(1000), 1.0);
    }

    #[test]
    fn config_step_scales_the_learning_rate() {
        let c = AdamWConfig { lr: 1e-2, schedule: Schedule::Linear { warmup: 2, total: 100 }, ..Default::default() };
        assert_eq!(c.step(1).lr, 5e-3);
        assert_eq!(c.step(2).lr, 1e-2);
        assert_eq!(c.step(1).step, 1);
    }
}
