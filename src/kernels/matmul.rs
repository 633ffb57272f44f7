//! Batched f32 GEMM with transposes, leading dims, offsets and broadcast batch strides, plus
//! the convenience forms the model uses (`matmul`, `linear`) and a batched `transpose`.
//!
//! Three kernels, chosen per adapter ([`Variant::choose`]):
//! - [`Variant::Subgroup`] on CPU adapters (lavapipe) with subgroups of at least 8: llvmpipe
//!   runs 8 invocations as SIMD lanes, where a storage load whose address differs per lane
//!   is a scalar loop over the lanes but a broadcast from a constant lane is one shuffle. One
//!   subgroup computes a 32x64 tile of C: the lanes load the A block of each K step together
//!   and broadcast it, each lane loads only its own 8 columns of B (shaders/matmul_subgroup.wgsl).
//! - [`Variant::RegisterBlocked`] on CPU adapters without subgroups: no workgroup memory and
//!   no barriers (llvmpipe switches between the invocations of a workgroup at a barrier); each
//!   invocation keeps a 4x4 block of C in registers and streams A and B as vec4.
//!
//!   Both read A and B as vec4, so every row start must be 16-byte aligned: they are used
//!   only when leading dims, offsets, batch strides and buffer lengths are multiples of 4.
//! - [`Variant::Tiled`] everywhere else: 64x64 tiles of C staged through 8 KiB of workgroup
//!   memory with coalesced scalar loads, which a discrete GPU needs to keep its ALUs fed; it
//!   accepts any alignment and shape, so it is also the fallback on CPU adapters.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Gpu, Launch, Shader};
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::shader!("matmul");

/// matmul.wgsl plus the subgroup kernel, which uses its declarations. A module of its own,
/// because a device without the SUBGROUP feature refuses any module that uses subgroup ops.
pub static SUBGROUP_SHADER: Shader = crate::subgroup_shader!("matmul", "matmul_subgroup");

/// `C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b]`; op(X) = Xᵀ when trans_x. Row-major with leading dims (row strides)
/// and element offsets, so sub-blocks (heads, column blocks) are addressable without copies.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    /// Row strides of A, B and C as stored.
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub offset_a: usize,
    pub offset_b: usize,
    pub offset_c: usize,
    /// Per-batch element strides; 0 uses the same matrix for every batch entry.
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Gemm {
    /// Batch 1, alpha 1, beta 0, densely packed operands.
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Gemm {
        Gemm {
            batch: 1,
            m,
            n,
            k,
            trans_a,
            trans_b,
            alpha: 1.0,
            beta: 0.0,
            lda: if trans_a { m } else { k },
            ldb: if trans_b { k } else { n },
            ldc: n,
            offset_a: 0,
            offset_b: 0,
            offset_c: 0,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }

    /// (rows, cols) of A as stored.
    fn stored_a(&self) -> (usize, usize) {
        if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }

    fn stored_b(&self) -> (usize, usize) {
        if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k) as f64
    }
}

/// Which GEMM kernel runs; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Subgroup,
    RegisterBlocked,
    Tiled,
}

/// Invocations per workgroup of the register-blocked kernel along n and m; 4x4 outputs each.
const RB_X: u32 = 8;
const RB_Y: u32 = 8;
const RB_BLOCK: usize = 4;
/// C tile of one subgroup (8 lanes) of the subgroup kernel.
const SG_TILE_M: usize = 32;
const SG_TILE_N: usize = 64;
/// Subgroup lanes that gemm_subgroup broadcasts from.
const SG_LANES: u32 = 8;
/// gemm_subgroup after its K loop: the remainder's masking loops (4 x (1 + 8)) and 16 stores.
const SG_TAIL_LOOPS: u64 = 4 * 9 + 16 * STORE_LOOPS;
const TILE: usize = 64;
const TILE_K: usize = 16;
/// Two staged tiles of 16 x 65 floats.
const TILED_WORKGROUP_BYTES: u64 = 2 * 16 * 65 * 4;
/// store_block: 4 row iterations, each with 4 column iterations.
const STORE_LOOPS: u64 = 4 + 16;

