//! `sculpt bench forward|step`: a T5-shaped random model (t5-small by default) on
//! batch × tokens source and target tokens. `forward` times encoder + decoder + LM head +
//! loss; `step` times a whole training step (forward, backward, AdamW) without and with
//! OSFT's projection, and the SVD pass that builds the frozen subspaces at a task start.
//! Both report the share of GPU time spent in matmul kernels (timestamp queries).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::model::Gradients;
use crate::model::Model;
use crate::model::{Batch, T5Config, T5Model};
use crate::optim::{AdamW, AdamWConfig, Unconstrained, UpdateFilter};
use crate::subspace::project::FrozenSubspace;
use crate::subspace::set::RankChoice;
use crate::subspace::targets::is_target;
use crate::subspace::{Mode, RankPolicy, SubspaceSet};
use crate::tensor::Tensor;

#[derive(clap::Args, Clone, Copy)]
pub struct ModelArgs {
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Source tokens per example (and as many target tokens).
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Encoder and decoder layers (t5-small: 6); fewer make the figures quicker to get on a slow adapter.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// d_model (t5-small: 512), with d_ff = 4 × d_model and 8 heads; smaller is quicker on a slow adapter.
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Timed repetitions (the mean is reported, after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// step: build the frozen subspaces from random orthonormal bases of the ranks the policy
    /// gives instead of the SVD pass. The projection costs the same; this gets the projection
    /// share on adapters where the t5-small SVD pass takes too long.
    #[arg(long)]
    random_subspaces: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

struct Setup {
    model: T5Model,
    batch: Batch,
}

fn setup(gpu: &crate::Gpu, args: &ModelArgs) -> Result<Setup> {
    let mut config = T5Config::t5_small();
    config.num_layers = args.layers;
    config.set_num_decoder_layers(args.layers);
    if args.width == 0 || !args.width.is_multiple_of(config.num_heads) {
        bail!("--width must be a positive multiple of {} (the heads)", config.num_heads);
    }
    config.d_model = args.width;
    config.d_ff = 4 * args.width;
    config.d_kv = args.width / config.num_heads;
    let model = T5Model::random(gpu, config.clone(), false, 0.05, 1)?;
    let mut rng = crate::rng::Rng::new(2);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| 2 + rng.below(config.vocab_size - 2) as u32).collect() };
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..args.batch).map(|_| (ids(args.tokens), ids(args.tokens))).collect();
    let batch = Batch::new(&pairs, config.pad_token_id, config.decoder_start_token_id)?;
    Ok(Setup { model, batch })
}

/// Mean wall time of `f` over `runs` calls after one warm-up (pipelines, buffer pool).
fn mean_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let start = Instant::now();
    for _ in 0..runs.max(1) {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / runs.max(1) as f64)
}

/// GPU time of one call by kernel.
struct Profile {
    total_ms: f64,
    matmul_ms: f64,
    /// (entry point, dispatches, ms), costliest first.
    kernels: Vec<(String, u64, f64)>,
}

/// The GPU profile of one call of `f`; None when the adapter has no timestamp queries.
fn profile(gpu: &crate::Gpu, f: impl FnOnce() -> Result<()>) -> Result<Option<Profile>> {
    let profiling = gpu.set_profiling(true);
    let rows = f().and_then(|_| gpu.take_profile());
    gpu.set_profiling(false);
    let rows = rows?;
    if !profiling {
        return Ok(None);
    }
    // Every matmul variant: the portable module and the subgroup one.
    let mut matmul_entries = Vec::new();
    for shader in [&crate::kernels::matmul::SHADER, &crate::kernels::matmul::SUBGROUP_SHADER] {
        let (module, _) = crate::gpu::validate_wgsl(shader)?;
        matmul_entries.extend(module.entry_points.iter().map(|e| e.name.clone()));
    }
    let total_ms: f64 = rows.iter().map(|r| r.2).sum();
    let matmul_ms: f64 = rows.iter().filter(|r| matmul_entries.contains(&r.0)).map(|r| r.2).sum();
    Ok(Some(Profile { total_ms, matmul_ms, kernels: rows }))
}

fn describe(args: &ModelArgs) -> String {
    format!(
        "t5-small shape ({} + {} layers, d_model {}), random weights, batch {} x {} source and target tokens",
        args.layers, args.layers, args.width, args.batch, args.tokens
    )
}

