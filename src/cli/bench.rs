//! `sculpt bench <kind>`: throughput of the hot kernels on this adapter.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::kernels::matmul::{gemm, Gemm, Variant};
use crate::{DType, Gpu, Tensor};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    kind: BenchKind,
}

#[derive(Subcommand)]
enum BenchKind {
    /// f32 GEMM GFLOP/s on the GPU beside single-threaded matrixmultiply::sgemm on the CPU.
    Matmul {
        /// One JSON object per case and line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Block-Jacobi SVD time and sweeps, in matmul units, beside faer on the CPU.
    Svd {
        /// One JSON object per case and line instead of a table.
        #[arg(long)]
        json: bool,
        /// Only these shapes, e.g. `--shape 256x256 --shape 512x512` (default: six shapes up to
        /// 1024x4096).
        #[arg(long, value_parser = super::svd::parse_shape)]
        shape: Vec<(usize, usize)>,
        /// Also print the GPU time per kernel (when the adapter has timestamp queries).
        #[arg(long)]
        profile: bool,
    },
    /// T5-small-shaped encoder + decoder forward time and its matmul share.
    Forward(super::bench_model::ModelArgs),
    /// A whole training step (tokens/s, matmul share), plain and with OSFT's projection,
    /// and the SVD pass at a task start.
    Step(super::bench_model::ModelArgs),
}

pub fn run(gpu: &Gpu, args: &Args) -> Result<()> {
    match &args.kind {
        BenchKind::Matmul { json } => matmul(gpu, *json),
        BenchKind::Svd { json, shape, profile } => super::svd::bench_svd(gpu, *json, shape, *profile),
        BenchKind::Forward(args) => super::bench_model::forward(gpu, args),
        BenchKind::Step(args) => super::bench_model::step(gpu, args),
    }
}

#[derive(Serialize)]
struct MatmulCase {
    name: String,
    m: usize,
    n: usize,
    k: usize,
    variant: &'static str,
    gflops: f64,
    cpu_gflops: f64,
    /// GPU over CPU throughput.
    ratio: f64,
    /// max |gpu - cpu| / max |cpu| over C, so that a fast wrong kernel is visible.
    max_rel_err: f64,
}

/// Each side runs at least this many timed repetitions, and more while under `MIN_TIME`.
const MIN_REPS: usize = 3;
const MAX_REPS: usize = 20;
const MIN_TIME: Duration = Duration::from_millis(1500);

/// Best time of one call of `f` after one warm-up call (pipeline builds, page faults).
pub(super) fn best_time(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let start = Instant::now();
    let mut best = f64::INFINITY;
    for rep in 0..MAX_REPS {
        if rep >= MIN_REPS && start.elapsed() > MIN_TIME {
            break;
        }
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn matmul(gpu: &Gpu, json: bool) -> Result<()> {
    let cases = [
        ("square-256", 256, 256, 256),
        ("square-512", 512, 512, 512),
        ("square-1024", 1024, 1024, 1024),
        ("square-2048", 2048, 2048, 2048),
        ("t5-4096x2048x512", 4096, 2048, 512),
    ];
    if !json {
        println!(
            "adapter {} ({}); CPU: matrixmultiply::sgemm, one thread; best of >= {MIN_REPS} runs",
            gpu.summary().name,
            gpu.summary().backend
        );
        println!(
            "{:<18} {:>5} {:>5} {:>5}  {:<16} {:>9} {:>9} {:>7} {:>9}",
            "case", "m", "n", "k", "variant", "GPU GF/s", "CPU GF/s", "ratio", "rel err"
        );
    }
    for (name, m, n, k) in cases {
        let case = matmul_case(gpu, name, m, n, k)?;
        if json {
            println!("{}", serde_json::to_string(&case)?);
        } else {
            println!(
                "{:<18} {:>5} {:>5} {:>5}  {:<16} {:>9.1} {:>9.1} {:>7.2} {:>9.1e}",
                case.name, m, n, k, case.variant, case.gflops, case.cpu_gflops, case.ratio, case.max_rel_err
            );
        }
    }
    Ok(())
}

fn matmul_case(gpu: &Gpu, name: &str, m: usize, n: usize, k: usize) -> Result<MatmulCase> {
    let mut rng = crate::rng::Rng::new(m as u64 ^ (n as u64) << 20 ^ (k as u64) << 40);
    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform() - 0.5).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.uniform() - 0.5).collect();
    let g = Gemm::new(m, n, k, false, false);
    let flops = g.flops();

    let ta = Tensor::from_f32(gpu, &[m, k], &a)?;
    let tb = Tensor::from_f32(gpu, &[k, n], &b)?;
    let tc = Tensor::uninit(gpu, &[m, n], DType::F32)?;
    let variant = Variant::choose(gpu, &g, &ta, &tb);
    let gpu_time = best_time(|| {
        gemm(&g, &ta, &tb, &tc)?;
        gpu.flush()
    })?;
    let got = tc.to_f32()?;

    let mut want = vec![0.0f32; m * n];
    let cpu_time = best_time(|| {
        // SAFETY: the pointers cover m*k, k*n and m*n elements laid out with the given strides.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                want.as_mut_ptr(),
                n as isize,
                1,
            )
        };
        Ok(())
    })?;
    let scale = want.iter().fold(0.0f32, |s, v| s.max(v.abs())) as f64;
    let max_err = got.iter().zip(&want).fold(0.0f32, |e, (x, y)| e.max((x - y).abs())) as f64;
    let max_rel_err = max_err / scale.max(f64::MIN_POSITIVE);
    if !max_rel_err.is_finite() || max_rel_err > 1e-3 {
        bail!("bench {name}: GPU result differs from the CPU's by {max_rel_err:e} (relative); the {} kernel is wrong here", variant.name());
    }
    let gflops = flops / gpu_time * 1e-9;
    let cpu_gflops = flops / cpu_time * 1e-9;
    Ok(MatmulCase {
        name: name.to_string(),
        m,
        n,
        k,
        variant: variant.name(),
        gflops,
        cpu_gflops,
        ratio: gflops / cpu_gflops,
        max_rel_err,
    })
}