impl Variant {
    /// The kernel for this adapter and operand layout.
    pub fn choose(gpu: &Gpu, g: &Gemm, a: &Tensor, b: &Tensor) -> Variant {
        if !gpu.is_cpu() || !vec4_aligned(g, a, b) {
            Variant::Tiled
        } else if subgroups_of_8(gpu) {
            Variant::Subgroup
        } else {
            Variant::RegisterBlocked
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Subgroup => "subgroup",
            Variant::RegisterBlocked => "register-blocked",
            Variant::Tiled => "tiled",
        }
    }
}

/// gemm_subgroup needs subgroup ops and one subgroup per workgroup of 8 invocations.
pub(crate) fn subgroups_of_8(gpu: &Gpu) -> bool {
    gpu.has_subgroups() && gpu.summary().subgroup_min_size >= SG_LANES
}

/// The subgroup and register-blocked kernels read A and B as vec4: every row start must be 16-byte aligned.
fn vec4_aligned(g: &Gemm, a: &Tensor, b: &Tensor) -> bool {
    let batched = g.batch > 1;
    [g.lda, g.ldb, g.offset_a, g.offset_b, a.len(), b.len()]
        .into_iter()
        .chain(batched.then_some(g.stride_a))
        .chain(batched.then_some(g.stride_b))
        .all(|v| v % 4 == 0)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    offset_a: u32,
    offset_b: u32,
    offset_c: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
}

pub(super) fn contracts() -> Vec<ShaderContract> {
    let params = || {
        crate::uniform_layout!(
            "Params",
            Params {
                m,
                n,
                k,
                batch,
                lda,
                ldb,
                ldc,
                offset_a,
                offset_b,
                offset_c,
                stride_a,
                stride_b,
                stride_c,
                alpha,
                beta
            }
        )
    };
    let constants =
        vec![("RB_X", RB_X as u64), ("RB_Y", RB_Y as u64), ("TILE", TILE as u64), ("TILE_K", TILE_K as u64)];
    vec![
        ShaderContract { shader: &SHADER, uniforms: vec![params()], constants: constants.clone() },
        ShaderContract { shader: &SUBGROUP_SHADER, uniforms: vec![params()], constants },
    ]
}

fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| anyhow::anyhow!("gemm: {what} = {v} exceeds the 32-bit index range"))
}

/// Checks that every batch entry of a `rows x cols` matrix with leading dim `ld` lies inside `t`.
fn check_operand(
    name: &str,
    t: &Tensor,
    (rows, cols): (usize, usize),
    ld: usize,
    offset: usize,
    stride: usize,
    batch: usize,
) -> Result<()> {
    if t.dtype() != DType::F32 {
        bail!("gemm: {name} must be f32, got {:?} of shape {:?}", t.dtype(), t.shape());
    }
    if cols > ld {
        bail!("gemm: {name} has {cols} columns but leading dim {ld}; the leading dim must be at least the row length");
    }
    let end = offset + (batch - 1) * stride + (rows - 1) * ld + cols;
    if end > t.len() {
        bail!(
            "gemm: {name} ({rows}x{cols}, leading dim {ld}, offset {offset}, batch {batch} with stride {stride}) reaches element {end} but the tensor of shape {:?} holds {}",
            t.shape(),
            t.len()
        );
    }
    to_u32(t.len(), name)?;
    Ok(())
}

/// Records C = alpha * op(A) * op(B) + beta * C with the kernel this adapter prefers.
pub fn gemm(g: &Gemm, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
    gemm_with(g, a, b, c, Variant::choose(a.gpu(), g, a, b))
}