fn print_profile(label: &str, profile: &Option<Profile>) {
    match profile {
        Some(Profile { total_ms, matmul_ms, kernels }) => {
            println!(
                "{label:<14}{total_ms:.1} ms in kernels, {matmul_ms:.1} ms in matmul ({:.1}%)",
                100.0 * matmul_ms / total_ms
            );
            for (entry, count, ms) in kernels.iter().take(8) {
                println!("  {entry:<24} {count:>5} dispatches {ms:>9.2} ms");
            }
        }
        None => println!("{label:<14}unavailable: the adapter has no timestamp queries"),
    }
}

#[derive(Serialize)]
struct ForwardBench {
    batch: usize,
    tokens: usize,
    layers: usize,
    forward_ms: f64,
    profiled_ms: Option<f64>,
    matmul_share: Option<f64>,
}

pub fn forward(gpu: &crate::Gpu, args: &ModelArgs) -> Result<()> {
    let Setup { model, batch } = setup(gpu, args)?;
    let run = || -> Result<()> {
        model.forward(&batch, None)?.loss.context("random targets have labels")?.to_f32()?;
        Ok(())
    };
    let forward_ms = mean_ms(args.runs, run)?;
    let prof = profile(gpu, run)?;
    let result = ForwardBench {
        batch: args.batch,
        tokens: args.tokens,
        layers: args.layers,
        forward_ms,
        profiled_ms: prof.as_ref().map(|p| p.total_ms),
        matmul_share: prof.as_ref().map(|p| p.matmul_ms / p.total_ms),
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    println!("{}", describe(args));
    println!("forward      {forward_ms:.1} ms (encoder + decoder + LM head + loss, mean of {})", args.runs);
    print_profile("GPU time", &prof);
    Ok(())
}

#[derive(Serialize)]
struct StepBench {
    batch: usize,
    tokens: usize,
    layers: usize,
    /// Plain fine-tuning step: forward, backward, AdamW.
    step_ms: f64,
    tokens_per_s: f64,
    matmul_share: Option<f64>,
    /// The same step with every target matrix's update projected (strict mode).
    osft_step_ms: f64,
    osft_tokens_per_s: f64,
    /// Projection time over plain step + projection time: the projection pass timed alone
    /// (GPU time where the adapter has timestamps, else wall time) times the passes an osft
    /// step makes, beside the plain step in the same run.
    projection_share: f64,
    /// Batched SVD of every target matrix and the subspace build at a task start (None with
    /// --random-subspaces).
    svd_pass_ms: Option<f64>,
}

/// Passes updates on to `inner`, counting the projections.
struct CountingFilter<'a> {
    inner: &'a dyn UpdateFilter,
    calls: Cell<usize>,
}

impl UpdateFilter for CountingFilter<'_> {
    fn filters(&self, name: &str) -> bool {
        self.inner.filters(name)
    }
    fn filter(&self, name: &str, update: &Tensor) -> Result<()> {
        self.calls.set(self.calls.get() + 1);
        self.inner.filter(name, update)
    }
}

/// Frozen subspaces of the ranks `policy` gives at importance 0.5, from random orthonormal
/// bases (one per matrix shape) instead of the SVD.
fn random_subspaces(model: &T5Model, targets: &[String], policy: RankPolicy, mode: Mode) -> Result<SubspaceSet> {
    let mut rng = crate::rng::Rng::new(3);
    let mut orthonormal = |dim: usize, r: usize| -> Vec<f32> {
        let q = faer::Mat::<f64>::from_fn(dim, r, |_, _| rng.normal() as f64).qr().compute_thin_Q();
        (0..dim).flat_map(|i| (0..r).map(move |j| (i, j))).map(|(i, j)| q[(i, j)] as f32).collect()
    };
    let mut bases: BTreeMap<(usize, usize), (Vec<f32>, Vec<f32>)> = BTreeMap::new();
    let mut set = SubspaceSet::new(mode, policy);
    for (name, p) in &model.params {
        let (&[m, n], true) = (p.shape(), is_target(targets, name)) else { continue };
        let r = m.min(n);
        let (u, v) = bases.entry((m, n)).or_insert_with(|| (orthonormal(m, r), orthonormal(n, r)));
        let k = policy.frozen_rank(0.5, m, n, 1);
        let subspace = FrozenSubspace::from_svd(model.gpu(), (m, n), u, v, k, mode)?;
        set.insert(subspace, RankChoice { name: name.clone(), rows: m, cols: n, importance: 0.5, k });
    }
    Ok(set)
}

