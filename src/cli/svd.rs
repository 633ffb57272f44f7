//! `sculpt svd`: singular spectra of a model's (or a file's) matrices, and `sculpt bench svd`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::subspace::targets::glob_match;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use crate::io::write_atomic;
use crate::kernels::jacobi::{max_batch, svd_batched, SvdResult};
use crate::plot::spectra_png;
use crate::{Gpu, Tensor};

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model folder holding model.safetensors.
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    model: Option<PathBuf>,
    /// With --model: only tensors whose name matches this glob (`*` and `?`).
    #[arg(long)]
    pattern: Option<String>,
    /// One safetensors file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// With --file: only this tensor.
    #[arg(long)]
    tensor: Option<String>,
    /// Write `<name>.U` [m, r], `<name>.S` [r], `<name>.V` [n, r] (A ≈ U diag(S) Vᵀ) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write a PNG chart of the normalised spectra (σ_k / σ_1, log scale, against k / r) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// One JSON object per matrix instead of a table.
    #[arg(long)]
    json: bool,
}

/// A 2-D tensor of a safetensors file as f32 (f16 / bf16 converted).
fn read_matrix(file: &SafeTensors, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = file.tensor(name)?;
    let data = t.data();
    let values: Vec<f32> = match t.dtype() {
        Dtype::F32 => bytemuck::pod_collect_to_vec(data),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(data).iter().map(|x| x.to_f32()).collect(),
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(data).iter().map(|x| x.to_f32()).collect(),
        other => bail!("tensor {name} has dtype {other:?}; sculpt svd reads f32, f16 and bf16"),
    };
    Ok((t.shape().to_vec(), values))
}

struct Spectrum {
    name: String,
    shape: [usize; 2],
    s: Vec<f32>,
}

/// Smallest k with σ₁² + … + σ_k² ≥ fraction of the total energy.
fn effective_rank(s: &[f32], fraction: f64) -> usize {
    let total: f64 = s.iter().map(|&x| (x as f64).powi(2)).sum();
    let mut acc = 0.0;
    for (k, &x) in s.iter().enumerate() {
        acc += (x as f64).powi(2);
        if acc >= fraction * total {
            return k + 1;
        }
    }
    0
}