/// [`gemm`] with a given kernel (tests and benchmarks); refuses a subgroup or register-blocked
/// launch on operands that are not 16-byte aligned, and a subgroup launch on a device without
/// subgroups of at least 8.
pub fn gemm_with(g: &Gemm, a: &Tensor, b: &Tensor, c: &Tensor, variant: Variant) -> Result<()> {
    if g.batch == 0 || g.m == 0 || g.n == 0 {
        return Ok(());
    }
    if g.k > 0 {
        check_operand("A", a, g.stored_a(), g.lda, g.offset_a, g.stride_a, g.batch)?;
        check_operand("B", b, g.stored_b(), g.ldb, g.offset_b, g.stride_b, g.batch)?;
    }
    check_operand("C", c, (g.m, g.n), g.ldc, g.offset_c, g.stride_c, g.batch)?;
    if variant != Variant::Tiled && !vec4_aligned(g, a, b) {
        bail!("gemm: the {} kernel needs leading dims, offsets, batch strides and lengths of A and B that are multiples of 4; got {g:?}", variant.name());
    }
    let gpu = c.gpu();
    if variant == Variant::Subgroup && !subgroups_of_8(gpu) {
        bail!("gemm: the subgroup kernel needs the SUBGROUP feature with subgroups of at least {SG_LANES}; this device has {:?} with sizes {}..{}", gpu.summary().features, gpu.summary().subgroup_min_size, gpu.summary().subgroup_max_size);
    }
    let params = Params {
        m: to_u32(g.m, "m")?,
        n: to_u32(g.n, "n")?,
        k: to_u32(g.k, "k")?,
        batch: to_u32(g.batch, "batch")?,
        lda: to_u32(g.lda, "lda")?,
        ldb: to_u32(g.ldb, "ldb")?,
        ldc: to_u32(g.ldc, "ldc")?,
        offset_a: to_u32(g.offset_a, "offset_a")?,
        offset_b: to_u32(g.offset_b, "offset_b")?,
        offset_c: to_u32(g.offset_c, "offset_c")?,
        stride_a: to_u32(g.stride_a, "stride_a")?,
        stride_b: to_u32(g.stride_b, "stride_b")?,
        stride_c: to_u32(g.stride_c, "stride_c")?,
        alpha: g.alpha,
        beta: g.beta,
    };
    let (shader, entry, tile_m, tile_n, loop_iterations, workgroup_bytes) = match variant {
        // K loop of K/4 steps, then the masked remainder and the stores.
        Variant::Subgroup => {
            (&SUBGROUP_SHADER, "gemm_subgroup", SG_TILE_M, SG_TILE_N, (g.k / 4) as u64 + SG_TAIL_LOOPS, 0)
        }
        // K loop of K/4 steps, the masked remainder's 4-step loop, then the store.
        Variant::RegisterBlocked => (
            &SHADER,
            "gemm_register_blocked",
            RB_BLOCK * RB_Y as usize,
            RB_BLOCK * RB_X as usize,
            (g.k / 4 + 4 + STORE_LOOPS as usize) as u64,
            0,
        ),
        // Per K tile: the tile step, 4 staging steps and TILE_K multiply steps.
        Variant::Tiled => (
            &SHADER,
            "gemm_tiled",
            TILE,
            TILE,
            (g.k.div_ceil(TILE_K) * (1 + 4 + TILE_K)) as u64 + STORE_LOOPS,
            TILED_WORKGROUP_BYTES,
        ),
    };
    let workgroups = grid(gpu, "gemm", g.n.div_ceil(tile_n), g.m.div_ceil(tile_m), g.batch)?;
    let flag = |t: bool| if t { 1.0 } else { 0.0 };
    let constants = [("TRANS_A", flag(g.trans_a)), ("TRANS_B", flag(g.trans_b))];
    gpu.launch(&Launch {
        shader,
        entry,
        constants: &constants,
        params: bytemuck::bytes_of(&params),
        read: &[a, b],
        write: &[c],
        workgroups,
        loop_iterations,
        workgroup_bytes,
    })
}

/// A 3-D grid, refused with advice when a dimension passes the adapter's limit.
fn grid(gpu: &Gpu, what: &str, x: usize, y: usize, z: usize) -> Result<[u32; 3]> {
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if x > max || y > max || z > max {
        bail!("{what}: a grid of {x}x{y}x{z} workgroups exceeds the adapter's {max} per dimension; split the batch or the matrix");
    }
    Ok([x as u32, y as u32, z as u32])
}

/// (batch, rows, cols) of a 2-D or 3-D f32 tensor.
fn dims3(t: &Tensor, what: &str) -> Result<(usize, usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((1, r, c)),
        [b, r, c] => Ok((b, r, c)),
        _ => bail!("{what}: expected a 2-D or 3-D tensor, got shape {:?}", t.shape()),
    }
}

