//! Multi-head attention (forward and backward) and a bias gathered from a table by bucket
//! ids (T5's relative position bias; the model computes the ids). Launcher for
//! `shaders/attention.wgsl`.
//!
//! Model-neutral: T5 uses `scale = 1.0`, an additive bias [H, Sq, Sk] and key padding / causal
//! masks; a Llama-style model uses `scale = 1/sqrt(Dh)`, causal, no bias and possibly fewer
//! key/value heads than query heads (grouped-query attention). Masked keys get
//! exactly zero probability; a query that sees no key at all (every key padded) gets all-zero
//! probabilities, so its output and its gradients are zero (HF would give a near-uniform row).
//! Causal masking aligns queries to the end of the keys: query i sees key j when
//! j <= i + (Sk - Sq), which makes incremental decoding (Sq = 1) see every key.
//!
//! Kernel design (WG = 64 invocations per workgroup, no atomics, fixed summation orders; the
//! tree reductions are shaders/workgroup_reduce.wgsl's):
//! - forward: one workgroup per (b, h, query row); invocations stride over keys for the scores
//!   (kept in workgroup memory, at most [`MAX_KEYS`]), tree-reduce max and sum, write probs,
//!   then stride over head dims for the weighted sum of values.
//! - backward: per query row (dP, dS, dQ; writes dS), then per key row (dK, dV looping over the
//!   queries of every query head sharing that key/value head, so dK and dV sum over the group),
//!   then per (h, i, j) for dbias (looping over the batch).

use anyhow::{bail, ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Launch, Shader};
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::row_shader!("attention");

/// Invocations per workgroup (`WG` in the shader).
const WG: u64 = 64;
/// Longest key sequence: one row of scores lives in workgroup memory (`MAX_KEYS` in the shader).
pub const MAX_KEYS: usize = 2048;
/// Bytes of workgroup memory of the row kernels: the score row and the reduction scratch
/// (`wg_scratch` of workgroup_reduce.wgsl; `position_bias_backward` uses only the scratch).
const ROW_KERNEL_BYTES: u64 = (MAX_KEYS as u64 + WG) * 4;
/// Iterations of one tree reduction over the workgroup (log2 WG).
const REDUCE_STEPS: u64 = WG.trailing_zeros() as u64;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention): query head h reads kv head
    /// h / (heads / kv_heads). Equal to `heads` for plain multi-head attention.
    pub kv_heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    batch: u32,
    heads: u32,
    q_len: u32,
    k_len: u32,
    head_dim: u32,
    causal: u32,
    has_bias: u32,
    has_mask: u32,
    scale: f32,
    buckets: u32,
    kv_heads: u32,
    _pad: u32,
}

pub(super) fn contract() -> ShaderContract {
    let params = crate::uniform_layout!(
        "Params",
        Params { batch, heads, q_len, k_len, head_dim, causal, has_bias, has_mask, scale, buckets, kv_heads, _pad }
    );
    ShaderContract {
        shader: &SHADER,
        uniforms: vec![params],
        constants: vec![("WG", WG), ("MAX_KEYS", MAX_KEYS as u64)],
    }
}

impl AttentionShape {
    fn params(&self, has_bias: bool, has_mask: bool) -> Params {
        Params {
            batch: self.batch as u32,
            heads: self.heads as u32,
            q_len: self.q_len as u32,
            k_len: self.k_len as u32,
            head_dim: self.head_dim as u32,
            causal: self.causal as u32,
            has_bias: has_bias as u32,
            has_mask: has_mask as u32,
            scale: self.scale,
            kv_heads: self.kv_heads as u32,
            ..Default::default()
        }
    }

    fn check(&self) -> Result<()> {
        let AttentionShape { batch, heads, kv_heads, q_len, k_len, head_dim, .. } = *self;
        ensure!(
            batch > 0 && heads > 0 && kv_heads > 0 && q_len > 0 && k_len > 0 && head_dim > 0,
            "attention: every dimension must be positive, got {self:?}"
        );
        ensure!(
            heads.is_multiple_of(kv_heads),
            "attention: {heads} query heads cannot be grouped over {kv_heads} key/value heads (must divide)"
        );
        ensure!(
            k_len <= MAX_KEYS,
            "attention: k_len {k_len} exceeds {MAX_KEYS} keys (one row of scores must fit in workgroup memory); shorten the sequence"
        );
        ensure!(
            batch * heads * q_len.max(k_len) * k_len.max(head_dim) < u32::MAX as usize,
            "attention: {self:?} exceeds the 32-bit index range"
        );
        Ok(())
    }

