use sculpt::kernels::matmul::{linear_backward, reference_gemm, Gemm};
use sculpt::{Gpu, Tensor};
fn main() {
    let gpu = Gpu::shared().unwrap();
    let (rows, d, vocab) = (40usize, 576usize, 49152usize);
    let mut s = 1u64;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    };
    let x = rnd(rows * d);
    let w = rnd(vocab * d);
    let dy = rnd(rows * vocab);
    let tx = Tensor::from_f32(&gpu, &[rows, d], &x).unwrap();
    let tw = Tensor::from_f32(&gpu, &[vocab, d], &w).unwrap();
    let tdy = Tensor::from_f32(&gpu, &[rows, vocab], &dy).unwrap();
    let tdw = Tensor::zeros(&gpu, &[vocab, d], sculpt::tensor::DType::F32).unwrap();
    let _dx = linear_backward(&tdy, &tx, &tw, &tdw).unwrap();
    let got = tdw.to_f32().unwrap();
    let mut want = vec![0.0f32; vocab * d];
    reference_gemm(&Gemm { beta: 1.0, ..Gemm::new(vocab, d, rows, true, false) }, &dy, &x, &mut want);
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let mx = want.iter().map(|a| a.abs()).fold(0.0f32, f32::max);
    let ng: f64 = got.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let nw: f64 = want.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    println!("max err {err} max {mx} norms {ng} {nw}");
}