/// op(A) · op(B) for 2-D operands, or batched when either is 3-D (a 2-D operand is shared by
/// every batch entry). Allocates C: [m, n] or [batch, m, n].
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let (ba, ra, ca) = dims3(a, "matmul A")?;
    let (bb, rb, cb) = dims3(b, "matmul B")?;
    let (m, ka) = if trans_a { (ca, ra) } else { (ra, ca) };
    let (kb, n) = if trans_b { (cb, rb) } else { (rb, cb) };
    if ka != kb {
        bail!(
            "matmul: inner dims differ: A {:?} (trans {trans_a}) has {ka}, B {:?} (trans {trans_b}) has {kb}",
            a.shape(),
            b.shape()
        );
    }
    let batched = a.shape().len() == 3 || b.shape().len() == 3;
    let batch = if a.shape().len() == 3 && b.shape().len() == 3 {
        if ba != bb {
            bail!("matmul: batch sizes differ: A {:?}, B {:?}", a.shape(), b.shape());
        }
        ba
    } else {
        ba.max(bb)
    };
    let mut g = Gemm::new(m, n, ka, trans_a, trans_b);
    g.batch = batch;
    g.stride_a = if a.shape().len() == 3 { m * ka } else { 0 };
    g.stride_b = if b.shape().len() == 3 { ka * n } else { 0 };
    let shape: Vec<usize> = if batched { vec![batch, m, n] } else { vec![m, n] };
    let c = Tensor::uninit(a.gpu(), &shape, DType::F32)?;
    gemm(&g, a, b, &c)?;
    Ok(c)
}

/// y[rows, out] = x[rows, in] · W[out, in]ᵀ (HF nn.Linear weight layout, no bias); x may have
/// any number of leading dims.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (&d_in, lead) = x.shape().split_last().ok_or_else(|| anyhow::anyhow!("linear: x is a scalar"))?;
    let &[d_out, w_in] = w.shape() else {
        bail!("linear: weight must be 2-D [out, in], got {:?}", w.shape());
    };
    if w_in != d_in {
        bail!("linear: x {:?} has {d_in} features but weight {:?} expects {w_in}", x.shape(), w.shape());
    }
    let rows: usize = lead.iter().product();
    let mut shape = lead.to_vec();
    shape.push(d_out);
    let y = Tensor::uninit(x.gpu(), &shape, DType::F32)?;
    gemm(&Gemm::new(rows, d_out, d_in, false, true), x, w, &y)?;
    Ok(y)
}

/// Records y[r, :] += bias for every row r of y [.., out] (an nn.Linear bias): a rank-one
/// GEMM of a column of ones and the bias row, so no kernel of its own is needed.
pub fn add_bias(y: &Tensor, bias: &Tensor) -> Result<()> {
    let (&d_out, _) = y.shape().split_last().ok_or_else(|| anyhow::anyhow!("add_bias: y is a scalar"))?;
    if bias.shape() != [d_out] {
        bail!("add_bias: bias {:?} does not fit the {d_out} features of y {:?}", bias.shape(), y.shape());
    }
    let rows = y.len() / d_out.max(1);
    let ones = Tensor::from_f32(y.gpu(), &[rows, 1], &vec![1.0; rows])?;
    gemm(&Gemm { beta: 1.0, ..Gemm::new(rows, d_out, 1, false, false) }, &ones, bias, y)
}