    /// Query heads sharing one key/value head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Worst-case loop iterations of one invocation of a row kernel: a strided pass over keys
    /// with a head_dim dot product each, `extra_key_passes` more strided passes over keys,
    /// `reductions` tree reductions, and a strided pass over head dims with a loop over keys.
    fn row_kernel_iterations(&self, extra_key_passes: u64, reductions: u64) -> u64 {
        let key_strides = (self.k_len as u64).div_ceil(WG);
        let dim_strides = (self.head_dim as u64).div_ceil(WG);
        key_strides * (1 + self.head_dim as u64)
            + extra_key_passes * key_strides
            + reductions * REDUCE_STEPS
            + dim_strides * (1 + self.k_len as u64)
    }
}

fn check_f32(what: &str, t: &Tensor, len: usize, layout: &str) -> Result<()> {
    if t.dtype() != DType::F32 {
        bail!("attention: {what} must be f32, got {:?}", t.dtype());
    }
    if t.len() != len {
        bail!("attention: {what} has shape {:?}; expected {layout} = {len} elements", t.shape());
    }
    Ok(())
}

fn check_qkv(s: &AttentionShape, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    s.check()?;
    let kv_width = s.kv_heads * s.head_dim;
    check_f32("q", q, s.batch * s.q_len * s.heads * s.head_dim, "[B, Sq, H*Dh]")?;
    check_f32("k", k, s.batch * s.k_len * kv_width, "[B, Sk, Hkv*Dh]")?;
    check_f32("v", v, s.batch * s.k_len * kv_width, "[B, Sk, Hkv*Dh]")
}

/// bias: optional [H, Sq, Sk] additive (shared across batch; T5 relative position bias).
/// key_mask: optional F32 [B, Sk], 1 = attend, 0 = padding.
/// Returns (out [B, Sq, H*Dh], probs [B, H, Sq, Sk] kept for backward).
pub fn attention(
    s: &AttentionShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    key_mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    check_qkv(s, q, k, v)?;
    if let Some(bias) = bias {
        check_f32("bias", bias, s.heads * s.q_len * s.k_len, "[H, Sq, Sk]")?;
    }
    if let Some(mask) = key_mask {
        check_f32("key_mask", mask, s.batch * s.k_len, "[B, Sk]")?;
    }
    let gpu = q.gpu();
    let out = Tensor::uninit(gpu, &[s.batch, s.q_len, s.heads * s.head_dim], DType::F32)?;
    let probs = Tensor::uninit(gpu, &[s.batch, s.heads, s.q_len, s.k_len], DType::F32)?;
    // Absent optional inputs are bound to a one-element placeholder the shader never reads.
    let placeholder;
    let (bias_t, mask_t) = match (bias, key_mask) {
        (Some(b), Some(m)) => (b, m),
        _ => {
            placeholder = Tensor::uninit(gpu, &[1], DType::F32)?;
            (bias.unwrap_or(&placeholder), key_mask.unwrap_or(&placeholder))
        }
    };
    let params = s.params(bias.is_some(), key_mask.is_some());
    gpu.launch(&Launch {
        shader: &SHADER,
        entry: "attention_forward",
        constants: &[],
        params: bytemuck::bytes_of(&params),
        read: &[q, k, v, bias_t, mask_t],
        write: &[&out, &probs],
        workgroups: grid_1d((s.batch * s.heads * s.q_len) as u64),
        // scores (dot per key), exp pass, normalise pass, max and sum reductions, weighted sum
        loop_iterations: s.row_kernel_iterations(2, 2),
        workgroup_bytes: ROW_KERNEL_BYTES,
    })?;
    Ok((out, probs))
}

/// Returns (dq, dk, dv) in the input layouts; if dbias is Some, ACCUMULATES the sum over the
/// batch of d(scores) into it ([H, Sq, Sk]).
pub fn attention_backward(
    s: &AttentionShape,
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    dbias: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_qkv(s, q, k, v)?;
    check_f32("dout", dout, q.len(), "[B, Sq, H*Dh]")?;
    check_f32("probs", probs, s.batch * s.heads * s.q_len * s.k_len, "[B, H, Sq, Sk]")?;
    if let Some(dbias) = dbias {
        check_f32("dbias", dbias, s.heads * s.q_len * s.k_len, "[H, Sq, Sk]")?;
    }
    let gpu = q.gpu();
    let dq = Tensor::uninit(gpu, q.shape(), DType::F32)?;
    let dk = Tensor::uninit(gpu, k.shape(), DType::F32)?;
    let dv = Tensor::uninit(gpu, v.shape(), DType::F32)?;
    let dscores = Tensor::uninit(gpu, probs.shape(), DType::F32)?;
    let params = s.params(dbias.is_some(), false);
    let params = bytemuck::bytes_of(&params);
    gpu.launch(&Launch {
        shader: &SHADER,
        entry: "attention_backward_queries",
        constants: &[],
        params,
        read: &[dout, k, v, probs],
        write: &[&dq, &dscores],
        workgroups: grid_1d((s.batch * s.heads * s.q_len) as u64),
        // dP (dot per key), dS pass, one sum reduction, dQ
        loop_iterations: s.row_kernel_iterations(1, 1),
        workgroup_bytes: ROW_KERNEL_BYTES,
    })?;
    gpu.launch(&Launch {
        shader: &SHADER,
        entry: "attention_backward_keys",
        constants: &[],
        params,
        read: &[q, dout, probs, &dscores],
        write: &[&dk, &dv],
        workgroups: grid_1d((s.batch * s.kv_heads * s.k_len) as u64),
        // per head dim: the queries of every head of the group
        loop_iterations: (s.head_dim as u64).div_ceil(WG) * (1 + (s.group() * s.q_len) as u64),
        workgroup_bytes: 0,
    })?;
    if let Some(dbias) = dbias {
        gpu.launch(&Launch {
            shader: &SHADER,
            entry: "attention_backward_bias",
            constants: &[],
            params,
            read: &[&dscores],
            write: &[dbias],
            workgroups: grid_1d(((s.heads * s.q_len * s.k_len) as u64).div_ceil(WG)),
            loop_iterations: s.batch as u64,
            workgroup_bytes: 0,
        })?;
    }
    Ok((dq, dk, dv))
}

