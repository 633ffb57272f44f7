//! Optimizer layer: learning-rate schedules and AdamW hyperparameters. The per-element
//! update runs on the GPU in `kernels::adamw`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::kernels::adamw::{adamw_apply, adamw_update};
pub use crate::kernels::adamw::{AdamWStep, Moments};
use crate::kernels::elementwise::axpy;
use crate::kernels::reduce::sum_squares;
use crate::tensor::{DType, Tensor};

/// Rewrites the update of some parameters before it is applied (OSFT's projection).
pub trait UpdateFilter {
    /// True when `name`'s update must pass through [`UpdateFilter::filter`].
    fn filters(&self, name: &str) -> bool;
    /// Records the rewrite of `update` in place.
    fn filter(&self, name: &str, update: &Tensor) -> Result<()>;
    /// True when `name` gets no update at all: its weights and moments stay as they are,
    /// and its gradient is left out of the global norm used for clipping.
    fn freezes(&self, _name: &str) -> bool {
        false
    }
}

/// No filter: plain AdamW.
pub struct Unconstrained;

impl UpdateFilter for Unconstrained {
    fn filters(&self, _: &str) -> bool {
        false
    }
    fn filter(&self, _: &str, _: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// AdamW over a set of named parameters, with its moments on the GPU.
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimizer steps taken so far.
    pub step: u64,
    pub moments: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &BTreeMap<String, Tensor>) -> Result<AdamW> {
        let moments = params.iter().map(|(n, p)| Ok((n.clone(), Moments::zeros_like(p)?))).collect::<Result<_>>()?;
        Ok(AdamW { config, step: 0, moments })
    }

    /// Records one optimizer step over every parameter that has a gradient and that the
    /// filter does not freeze. Clipping uses the global gradient norm computed on the GPU;
    /// the returned `[1]` tensor holds the squared norm (before clipping), to be read back
    /// with the loss. Filtered parameters get their gradient rewritten before AdamW sees
    /// it, and their whole update (weight decay included) rewritten before it is applied.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        grads: &BTreeMap<String, Tensor>,
        filter: &dyn UpdateFilter,
    ) -> Result<Tensor> {
        let names: Vec<&String> = params.keys().filter(|n| grads.contains_key(*n) && !filter.freezes(n)).collect();
        if names.is_empty() {
            bail!("optimizer step with no gradients (or every parameter frozen)");
        }
        let grad_list: Vec<&Tensor> = names.iter().map(|n| &grads[*n]).collect();
        let sumsq = sum_squares(&grad_list)?;
        self.step += 1;
        let step = self.config.step(self.step);
        for name in names {
            let (param, grad) = (&params[name], &grads[name]);
            let Some(moments) = self.moments.get(name) else { bail!("no optimizer state for parameter {name}") };
            if filter.filters(name) {
                // The gradient is filtered too: the moments then only see the trainable part,
                // and the step stays a descent direction (⟨g, P(d ∘ Pg)⟩ = Σ d (Pg)² ≥ 0 for a
                // projection P). Filtering the update alone is not: when most of the gradient
                // lies in the frozen subspace, AdamW's per-element scaling moves it out, and
                // the projected step can raise the loss.
                let filtered = Tensor::uninit(param.gpu(), grad.shape(), grad.dtype())?;
                filtered.copy_from(grad)?;
                filter.filter(name, &filtered)?;
                let update = Tensor::uninit(param.gpu(), param.shape(), DType::F32)?;
                adamw_update(&step, param, &filtered, &sumsq, moments, &update)?;
                filter.filter(name, &update)?;
                axpy(1.0, &update, param)?;
            } else {
                adamw_apply(&step, param, grad, &sumsq, moments)?;
            }
        }
        Ok(sumsq)
    }
}

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
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{assert_close, random};

    type Named = BTreeMap<String, Tensor>;

    /// Random parameters of `shape` under `names`, and random gradients for them: the i-th
    /// parameter from seed `seed + i`, its gradient from seed `seed + 10 + i`.
    fn params_and_grads(names: &[&str], shape: &[usize], seed: u64) -> (Named, Named) {
        let gpu = gpu();
        let len = shape.iter().product();
        let tensor = |seed| Tensor::from_f32(&gpu, shape, &random(len, seed)).unwrap();
        let mut params = BTreeMap::new();
        let mut grads = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            params.insert(name.to_string(), tensor(seed + i as u64));
            grads.insert(name.to_string(), tensor(seed + 10 + i as u64));
        }
        (params, grads)
    }

    /// Zeroes the update of every parameter whose name starts with "frozen".
    struct FreezeByName;
    impl UpdateFilter for FreezeByName {
        fn filters(&self, name: &str) -> bool {
            name.starts_with("frozen")
        }
        fn filter(&self, _: &str, update: &Tensor) -> Result<()> {
            update.fill_zero()
        }
    }

    #[test]
    fn step_updates_free_parameters_and_routes_filtered_ones_through_the_filter() {
        let (params, grads) = params_and_grads(&["frozen.w", "free.w"], &[3, 5], 0);
        let before: Vec<Vec<f32>> = params.values().map(|p| p.to_f32().unwrap()).collect();
        let mut opt = AdamW::new(AdamWConfig::default(), &params).unwrap();
        let sumsq = opt.step(&params, &grads, &FreezeByName).unwrap();
        let want: f32 = grads.values().flat_map(|g| g.to_f32().unwrap()).map(|v| v * v).sum();
        assert_close(&sumsq.to_f32().unwrap(), &[want], 1e-5);
        assert_eq!(params["frozen.w"].to_f32().unwrap(), before[1], "filtered update was zeroed");
        let moment = opt.moments["frozen.w"].exp_avg.to_f32().unwrap();
        assert!(moment.iter().all(|&m| m == 0.0), "the moments saw the filtered (zeroed) gradient");
        assert_ne!(params["free.w"].to_f32().unwrap(), before[0], "free parameter moved");
        assert_eq!(opt.step, 1);
    }

    /// Freezes every parameter whose name starts with "fixed".
    struct FreezeFixed;
    impl UpdateFilter for FreezeFixed {
        fn filters(&self, _: &str) -> bool {
            false
        }
        fn filter(&self, _: &str, _: &Tensor) -> Result<()> {
            Ok(())
        }
        fn freezes(&self, name: &str) -> bool {
            name.starts_with("fixed")
        }
    }

    #[test]
    fn frozen_parameters_keep_weights_and_moments_and_leave_the_norm() {
        let (params, grads) = params_and_grads(&["fixed.w", "free.w"], &[4, 3], 20);
        let fixed = params["fixed.w"].to_vec::<u32>().unwrap();
        let free = params["free.w"].to_f32().unwrap();
        let mut opt = AdamW::new(AdamWConfig::default(), &params).unwrap();
        let mut sumsq = None;
        for _ in 0..3 {
            sumsq = Some(opt.step(&params, &grads, &FreezeFixed).unwrap());
        }
        assert_eq!(params["fixed.w"].to_vec::<u32>().unwrap(), fixed, "frozen weights are bit-identical");
        assert!(opt.moments["fixed.w"].exp_avg.to_f32().unwrap().iter().all(|&m| m == 0.0));
        assert_ne!(params["free.w"].to_f32().unwrap(), free, "the free parameter moved");
        let want: f32 = grads["free.w"].to_f32().unwrap().iter().map(|v| v * v).sum();
        assert_close(&sumsq.unwrap().to_f32().unwrap(), &[want], 1e-5);
    }

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