/// Backward of `y = linear(x, w)`: returns dx = dy·W and accumulates dW += dyᵀ·x.
pub fn linear_backward(dy: &Tensor, x: &Tensor, w: &Tensor, dw: &Tensor) -> Result<Tensor> {
    let &[d_out, d_in] = w.shape() else {
        bail!("linear_backward: weight must be 2-D [out, in], got {:?}", w.shape());
    };
    if dw.shape() != w.shape() {
        bail!("linear_backward: gradient {:?} does not match weight {:?}", dw.shape(), w.shape());
    }
    let rows = x.len() / d_in.max(1);
    if x.len() != rows * d_in || dy.len() != rows * d_out {
        bail!("linear_backward: x {:?} and dy {:?} do not fit weight {:?}", x.shape(), dy.shape(), w.shape());
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a feature dim") = d_in;
    let dx = Tensor::uninit(x.gpu(), &shape, DType::F32)?;
    gemm(&Gemm::new(rows, d_in, d_out, false, false), dy, w, &dx)?;
    gemm(&Gemm { beta: 1.0, ..Gemm::new(d_out, d_in, rows, true, false) }, dy, x, dw)?;
    Ok(dx)
}

/// Swaps the last two dims, batched over the leading ones.
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 || x.shape().len() < 2 {
        bail!("transpose: expected an f32 tensor of at least 2 dims, got {:?} {:?}", x.dtype(), x.shape());
    }
    let nd = x.shape().len();
    let (rows, cols) = (x.shape()[nd - 2], x.shape()[nd - 1]);
    let batch: usize = x.shape()[..nd - 2].iter().product();
    let mut shape = x.shape().to_vec();
    shape.swap(nd - 2, nd - 1);
    let y = Tensor::uninit(x.gpu(), &shape, DType::F32)?;
    let params = Params { m: to_u32(rows, "rows")?, n: to_u32(cols, "cols")?, ..Params::zeroed() };
    to_u32(x.len(), "transpose length")?;
    let gpu = x.gpu();
    gpu.launch(&Launch {
        shader: &SHADER,
        entry: "transpose_tiled",
        constants: &[],
        params: bytemuck::bytes_of(&params),
        read: &[x],
        write: &[&y],
        workgroups: grid(gpu, "transpose", cols.div_ceil(16), rows.div_ceil(16), batch)?,
        loop_iterations: 0,
        workgroup_bytes: 16 * 17 * 4,
    })?;
    Ok(y)
}