fn check_buckets(buckets_len: usize, q_len: usize, k_len: usize) -> Result<()> {
    ensure!(
        buckets_len == q_len * k_len,
        "position bias: {buckets_len} bucket ids for q_len {q_len} x k_len {k_len} = {} positions",
        q_len * k_len
    );
    Ok(())
}

fn check_table(table: &Tensor) -> Result<(usize, usize)> {
    match *table.shape() {
        [num_buckets, heads] if table.dtype() == DType::F32 => Ok((num_buckets, heads)),
        _ => bail!(
            "position bias: table must be f32 [num_buckets, H] (relative_attention_bias.weight), got {:?} {:?}",
            table.shape(),
            table.dtype()
        ),
    }
}

/// The kernel parameters of the position-bias gather and its backward.
fn position_bias_params(heads: usize, q_len: usize, k_len: usize, num_buckets: usize) -> Params {
    Params {
        heads: heads as u32,
        q_len: q_len as u32,
        k_len: k_len as u32,
        buckets: num_buckets as u32,
        ..Default::default()
    }
}

/// bias[h, i, j] = table[bucket[i*k_len+j], h]; table is HF's relative_attention_bias.weight
/// [num_buckets, H]. buckets: U32 tensor of [q_len * k_len] ids below num_buckets.
pub fn position_bias(table: &Tensor, buckets: &Tensor, q_len: usize, k_len: usize) -> Result<Tensor> {
    let (num_buckets, heads) = check_table(table)?;
    ensure!(buckets.dtype() == DType::U32, "position bias: buckets must be U32, got {:?}", buckets.dtype());
    check_buckets(buckets.len(), q_len, k_len)?;
    let gpu = table.gpu();
    let bias = Tensor::uninit(gpu, &[heads, q_len, k_len], DType::F32)?;
    let params = position_bias_params(heads, q_len, k_len, num_buckets);
    gpu.launch(&Launch {
        shader: &SHADER,
        entry: "position_bias_gather",
        constants: &[],
        params: bytemuck::bytes_of(&params),
        read: &[table, buckets],
        write: &[&bias],
        workgroups: grid_1d(((heads * q_len * k_len) as u64).div_ceil(WG)),
        loop_iterations: 0,
        workgroup_bytes: 0,
    })?;
    Ok(bias)
}

