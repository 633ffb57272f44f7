//! `sculpt bench forward`: encoder + decoder + LM head + loss of a t5-small-shaped random
//! model on 8 x 128 tokens, and the share of GPU time spent in matmul kernels.

use anyhow::{Context, Result};

use crate::model::{Batch, T5Config, T5Model};

const BATCH: usize = 8;
const TOKENS: usize = 128;
const TIMED_RUNS: usize = 3;

#[derive(Debug, serde::Serialize)]
struct ForwardBench {
    batch: usize,
    tokens: usize,
    forward_ms: f64,
    profiled_ms: f64,
    matmul_ms: f64,
    matmul_share: Option<f64>,
}

pub fn bench_forward(gpu: &crate::Gpu, json: bool) -> Result<()> {
    let config = T5Config::t5_small();
    let model = T5Model::random(gpu, config.clone(), false, 0.05, 1)?;
    let mut rng = crate::rng::Rng::new(2);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| 2 + rng.below(config.vocab_size - 2) as u32).collect() };
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..BATCH).map(|_| (ids(TOKENS), ids(TOKENS))).collect();
    let batch = Batch::new(&pairs, config.pad_token_id, config.decoder_start_token_id)?;
    let run = || -> Result<f32> { Ok(model.forward(&batch)?.loss.context("random targets have labels")?.to_f32()?[0]) };

    run()?; // compiles pipelines, fills the buffer pool
    let start = std::time::Instant::now();
    for _ in 0..TIMED_RUNS {
        run()?;
    }
    let forward_ms = start.elapsed().as_secs_f64() * 1e3 / TIMED_RUNS as f64;

    let profiling = gpu.set_profiling(true);
    let profile = run().and_then(|_| gpu.take_profile());
    gpu.set_profiling(false);
    let profile = profile?;
    let (module, _) = crate::kernels::validate_wgsl(&crate::kernels::matmul::SHADER)?;
    let matmul_entries: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
    let profiled_ms: f64 = profile.iter().map(|r| r.2).sum();
    let matmul_ms: f64 = profile.iter().filter(|r| matmul_entries.contains(&r.0.as_str())).map(|r| r.2).sum();
    let result = ForwardBench {
        batch: BATCH,
        tokens: TOKENS,
        forward_ms,
        profiled_ms,
        matmul_ms,
        matmul_share: (profiling && profiled_ms > 0.0).then(|| matmul_ms / profiled_ms),
    };
    if json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    println!("t5-small shape, random weights, batch {BATCH} x {TOKENS} source and target tokens");
    println!("forward      {forward_ms:.1} ms (encoder + decoder + LM head + loss, mean of {TIMED_RUNS})");
    match result.matmul_share {
        Some(share) => {
            println!(
                "GPU time     {profiled_ms:.1} ms in kernels, {matmul_ms:.1} ms in matmul ({:.1}%)",
                share * 100.0
            );
            for (entry, count, ms) in profile.iter().take(8) {
                println!("  {entry:<24} {count:>5} dispatches {ms:>9.2} ms");
            }
        }
        None => println!("matmul share unavailable: the adapter has no timestamp queries"),
    }
    Ok(())
}