/// CPU reference with the exact [`Gemm`] semantics, in f64; `c` holds C before the call.
pub fn reference_gemm(g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    for bi in 0..g.batch {
        let (ba, bb, bc) = (g.offset_a + bi * g.stride_a, g.offset_b + bi * g.stride_b, g.offset_c + bi * g.stride_c);
        for i in 0..g.m {
            for j in 0..g.n {
                let mut sum = 0.0f64;
                for p in 0..g.k {
                    let av = if g.trans_a { a[ba + p * g.lda + i] } else { a[ba + i * g.lda + p] };
                    let bv = if g.trans_b { b[bb + j * g.ldb + p] } else { b[bb + p * g.ldb + j] };
                    sum += av as f64 * bv as f64;
                }
                let idx = bc + i * g.ldc + j;
                let prior = if g.beta != 0.0 { g.beta as f64 * c[idx] as f64 } else { 0.0 };
                c[idx] = (g.alpha as f64 * sum + prior) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{assert_close, random};

    const VARIANTS: [Variant; 3] = [Variant::Subgroup, Variant::RegisterBlocked, Variant::Tiled];
    const TRANSPOSES: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

    /// Elements needed to hold every batch entry of a `rows x cols` operand.
    fn extent(rows: usize, cols: usize, ld: usize, offset: usize, stride: usize, batch: usize) -> usize {
        (offset + (batch - 1) * stride + (rows - 1) * ld + cols).next_multiple_of(4)
    }

    /// Runs `g` on random operands with `variant` and compares all of C (including the
    /// entries outside the addressed sub-blocks, which must be untouched) with the reference.
    fn check(g: &Gemm, variant: Variant, seed: u64) {
        check_on(&gpu(), g, variant, seed);
    }

    fn check_on(gpu: &Gpu, g: &Gemm, variant: Variant, seed: u64) {
        let (ra, ca) = g.stored_a();
        let (rb, cb) = g.stored_b();
        let a = random(extent(ra, ca, g.lda, g.offset_a, g.stride_a, g.batch), seed);
        let b = random(extent(rb, cb, g.ldb, g.offset_b, g.stride_b, g.batch), seed + 1);
        let c0 = random(extent(g.m, g.n, g.ldc, g.offset_c, g.stride_c, g.batch), seed + 2);
        let ta = Tensor::from_f32(gpu, &[a.len()], &a).unwrap();
        let tb = Tensor::from_f32(gpu, &[b.len()], &b).unwrap();
        let tc = Tensor::from_f32(gpu, &[c0.len()], &c0).unwrap();
        gemm_with(g, &ta, &tb, &tc, variant).unwrap_or_else(|e| panic!("{variant:?} {g:?}: {e:#}"));
        let mut want = c0;
        reference_gemm(g, &a, &b, &mut want);
        // f32 accumulation error grows with the length of the dot products.
        let tol = 2e-6 * (g.k as f32).max(1.0).sqrt() * 4.0;
        let got = tc.to_f32().unwrap();
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (x, w)) in got.iter().zip(&want).enumerate() {
            assert!((x - w).abs() <= tol * scale, "{variant:?} {g:?}: element {i}: got {x}, want {w}");
        }
    }

    /// Leading dims padded to a multiple of 4 so that both variants accept the shape.
    fn padded(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Gemm {
        let mut g = Gemm::new(m, n, k, trans_a, trans_b);
        let (_, ca) = g.stored_a();
        let (_, cb) = g.stored_b();
        g.lda = ca.next_multiple_of(4);
        g.ldb = cb.next_multiple_of(4);
        g.ldc = n + 3;
        g.stride_a = g.stored_a().0 * g.lda;
        g.stride_b = g.stored_b().0 * g.ldb;
        g.stride_c = m * g.ldc;
        g
    }

    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (3, 17, 5),
        (17, 3, 63),
        (63, 64, 65),
        (64, 65, 64),
        (65, 63, 3),
        (127, 33, 17),
        (5, 255, 127),
        (1, 70, 255),
    ];

    #[test]
    fn every_variant_matches_reference_over_awkward_shapes_and_transposes() {
        for variant in VARIANTS {
            for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
                for (t, &(ta, tb)) in TRANSPOSES.iter().enumerate() {
                    check(&padded(m, n, k, ta, tb), variant, (s * 4 + t) as u64);
                }
            }
        }
    }

    #[test]
    fn tiled_handles_unaligned_leading_dims_and_auto_choice_falls_back() {
        for &(m, n, k) in &SHAPES {
            for &(ta, tb) in &TRANSPOSES {
                check(&Gemm::new(m, n, k, ta, tb), Variant::Tiled, (m * n + k) as u64);
            }
        }
        let gpu = gpu();
        let g = Gemm::new(3, 5, 7, false, false);
        let a = Tensor::zeros(&gpu, &[21], DType::F32).unwrap();
        let b = Tensor::zeros(&gpu, &[35], DType::F32).unwrap();
        let c = Tensor::zeros(&gpu, &[15], DType::F32).unwrap();
        assert_eq!(Variant::choose(&gpu, &g, &a, &b), Variant::Tiled);
        let err = gemm_with(&g, &a, &b, &c, Variant::RegisterBlocked).unwrap_err().to_string();
        assert!(err.contains("multiples of 4"), "{err}");
    }

    #[test]
    fn devices_without_subgroups_use_the_register_blocked_kernel() {
        let baseline = Gpu::new(&crate::gpu::GpuOptions { baseline: true, ..Default::default() }).unwrap();
        let g = padded(65, 63, 17, true, false);
        let a = Tensor::zeros(&baseline, &[17 * 68], DType::F32).unwrap();
        let b = Tensor::zeros(&baseline, &[17 * 64], DType::F32).unwrap();
        let c = Tensor::zeros(&baseline, &[65 * 66], DType::F32).unwrap();
        let chosen = Variant::choose(&baseline, &g, &a, &b);
        let want = if baseline.is_cpu() { Variant::RegisterBlocked } else { Variant::Tiled };
        assert_eq!(chosen, want);
        let err = gemm_with(&g, &a, &b, &c, Variant::Subgroup).unwrap_err().to_string();
        assert!(err.contains("SUBGROUP"), "{err}");
        check_on(&baseline, &g, chosen, 5);
    }

    #[test]
    fn batched_broadcast_accumulate_and_sub_blocks() {
        for variant in VARIANTS {
            for &(ta, tb) in &TRANSPOSES {
                // Batch of 3 sharing one B (stride 0), accumulating into C.
                let mut g = padded(17, 9, 66, ta, tb);
                g.batch = 3;
                g.stride_b = 0;
                g.alpha = -0.75;
                g.beta = 0.5;
                check(&g, variant, 7);
                // A 2-head layout: head h uses columns 8h..8h+8 of [rows, 16] activations, so
                // both operands are sub-blocks with offsets and wide leading dims.
                let mut g = Gemm::new(13, 6, 8, ta, tb);
                g.lda = 16;
                g.ldb = 12;
                g.ldc = 20;
                g.offset_a = 8;
                g.offset_b = 4;
                g.offset_c = 5;
                g.stride_a = 16 * 16;
                g.stride_b = 12 * 13;
                g.stride_c = 20 * 14;
                g.batch = 2;
                g.beta = 1.0;
                check(&g, variant, 11);
            }
        }
    }

    #[test]
    fn matmul_linear_and_transpose_match_reference() {
        let gpu = gpu();
        let (bsz, m, k, n) = (3, 5, 17, 65);
        let a = random(bsz * m * k, 1);
        let bv = random(k * n, 2);
        let ta = Tensor::from_f32(&gpu, &[bsz, m, k], &a).unwrap();
        let tb = Tensor::from_f32(&gpu, &[k, n], &bv).unwrap();
        // Batched A times a shared B.
        let got = matmul(&ta, &tb, false, false).unwrap();
        assert_eq!(got.shape(), &[bsz, m, n]);
        let mut g = Gemm::new(m, n, k, false, false);
        g.batch = bsz;
        g.stride_b = 0;
        let mut want = vec![0.0; bsz * m * n];
        reference_gemm(&g, &a, &bv, &mut want);
        assert_close(&got.to_f32().unwrap(), &want, 1e-5);

        // linear == x · Wᵀ with W = Bᵀ stored [n, k].
        let w = transpose(&tb).unwrap();
        assert_eq!(w.shape(), &[n, k]);
        let y = linear(&ta, &w).unwrap();
        assert_eq!(y.shape(), &[bsz, m, n]);
        assert_close(&y.to_f32().unwrap(), &want, 1e-5);

        // Transposed operands: (Aᵀ)ᵀ·B for each batch entry.
        let at = transpose(&ta).unwrap();
        let got = matmul(&at, &tb, true, false).unwrap();
        assert_close(&got.to_f32().unwrap(), &want, 1e-5);

        let err = matmul(&ta, &tb, false, true).unwrap_err().to_string();
        assert!(err.contains("inner dims differ"), "{err}");
    }

    #[test]
    fn linear_backward_gives_input_gradient_and_accumulates_weight_gradient() {
        let gpu = gpu();
        let (rows, d_in, d_out) = (7, 17, 5);
        let (x, w, dy) = (random(rows * d_in, 3), random(d_out * d_in, 4), random(rows * d_out, 5));
        let prior = random(d_out * d_in, 6);
        let tx = Tensor::from_f32(&gpu, &[rows, d_in], &x).unwrap();
        let tw = Tensor::from_f32(&gpu, &[d_out, d_in], &w).unwrap();
        let tdy = Tensor::from_f32(&gpu, &[rows, d_out], &dy).unwrap();
        let tdw = Tensor::from_f32(&gpu, &[d_out, d_in], &prior).unwrap();
        let dx = linear_backward(&tdy, &tx, &tw, &tdw).unwrap();
        let mut want_dx = vec![0.0; rows * d_in];
        reference_gemm(&Gemm::new(rows, d_in, d_out, false, false), &dy, &w, &mut want_dx);
        let mut want_dw = prior.clone();
        reference_gemm(&Gemm { beta: 1.0, ..Gemm::new(d_out, d_in, rows, true, false) }, &dy, &x, &mut want_dw);
        assert_close(&dx.to_f32().unwrap(), &want_dx, 1e-5);
        assert_close(&tdw.to_f32().unwrap(), &want_dw, 1e-5);
        let wrong = Tensor::zeros(&gpu, &[d_in, d_out], DType::F32).unwrap();
        assert!(linear_backward(&tdy, &tx, &tw, &wrong).is_err());
    }

    #[test]
    fn transpose_swaps_the_last_two_dims() {
        let gpu = gpu();
        for shape in [vec![1, 1], vec![3, 17], vec![2, 65, 63], vec![2, 2, 16, 33]] {
            let nd = shape.len();
            let (r, c) = (shape[nd - 2], shape[nd - 1]);
            let x = random(shape.iter().product(), r as u64);
            let y = transpose(&Tensor::from_f32(&gpu, &shape, &x).unwrap()).unwrap();
            let mut want_shape = shape.clone();
            want_shape.swap(nd - 2, nd - 1);
            assert_eq!(y.shape(), &want_shape[..]);
            let mut want = vec![0.0; x.len()];
            for b in 0..x.len() / (r * c) {
                for i in 0..r {
                    for j in 0..c {
                        want[b * r * c + j * r + i] = x[b * r * c + i * c + j];
                    }
                }
            }
            assert_eq!(y.to_f32().unwrap(), want, "shape {shape:?}");
        }
    }

    #[test]
    fn launches_over_the_loop_budget_or_grid_limit_are_refused() {
        let gpu = gpu();
        // m = n = 1 keeps the operands at 1 MiB while K/4 passes the 65,535-iteration budget.
        let k = 4 * 65_536;
        let a = Tensor::from_f32(&gpu, &[k], &vec![1.0; k]).unwrap();
        let c = Tensor::zeros(&gpu, &[1], DType::F32).unwrap();
        for variant in VARIANTS {
            let err = gemm_with(&Gemm::new(1, 1, k, false, true), &a, &a, &c, variant).unwrap_err().to_string();
            assert!(err.contains("loop iterations"), "{variant:?}: {err}");
        }
        // Just under the budget the register-blocked kernel runs every iteration: the dot
        // product of k_ok ones is exact in f32 and would come out short if a loop were cut.
        let k_ok = 4 * (65_535 - 4 - STORE_LOOPS as usize);
        gemm_with(&Gemm::new(1, 1, k_ok, false, true), &a, &a, &c, Variant::RegisterBlocked).unwrap();
        assert_eq!(c.to_f32().unwrap(), vec![k_ok as f32]);

        // 70,000 batch entries of 1x1 matrices: broadcast A and B, so only C is real.
        let mut g = Gemm::new(1, 1, 1, false, false);
        g.batch = 70_000;
        g.stride_a = 0;
        g.stride_b = 0;
        g.stride_c = 1;
        let c = Tensor::zeros(&gpu, &[70_000], DType::F32).unwrap();
        let one = Tensor::from_f32(&gpu, &[4], &[1.0; 4]).unwrap();
        let err = gemm(&g, &one, &one, &c).unwrap_err().to_string();
        assert!(err.contains("per dimension"), "{err}");
    }

    #[test]
    fn operands_too_small_are_refused_with_their_shape() {
        let gpu = gpu();
        let a = Tensor::zeros(&gpu, &[4, 4], DType::F32).unwrap();
        let c = Tensor::zeros(&gpu, &[4, 4], DType::F32).unwrap();
        let mut g = Gemm::new(4, 4, 4, false, false);
        g.batch = 2;
        let err = gemm(&g, &a, &a, &c).unwrap_err().to_string();
        assert!(err.contains("gemm: A") && err.contains("[4, 4]"), "{err}");
    }

    #[test]
    fn small_product_snapshot() {
        let gpu = gpu();
        let a: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 3.0).collect();
        let b: Vec<f32> = (0..8).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        let ta = Tensor::from_f32(&gpu, &[3, 4], &a).unwrap();
        let tb = Tensor::from_f32(&gpu, &[4, 2], &b).unwrap();
        let c = matmul(&ta, &tb, false, false).unwrap().to_f32().unwrap();
        let rows: Vec<String> =
            c.chunks(2).map(|r| r.iter().map(|v| format!("{:.4}", v + 0.0)).collect::<Vec<_>>().join(" ")).collect();
        insta::assert_snapshot!(rows.join("\n"));
    }
}