/// dtable[b, h] += sum_{(i,j): bucket=b} dbias[h, i, j]; deterministic (host-side CSR from the
/// bucket list). dbias: [H, Sq, Sk] with Sq * Sk = buckets.len().
pub fn position_bias_backward(dbias: &Tensor, buckets: &[u32], dtable: &Tensor) -> Result<()> {
    let (num_buckets, heads) = check_table(dtable)?;
    let (q_len, k_len) = match *dbias.shape() {
        [h, q_len, k_len] if h == heads && dbias.dtype() == DType::F32 => (q_len, k_len),
        _ => bail!(
            "position bias backward: dbias must be f32 [H = {heads}, Sq, Sk], got {:?} {:?}",
            dbias.shape(),
            dbias.dtype()
        ),
    };
    check_buckets(buckets.len(), q_len, k_len)?;
    if let Some(&b) = buckets.iter().find(|&&b| b as usize >= num_buckets) {
        bail!("position bias backward: bucket id {b} is out of range for a table of {num_buckets} buckets");
    }
    // CSR: positions grouped by bucket, each group in increasing position order.
    let mut offsets = vec![0u32; num_buckets + 1];
    for &b in buckets {
        offsets[b as usize + 1] += 1;
    }
    for n in 0..num_buckets {
        offsets[n + 1] += offsets[n];
    }
    let mut next = offsets.clone();
    let mut positions = vec![0u32; buckets.len()];
    for (position, &b) in buckets.iter().enumerate() {
        positions[next[b as usize] as usize] = position as u32;
        next[b as usize] += 1;
    }
    let largest = offsets.windows(2).map(|w| (w[1] - w[0]) as u64).max().unwrap_or(0);
    let gpu = dtable.gpu();
    let offsets = Tensor::from_u32(gpu, &[num_buckets + 1], &offsets)?;
    let positions = Tensor::from_u32(gpu, &[positions.len()], &positions)?;
    let params = position_bias_params(heads, q_len, k_len, num_buckets);
    gpu.launch(&Launch {
        shader: &SHADER,
        entry: "position_bias_backward",
        constants: &[],
        params: bytemuck::bytes_of(&params),
        read: &[dbias, &offsets, &positions],
        write: &[dtable],
        workgroups: grid_1d((num_buckets * heads) as u64),
        loop_iterations: largest.div_ceil(WG) + REDUCE_STEPS,
        workgroup_bytes: WG * 4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{assert_close, random};

    /// Inputs of one attention case, on the host.
    struct Case {
        s: AttentionShape,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        bias: Option<Vec<f32>>,
        mask: Option<Vec<f32>>,
    }

    #[derive(Clone, Copy)]
    enum Mask {
        None,
        /// Batch row b pads its last b keys.
        Padding,
        /// Like Padding, and batch row 0 pads every key.
        PaddingWithEmptyRow,
    }

    impl Case {
        fn new(s: AttentionShape, with_bias: bool, mask: Mask, seed: u64) -> Case {
            let (width, kv_width) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
            let mask = match mask {
                Mask::None => None,
                Mask::Padding | Mask::PaddingWithEmptyRow => Some(
                    (0..s.batch)
                        .flat_map(|b| {
                            let empty = matches!(mask, Mask::PaddingWithEmptyRow) && b == 0;
                            (0..s.k_len).map(move |j| if empty || j + b >= s.k_len && j > 0 { 0.0 } else { 1.0 })
                        })
                        .collect(),
                ),
            };
            Case {
                s,
                q: random(s.batch * s.q_len * width, seed),
                k: random(s.batch * s.k_len * kv_width, seed + 1),
                v: random(s.batch * s.k_len * kv_width, seed + 2),
                bias: with_bias
                    .then(|| random(s.heads * s.q_len * s.k_len, seed + 3).iter().map(|x| 2.0 * x).collect()),
                mask,
            }
        }

        /// The f64 reference forward pass of this case.
        fn reference(&self) -> (Vec<f64>, Vec<f64>) {
            let bias = self.bias.as_deref().map(f64s);
            let (q, k, v) = (f64s(&self.q), f64s(&self.k), f64s(&self.v));
            reference_forward(&self.s, &q, &k, &v, bias.as_deref(), self.mask.as_deref())
        }

        fn upload(&self) -> [Option<Tensor>; 5] {
            let gpu = gpu();
            let s = &self.s;
            let (width, kv_width) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
            let t = |shape: &[usize], data: &[f32]| Some(Tensor::from_f32(&gpu, shape, data).unwrap());
            [
                t(&[s.batch, s.q_len, width], &self.q),
                t(&[s.batch, s.k_len, kv_width], &self.k),
                t(&[s.batch, s.k_len, kv_width], &self.v),
                self.bias.as_ref().and_then(|b| t(&[s.heads, s.q_len, s.k_len], b)),
                self.mask.as_ref().and_then(|m| t(&[s.batch, s.k_len], m)),
            ]
        }

        fn run(&self) -> (Tensor, Tensor, [Option<Tensor>; 5]) {
            let inputs = self.upload();
            let [q, k, v, bias, mask] = &inputs;
            let (out, probs) = attention(
                &self.s,
                q.as_ref().unwrap(),
                k.as_ref().unwrap(),
                v.as_ref().unwrap(),
                bias.as_ref(),
                mask.as_ref(),
            )
            .unwrap();
            (out, probs, inputs)
        }
    }

    /// [`attention_backward`] on the q, k and v of [`Case::upload`].
    fn backward(
        s: &AttentionShape,
        inputs: &[Option<Tensor>; 5],
        dout: &Tensor,
        probs: &Tensor,
        dbias: Option<&Tensor>,
    ) -> (Tensor, Tensor, Tensor) {
        let [q, k, v, _, _] = inputs;
        let (q, k, v) = (q.as_ref().unwrap(), k.as_ref().unwrap(), v.as_ref().unwrap());
        attention_backward(s, dout, q, k, v, probs, dbias).unwrap()
    }

    fn visible(s: &AttentionShape, mask: Option<&[f32]>, b: usize, i: usize, j: usize) -> bool {
        mask.is_none_or(|m| m[b * s.k_len + j] != 0.0)
            && (!s.causal || j as i64 <= i as i64 + s.k_len as i64 - s.q_len as i64)
    }

    /// Index of element d of key/value row j of batch b for query head h.
    fn kv_index(s: &AttentionShape, b: usize, j: usize, h: usize, d: usize) -> usize {
        (b * s.k_len + j) * s.kv_heads * s.head_dim + h / (s.heads / s.kv_heads) * s.head_dim + d
    }

    /// f64 reference: (out [B, Sq, H*Dh], probs [B, H, Sq, Sk]).
    fn reference_forward(
        s: &AttentionShape,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        bias: Option<&[f64]>,
        mask: Option<&[f32]>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (w, dh) = (s.heads * s.head_dim, s.head_dim);
        let mut out = vec![0.0; s.batch * s.q_len * w];
        let mut probs = vec![0.0; s.batch * s.heads * s.q_len * s.k_len];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.q_len {
                    let row = ((b * s.heads + h) * s.q_len + i) * s.k_len;
                    let scores: Vec<Option<f64>> = (0..s.k_len)
                        .map(|j| {
                            visible(s, mask, b, i, j).then(|| {
                                let dot: f64 = (0..dh)
                                    .map(|d| q[(b * s.q_len + i) * w + h * dh + d] * k[kv_index(s, b, j, h, d)])
                                    .sum();
                                s.scale as f64 * dot + bias.map_or(0.0, |bias| bias[(h * s.q_len + i) * s.k_len + j])
                            })
                        })
                        .collect();
                    let max = scores.iter().flatten().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                    let total: f64 = scores.iter().flatten().map(|x| (x - max).exp()).sum();
                    for (j, score) in scores.iter().enumerate() {
                        let p = score.map_or(0.0, |x| (x - max).exp() / total);
                        probs[row + j] = p;
                        for d in 0..dh {
                            out[(b * s.q_len + i) * w + h * dh + d] += p * v[kv_index(s, b, j, h, d)];
                        }
                    }
                }
            }
        }
        (out, probs)
    }

    /// f64 reference: (dq, dk, dv, dbias summed over the batch).
    fn reference_backward(
        s: &AttentionShape,
        dout: &[f64],
        q: &[f64],
        k: &[f64],
        v: &[f64],
        probs: &[f64],
    ) -> [Vec<f64>; 4] {
        let (w, dh) = (s.heads * s.head_dim, s.head_dim);
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        let mut dbias = vec![0.0; s.heads * s.q_len * s.k_len];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.q_len {
                    let row = ((b * s.heads + h) * s.q_len + i) * s.k_len;
                    let qi = (b * s.q_len + i) * w + h * dh;
                    let dp: Vec<f64> = (0..s.k_len)
                        .map(|j| (0..dh).map(|d| dout[qi + d] * v[kv_index(s, b, j, h, d)]).sum())
                        .collect();
                    let row_dot: f64 = (0..s.k_len).map(|j| dp[j] * probs[row + j]).sum();
                    for j in 0..s.k_len {
                        let p = probs[row + j];
                        let ds = p * (dp[j] - row_dot);
                        dbias[(h * s.q_len + i) * s.k_len + j] += ds;
                        let kj = kv_index(s, b, j, h, 0);
                        for d in 0..dh {
                            dq[qi + d] += s.scale as f64 * ds * k[kj + d];
                            dk[kj + d] += s.scale as f64 * ds * q[qi + d];
                            dv[kj + d] += p * dout[qi + d];
                        }
                    }
                }
            }
        }
        [dq, dk, dv, dbias]
    }

    fn f64s(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| v as f64).collect()
    }
    fn f32s(x: &[f64]) -> Vec<f32> {
        x.iter().map(|&v| v as f32).collect()
    }

    fn shape(
        batch: usize,
        heads: usize,
        q_len: usize,
        k_len: usize,
        head_dim: usize,
        causal: bool,
        scale: f32,
    ) -> AttentionShape {
        AttentionShape { batch, heads, kv_heads: heads, q_len, k_len, head_dim, causal, scale }
    }

    /// `s` with its query heads grouped over `kv_heads` key/value heads.
    fn grouped(s: AttentionShape, kv_heads: usize) -> AttentionShape {
        AttentionShape { kv_heads, ..s }
    }

    /// Runs forward and backward on the GPU and checks both against the f64 reference; dbias
    /// starts non-zero to check that it accumulates.
    fn check_case(case: &Case) {
        let s = &case.s;
        let what = format!("{s:?} bias={} mask={}", case.bias.is_some(), case.mask.is_some());
        let (out, probs, inputs) = case.run();
        let [q, ..] = &inputs;
        let (want_out, want_probs) = case.reference();
        let got_probs = probs.to_f32().unwrap();
        assert_close(&out.to_f32().unwrap(), &f32s(&want_out), 2e-5);
        assert_close(&got_probs, &f32s(&want_probs), 2e-5);
        for (n, (&g, &w)) in got_probs.iter().zip(&want_probs).enumerate() {
            assert!(w != 0.0 || g == 0.0, "{what}: masked prob {n} is {g}, must be exactly 0");
        }

        let dout_host = random(case.q.len(), 99);
        let dout = Tensor::from_f32(&gpu(), q.as_ref().unwrap().shape(), &dout_host).unwrap();
        let initial_dbias = random(s.heads * s.q_len * s.k_len, 7);
        let dbias = Tensor::from_f32(&gpu(), &[s.heads, s.q_len, s.k_len], &initial_dbias).unwrap();
        let (dq, dk, dv) = backward(s, &inputs, &dout, &probs, Some(&dbias));
        let [want_dq, want_dk, want_dv, want_dbias] =
            reference_backward(s, &f64s(&dout_host), &f64s(&case.q), &f64s(&case.k), &f64s(&case.v), &f64s(&got_probs));
        assert_close(&dq.to_f32().unwrap(), &f32s(&want_dq), 1e-4);
        assert_close(&dk.to_f32().unwrap(), &f32s(&want_dk), 1e-4);
        assert_close(&dv.to_f32().unwrap(), &f32s(&want_dv), 1e-4);
        let want_dbias: Vec<f32> =
            initial_dbias.iter().zip(&want_dbias).map(|(&a, &d)| (a as f64 + d) as f32).collect();
        assert_close(&dbias.to_f32().unwrap(), &want_dbias, 1e-4);
    }

    #[test]
    fn forward_and_backward_match_reference_over_awkward_shapes() {
        let cases = [
            (shape(1, 1, 1, 1, 1, false, 1.0), false, Mask::None),
            (shape(3, 2, 3, 17, 8, false, 1.0), true, Mask::Padding),
            (shape(1, 4, 17, 17, 17, true, 0.25), false, Mask::None),
            (shape(3, 3, 17, 17, 8, true, 1.0), true, Mask::PaddingWithEmptyRow),
            (shape(1, 2, 64, 65, 64, false, 0.125), true, Mask::None),
            (shape(3, 1, 65, 64, 1, true, 1.0), false, Mask::Padding),
            (shape(1, 1, 127, 127, 17, true, 1.0), true, Mask::Padding),
            (shape(3, 2, 1, 127, 64, false, 1.0), true, Mask::PaddingWithEmptyRow),
            (shape(1, 3, 64, 3, 8, false, 2.0), false, Mask::Padding),
            // grouped-query attention: 2 or 3 query heads per key/value head
            (grouped(shape(2, 4, 17, 17, 8, true, 0.35), 2), false, Mask::Padding),
            (grouped(shape(1, 6, 65, 65, 3, true, 0.5), 2), false, Mask::None),
            (grouped(shape(3, 3, 1, 63, 17, true, 0.25), 1), true, Mask::PaddingWithEmptyRow),
            (grouped(shape(1, 4, 3, 9, 8, false, 1.0), 1), false, Mask::None),
        ];
        for (n, &(s, bias, mask)) in cases.iter().enumerate() {
            check_case(&Case::new(s, bias, mask, 10 * n as u64));
        }
    }

    #[test]
    fn a_query_with_no_visible_key_gets_zero_probabilities_output_and_gradients() {
        let case = Case::new(shape(2, 2, 3, 5, 4, false, 1.0), true, Mask::PaddingWithEmptyRow, 5);
        let (out, probs, inputs) = case.run();
        let row = case.s.q_len * case.s.heads * case.s.head_dim;
        let out = out.to_f32().unwrap();
        assert!(out[..row].iter().all(|&x| x == 0.0), "{:?}", &out[..row]);
        assert!(out[row..].iter().any(|&x| x != 0.0));
        let probs_host = probs.to_f32().unwrap();
        let plane = case.s.heads * case.s.q_len * case.s.k_len;
        assert!(probs_host[..plane].iter().all(|&x| x == 0.0));
        let [q, ..] = &inputs;
        let dout = Tensor::from_f32(&gpu(), q.as_ref().unwrap().shape(), &random(case.q.len(), 3)).unwrap();
        let (dq, dk, dv) = backward(&case.s, &inputs, &dout, &probs, None);
        for g in [dq, dk, dv] {
            let g = g.to_f32().unwrap();
            assert!(g.iter().all(|x| x.is_finite()));
            assert!(g[..g.len() / 2].iter().all(|&x| x == 0.0), "batch row 0 sees nothing, so has no gradient");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let shapes = [
            shape(2, 2, 3, 4, 3, false, 0.7),
            shape(2, 2, 3, 4, 3, true, 0.7),
            grouped(shape(2, 4, 3, 4, 3, true, 0.7), 2),
        ];
        for (n, s) in shapes.into_iter().enumerate() {
            let case = Case::new(s, true, Mask::Padding, 40 + n as u64);
            let s = &case.s;
            let weights = f64s(&random(case.q.len(), 41));
            let mask = case.mask.as_deref();
            // loss = Σ out ⊙ weights, so d(loss)/d(out) = weights.
            let loss = |q: &[f64], k: &[f64], v: &[f64], bias: &[f64]| -> f64 {
                let (out, _) = reference_forward(s, q, k, v, Some(bias), mask);
                out.iter().zip(&weights).map(|(o, w)| o * w).sum()
            };
            let mut inputs = [f64s(&case.q), f64s(&case.k), f64s(&case.v), f64s(case.bias.as_ref().unwrap())];
            let mut numeric: Vec<Vec<f32>> = Vec::new();
            for which in 0..4 {
                let mut grad = Vec::with_capacity(inputs[which].len());
                for e in 0..inputs[which].len() {
                    let h = 1e-6;
                    let x = inputs[which][e];
                    inputs[which][e] = x + h;
                    let up = loss(&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
                    inputs[which][e] = x - h;
                    let down = loss(&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
                    inputs[which][e] = x;
                    grad.push(((up - down) / (2.0 * h)) as f32);
                }
                numeric.push(grad);
            }
            let (_, probs, gpu_inputs) = case.run();
            let [q, ..] = &gpu_inputs;
            let dout = Tensor::from_f32(&gpu(), q.as_ref().unwrap().shape(), &f32s(&weights)).unwrap();
            let dbias = Tensor::zeros(&gpu(), &[s.heads, s.q_len, s.k_len], DType::F32).unwrap();
            let (dq, dk, dv) = backward(s, &gpu_inputs, &dout, &probs, Some(&dbias));
            for (got, want) in [dq, dk, dv, dbias].iter().zip(&numeric) {
                assert_close(&got.to_f32().unwrap(), want, 1e-4);
            }
        }
    }

    #[test]
    fn a_512_token_sequence_runs_within_the_loop_budget() {
        let s = shape(1, 1, 512, 512, 8, true, 1.0);
        assert!(s.row_kernel_iterations(2, 2) < crate::gpu::LOOP_BUDGET);
        check_case(&Case::new(s, true, Mask::Padding, 512));
    }

    #[test]
    fn launches_beyond_the_loop_budget_or_workgroup_memory_are_refused() {
        let gpu = gpu();
        // One query, one key, a head of 65,536 dims: the score loop alone runs 65,537 iterations.
        let s = shape(1, 1, 1, 1, 65_536, false, 1.0);
        let x = Tensor::zeros(&gpu, &[1, 1, 65_536], DType::F32).unwrap();
        let err = attention(&s, &x, &x, &x, None, None).unwrap_err().to_string();
        assert!(err.contains("loop iterations"), "{err}");
        let probs = Tensor::zeros(&gpu, &[1, 1, 1, 1], DType::F32).unwrap();
        let err = attention_backward(&s, &x, &x, &x, &x, &probs, None).unwrap_err().to_string();
        assert!(err.contains("loop iterations"), "{err}");

        let s = shape(1, 1, 1, MAX_KEYS + 1, 1, false, 1.0);
        let q = Tensor::zeros(&gpu, &[1, 1, 1], DType::F32).unwrap();
        let kv = Tensor::zeros(&gpu, &[1, MAX_KEYS + 1, 1], DType::F32).unwrap();
        let err = attention(&s, &q, &kv, &kv, None, None).unwrap_err().to_string();
        assert!(err.contains("exceeds 2048 keys"), "{err}");
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        let case = Case::new(shape(2, 2, 3, 4, 5, false, 1.0), false, Mask::None, 1);
        let [q, k, v, _, _] = case.upload();
        let (q, k, v) = (q.unwrap(), k.unwrap(), v.unwrap());
        let err = attention(&case.s, &q, &q, &v, None, None).unwrap_err().to_string();
        assert!(err.contains("attention: k has shape [2, 3, 10]"), "{err}");
        let bias = Tensor::zeros(&gpu(), &[2, 4, 4], DType::F32).unwrap();
        let err = attention(&case.s, &q, &k, &v, Some(&bias), None).unwrap_err().to_string();
        assert!(err.contains("bias has shape [2, 4, 4]"), "{err}");
        let err = attention(&grouped(case.s, 3), &q, &k, &v, None, None).unwrap_err().to_string();
        assert!(err.contains("2 query heads cannot be grouped over 3"), "{err}");
    }

    /// Bucket ids of queries `first_query..first_query + q_len` against keys `0..k_len`: the
    /// distance |j - i|, every distance from the last bucket on sharing it. A stand-in for a
    /// model's bucketing (the kernels take any ids).
    fn distance_buckets(first_query: usize, q_len: usize, k_len: usize, num_buckets: usize) -> Vec<u32> {
        (first_query..first_query + q_len)
            .flat_map(|i| (0..k_len).map(move |j| i.abs_diff(j).min(num_buckets - 1) as u32))
            .collect()
    }

    #[test]
    fn incremental_decoding_matches_the_last_row_of_full_causal_attention() {
        let gpu = gpu();
        let (heads, n, num_buckets) = (3, 17, 8);
        let s_full = shape(2, heads, n, n, 8, true, 1.0);
        let table_host = random(num_buckets * heads, 77);
        let table = Tensor::from_f32(&gpu, &[num_buckets, heads], &table_host).unwrap();
        let full_buckets = Tensor::from_u32(&gpu, &[n * n], &distance_buckets(0, n, n, num_buckets)).unwrap();
        let full_bias = position_bias(&table, &full_buckets, n, n).unwrap();
        let case = Case::new(s_full, false, Mask::None, 3);
        let [q, k, v, _, _] = case.upload();
        let (q, k, v) = (q.unwrap(), k.unwrap(), v.unwrap());
        let (full_out, _) = attention(&s_full, &q, &k, &v, Some(&full_bias), None).unwrap();

        let last = distance_buckets(n - 1, 1, n, num_buckets);
        let last_bias = position_bias(&table, &Tensor::from_u32(&gpu, &[n], &last).unwrap(), 1, n).unwrap();
        let width = heads * 8;
        let last_q: Vec<f32> =
            (0..2).flat_map(|b| case.q[((b + 1) * n - 1) * width..(b + 1) * n * width].to_vec()).collect();
        let s_step = AttentionShape { q_len: 1, ..s_full };
        let q_step = Tensor::from_f32(&gpu, &[2, 1, width], &last_q).unwrap();
        let (step_out, _) = attention(&s_step, &q_step, &k, &v, Some(&last_bias), None).unwrap();

        let full_out = full_out.to_f32().unwrap();
        let want: Vec<f32> =
            (0..2).flat_map(|b| full_out[((b + 1) * n - 1) * width..(b + 1) * n * width].to_vec()).collect();
        assert_close(&step_out.to_f32().unwrap(), &want, 1e-6);
    }

    #[test]
    fn small_attention_output_snapshot() {
        let case = Case::new(shape(1, 2, 3, 4, 2, true, 1.0), true, Mask::Padding, 2024);
        let (out, _, _) = case.run();
        let out = out.to_f32().unwrap();
        let (want, _) = case.reference();
        assert_close(&out, &f32s(&want), 2e-5);
        let text: Vec<String> = out
            .chunks(case.s.heads * case.s.head_dim)
            .map(|row| row.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(" "))
            .collect();
        insta::assert_snapshot!(text.join("\n"));
    }

    #[test]
    fn position_bias_gathers_and_its_backward_accumulates() {
        let gpu = gpu();
        // 512 x 512: the last bucket holds 231,842 positions, thousands per invocation, so the
        // strided workgroup sum is exercised.
        for (heads, q_len, k_len) in [(3, 17, 65), (1, 512, 512), (2, 1, 127)] {
            let num_buckets = 32;
            let buckets = distance_buckets(0, q_len, k_len, num_buckets);
            let table_host = random(num_buckets * heads, 5);
            let table = Tensor::from_f32(&gpu, &[num_buckets, heads], &table_host).unwrap();
            let bucket_t = Tensor::from_u32(&gpu, &[q_len * k_len], &buckets).unwrap();
            let bias = position_bias(&table, &bucket_t, q_len, k_len).unwrap().to_f32().unwrap();
            let positions = q_len * k_len;
            let want: Vec<f32> = (0..heads * positions)
                .map(|t| table_host[buckets[t % positions] as usize * heads + t / positions])
                .collect();
            assert_eq!(bias, want);

            let dbias_host = random(heads * positions, 6);
            let dbias = Tensor::from_f32(&gpu, &[heads, q_len, k_len], &dbias_host).unwrap();
            let dtable = Tensor::from_f32(&gpu, &[num_buckets, heads], &table_host).unwrap();
            position_bias_backward(&dbias, &buckets, &dtable).unwrap();
            let mut want: Vec<f64> = f64s(&table_host);
            for (t, &g) in dbias_host.iter().enumerate() {
                want[buckets[t % positions] as usize * heads + t / positions] += g as f64;
            }
            assert_close(&dtable.to_f32().unwrap(), &f32s(&want), 1e-5);
        }
        let table = Tensor::zeros(&gpu, &[4, 1], DType::F32).unwrap();
        let dbias = Tensor::zeros(&gpu, &[1, 1, 2], DType::F32).unwrap();
        let err = position_bias_backward(&dbias, &[0, 4], &table).unwrap_err().to_string();
        assert!(err.contains("bucket id 4 is out of range"), "{err}");
    }
}