pub fn run(gpu: &Gpu, args: &Args) -> Result<()> {
    let path = match (&args.model, &args.file) {
        (Some(dir), _) => dir.join("model.safetensors"),
        (None, Some(file)) => file.clone(),
        (None, None) => bail!("give --model DIR or --file FILE.safetensors"),
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let mut names: Vec<String> = file
        .names()
        .into_iter()
        .filter(|n| file.tensor(n).map(|t| t.shape().len() == 2).unwrap_or(false))
        .filter(|n| args.tensor.as_ref().is_none_or(|t| t == n))
        .filter(|n| args.pattern.as_ref().is_none_or(|p| glob_match(p, n)))
        .map(|n| n.to_string())
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no 2-D tensor of {} matches the --tensor / --pattern selection", path.display());
    }
    // Same-shape matrices are decomposed together.
    let mut groups: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
    for name in names {
        let shape = file.tensor(&name)?.shape().to_vec();
        groups.entry((shape[0], shape[1])).or_default().push(name);
    }
    let mut spectra = Vec::new();
    let mut outputs: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for ((m, n), group) in groups {
        for names in group.chunks(max_batch(gpu, m, n)?) {
            let mut data = Vec::with_capacity(names.len() * m * n);
            for name in names {
                data.extend(read_matrix(&file, name)?.1);
            }
            let mats = Tensor::from_f32(gpu, &[names.len(), m, n], &data)?;
            let res = svd_batched(&mats).with_context(|| format!("SVD of {}", names.join(", ")))?;
            collect(names, m, n, &res, args.out.is_some(), &mut spectra, &mut outputs)?;
        }
    }
    for sp in &spectra {
        let (smax, smin) = (sp.s[0], *sp.s.last().unwrap());
        let (r90, r99) = (effective_rank(&sp.s, 0.90), effective_rank(&sp.s, 0.99));
        if args.json {
            let line = serde_json::json!({"name": sp.name, "shape": sp.shape, "sigma_max": smax, "sigma_min": smin,
                "rank90": r90, "rank99": r99});
            println!("{line}");
        } else {
            println!(
                "{:<60} {:>5}x{:<5} σmax {smax:>10.4e}  σmin {smin:>10.4e}  rank90 {r90:>5}  rank99 {r99:>5}",
                sp.name, sp.shape[0], sp.shape[1]
            );
        }
    }
    if let Some(out) = &args.out {
        let views = outputs
            .iter()
            .map(|(name, shape, data)| {
                Ok((
                    name.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, None, out).with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(path) = &args.plot {
        let spectra: Vec<&[f32]> = spectra.iter().map(|sp| sp.s.as_slice()).collect();
        let title = format!("singular spectra of {} matrices", spectra.len());
        write_atomic(path, &spectra_png(&title, &spectra)?)?;
    }
    Ok(())
}

fn collect(
    names: &[String],
    m: usize,
    n: usize,
    res: &SvdResult,
    keep_factors: bool,
    spectra: &mut Vec<Spectrum>,
    outputs: &mut Vec<(String, Vec<usize>, Vec<f32>)>,
) -> Result<()> {
    let r = m.min(n);
    let s = res.s.to_f32()?;
    let (u, v) = if keep_factors { (res.u.to_f32()?, res.v.to_f32()?) } else { (Vec::new(), Vec::new()) };
    for (b, name) in names.iter().enumerate() {
        spectra.push(Spectrum { name: name.clone(), shape: [m, n], s: s[b * r..(b + 1) * r].to_vec() });
        if keep_factors {
            outputs.push((format!("{name}.U"), vec![m, r], u[b * m * r..(b + 1) * m * r].to_vec()));
            outputs.push((format!("{name}.S"), vec![r], s[b * r..(b + 1) * r].to_vec()));
            outputs.push((format!("{name}.V"), vec![n, r], v[b * n * r..(b + 1) * n * r].to_vec()));
        }
    }
    Ok(())
}

/// `MxN` (e.g. `256x512`) as (m, n), for `sculpt bench svd --shape`.
pub fn parse_shape(text: &str) -> Result<(usize, usize)> {
    let parsed = text.split_once('x').and_then(|(m, n)| Some((m.parse().ok()?, n.parse().ok()?)));
    match parsed {
        Some((m, n)) if m > 0 && n > 0 => Ok((m, n)),
        _ => bail!("shape {text:?}: expected MxN with positive M and N, e.g. 256x256"),
    }
}

/// `sculpt bench svd`: time, sweeps and a CPU SVD (faer, f32) per shape (`shapes`, or six
/// default ones); with `profile`, the GPU time per kernel of a second, profiled run.
const MATMUL_UNIT: &str = "one f32 GEMM [r, L]·[L, r] (r = min(m, n), L = max(m, n)) on the same adapter";

pub fn bench_svd(gpu: &Gpu, json: bool, shapes: &[(usize, usize)], profile: bool) -> Result<()> {
    const SHAPES: [(usize, usize); 6] = [(256, 256), (512, 512), (1024, 1024), (512, 2048), (2048, 512), (1024, 4096)];
    // The pipelines do not depend on the shape: compile them outside the timings, as the
    // matmul's warm-up run does.
    svd_batched(&Tensor::from_f32(gpu, &[1, 64, 64], &[1.0; 64 * 64])?)?;
    for &(m, n) in if shapes.is_empty() { &SHAPES[..] } else { shapes } {
        let mut rng = crate::rng::Rng::new((m * 7919 + n) as u64);
        let data: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
        let mats = Tensor::from_f32(gpu, &[1, m, n], &data)?;
        gpu.flush()?;
        let start = Instant::now();
        let res = svd_batched(&mats)?;
        res.s.to_f32()?;
        let gpu_s = start.elapsed().as_secs_f64();
        // One same-shape product: the flops of A's Gram on its short side r (2·r²·max(m, n), what
        // a Jacobi sweep is made of), as a plain [r, long]·[long, r] GEMM so that m×n and n×m
        // get the same unit.
        let (r, long) = (m.min(n), m.max(n));
        let a = Tensor::from_f32(gpu, &[r, long], &data)?;
        let b = a.reshape(&[long, r])?;
        let matmul_s = super::bench::best_time(|| {
            crate::kernels::matmul::matmul(&a, &b, false, false)?;
            gpu.flush()
        })?;
        let cpu = faer::Mat::<f32>::from_fn(m, n, |i, j| data[i * n + j]);
        let start = Instant::now();
        cpu.thin_svd().map_err(|e| anyhow::anyhow!("faer SVD of {m}x{n}: {e:?}"))?;
        let cpu_s = start.elapsed().as_secs_f64();
        if json {
            let line = serde_json::json!({"m": m, "n": n, "seconds": gpu_s, "sweeps": res.sweeps,
                "matmul_equivalents": gpu_s / matmul_s, "matmul_unit": MATMUL_UNIT,
                "cpu_faer_seconds": cpu_s});
            println!("{line}");
        } else {
            println!(
                "svd {m:>5}x{n:<5} {gpu_s:>8.3} s  {:>2} sweeps  {:>7.1} matmul-equivalents  faer (CPU) {cpu_s:>8.3} s",
                res.sweeps,
                gpu_s / matmul_s
            );
        }
        if profile {
            print_profile(gpu, &mats, m, n)?;
        }
    }
    if !json {
        println!("matmul-equivalent: {MATMUL_UNIT}");
    }
    Ok(())
}

/// GPU milliseconds per kernel entry point of one decomposition of `mats`.
fn print_profile(gpu: &Gpu, mats: &Tensor, m: usize, n: usize) -> Result<()> {
    if !gpu.set_profiling(true) {
        println!("profile: this adapter has no timestamp queries");
        return Ok(());
    }
    let rows = svd_batched(mats).and_then(|_| gpu.take_profile());
    gpu.set_profiling(false);
    for (entry, dispatches, ms) in rows? {
        println!("  {m}x{n} {entry:>10} {dispatches:>7} dispatches {ms:>10.1} ms");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_and_effective_rank() {
        assert_eq!(effective_rank(&[3.0, 1.0, 0.1], 0.8), 1);
        assert_eq!(effective_rank(&[3.0, 1.0, 0.1], 0.9), 2);
        assert_eq!(effective_rank(&[3.0, 1.0, 0.1], 0.99), 2);
    }
}