pub fn step(gpu: &crate::Gpu, args: &ModelArgs) -> Result<()> {
    let Setup { model, batch } = setup(gpu, args)?;
    let grads = Gradients::zeros_like(&model)?;
    let mut optimizer = AdamW::new(AdamWConfig { lr: 1e-5, ..Default::default() }, &model.params)?;
    let mut run = |filter: &dyn UpdateFilter| -> Result<()> {
        grads.zero()?;
        let out = model.forward(&batch, Some(&grads))?;
        model.backward(&batch, &out, &grads)?;
        let sumsq = optimizer.step(&model.params, &grads.grads, filter)?;
        out.loss.context("random targets have labels")?.to_f32()?;
        sumsq.to_f32()?;
        Ok(())
    };
    let tokens = (2 * args.batch * args.tokens) as f64;
    let step_ms = mean_ms(args.runs, || run(&Unconstrained))?;
    let prof = profile(gpu, || run(&Unconstrained))?;
    if !args.json {
        // Printed now: on a slow adapter the SVD pass that follows takes long.
        println!("{}", describe(args));
        println!(
            "step         {step_ms:.1} ms, {:.0} tokens/s (forward + backward + AdamW, mean of {})",
            tokens / step_ms * 1e3,
            args.runs
        );
        print_profile("GPU time", &prof);
    }

    let start = Instant::now();
    let targets = model.default_targets();
    let (set, svd_pass_ms) = if args.random_subspaces {
        (random_subspaces(&model, &targets, RankPolicy::BLOCK_MINMAX, Mode::Strict)?, None)
    } else {
        let set = SubspaceSet::build(&model.params, &targets, RankPolicy::BLOCK_MINMAX, Mode::Strict, |_| 0.5, 1)?;
        gpu.flush()?;
        (set, Some(start.elapsed().as_secs_f64() * 1e3))
    };
    let counting = CountingFilter { inner: &set, calls: Cell::new(0) };
    let osft_step_ms = mean_ms(args.runs, || run(&counting))?;
    let osft_prof = profile(gpu, || run(&set))?;
    // The projection alone, timed directly on updates shaped like the targets, times the
    // passes one step makes: the difference of two whole-step times drowns in the noise of a
    // shared machine.
    let passes = counting.calls.get() as f64 / ((args.runs + 1) * set.frozen.len()) as f64;
    let updates = set
        .frozen
        .iter()
        .map(|(name, s)| Ok((name, Tensor::from_f32(gpu, &[s.rows, s.cols], &vec![1e-3; s.rows * s.cols])?)))
        .collect::<Result<Vec<_>>>()?;
    let project_all = || -> Result<()> {
        for (name, update) in &updates {
            set.filter(name, update)?;
        }
        gpu.flush()
    };
    let pass_ms = mean_ms(args.runs, project_all)?;
    let pass_prof = profile(gpu, project_all)?;
    let projection_share = match (&prof, &pass_prof) {
        (Some(step), Some(pass)) => passes * pass.total_ms / (step.total_ms + passes * pass.total_ms),
        _ => passes * pass_ms / (step_ms + passes * pass_ms),
    };
    let result = StepBench {
        batch: args.batch,
        tokens: args.tokens,
        layers: args.layers,
        step_ms,
        tokens_per_s: tokens / step_ms * 1e3,
        matmul_share: prof.as_ref().map(|p| p.matmul_ms / p.total_ms),
        osft_step_ms,
        osft_tokens_per_s: tokens / osft_step_ms * 1e3,
        projection_share,
        svd_pass_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    match svd_pass_ms {
        Some(ms) => println!("svd pass     {ms:.1} ms ({} target matrices)", set.frozen.len()),
        None => println!("svd pass     skipped: random orthonormal subspaces ({} target matrices)", set.frozen.len()),
    }
    println!(
        "osft step    {osft_step_ms:.1} ms, {:.0} tokens/s; projection {:.1}% of the step",
        result.osft_tokens_per_s,
        100.0 * result.projection_share
    );
    print_profile("osft GPU time", &osft_prof);
    Ok(())
}
