//! Thin SVD of batches of same-shape f32 matrices by block one-sided Jacobi (Hestenes),
//! entirely on the GPU. Launchers for `shaders/jacobi.wgsl` and the sweep driver.
//!
//! The matrix (or its transpose when m < n, so that the long side is the column length) is
//! copied into W with contiguous columns, padded with zero columns to an even number of
//! 16-wide blocks; V = I is stacked under W, so that every column of the working matrix X is
//! a column of W above the same column of V. A sweep visits every pair of blocks once in
//! round-robin order, NB/2 independent pairs per round: Gram of the pair's 32 columns of W, a
//! Jacobi eigensolve of that 32×32 Gram in workgroup memory, and the rotation applied to the
//! pair's columns of X (W and V in one pass); on CPU adapters with subgroups all three run as
//! subgroup kernels ([`RoundKernels`]). Before every sweep the columns are sorted by norm.
//! Stopping rules as LAPACK's dgesvj: every off-diagonal cosine |wᵢᵀwⱼ|/(‖wᵢ‖‖wⱼ‖) below
//! √M·ε (then the sweep rotated nothing), or the rounding floor of `rounding_floor_reached`;
//! at most 30 sweeps. σ are the final column norms, U the normalised columns, sorted by
//! descending σ.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Gpu, Launch, Shader};
use crate::kernels::matmul::{gemm, matmul, subgroups_of_8, Gemm};
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::shader!("jacobi");

/// jacobi.wgsl plus the subgroup kernels of `gram`, `eigen` and `rotate` (a module of its
/// own: a device without the SUBGROUP feature refuses any module that uses subgroup ops).
pub static SUBGROUP_SHADER: Shader = crate::subgroup_shader!("jacobi", "jacobi_subgroup");

/// Which kernels compute a round's Grams, eigensolves and rotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundKernels {
    /// CPU adapters with subgroups of at least 8 (lavapipe): one 8-lane subgroup per
    /// workgroup shares its loads by broadcast, and the eigensolve keeps the 32×32 Gram and
    /// rotation in registers (shaders/jacobi_subgroup.wgsl). Measured on lavapipe at 1024²
    /// against the portable kernels: Gram 4x, rotation 2.8x, eigensolve 13x faster.
    Subgroup,
    /// Everywhere else: Gram and rotation as register blocks straight from storage, the
    /// eigensolve in workgroup memory; no subgroup ops.
    Portable,
}

impl RoundKernels {
    pub fn choose(gpu: &Gpu) -> RoundKernels {
        if gpu.is_cpu() && subgroups_of_8(gpu) {
            RoundKernels::Subgroup
        } else {
            RoundKernels::Portable
        }
    }

    fn gram(self) -> Kernel {
        match self {
            RoundKernels::Subgroup => (&SUBGROUP_SHADER, "gram_subgroup"),
            RoundKernels::Portable => (&SHADER, "gram"),
        }
    }

    fn eigen(self) -> Kernel {
        match self {
            RoundKernels::Subgroup => (&SUBGROUP_SHADER, "eigen_subgroup"),
            RoundKernels::Portable => (&SHADER, "eigen"),
        }
    }

    fn rotate(self) -> Kernel {
        match self {
            RoundKernels::Subgroup => (&SUBGROUP_SHADER, "rotate_subgroup"),
            RoundKernels::Portable => (&SHADER, "rotate"),
        }
    }
}

/// Columns per block; a pair's 2B×2B Gram and rotation take 4 KiB each of workgroup memory.
pub const BLOCK: usize = 16;
const PAIR: usize = 2 * BLOCK;
/// Rows a `rotate` workgroup computes per step (ROT_ROWS in the shader).
const ROTATE_ROWS: usize = 64;
/// Rows a `rotate_subgroup` workgroup computes per step (SG_ROT_ROWS in the shader).
const SUBGROUP_ROTATE_ROWS: usize = 32;
/// Rows one workgroup of `gram` / `rotate` covers; longer columns are split over workgroups.
const CHUNK: usize = 256;
/// Inner Jacobi sweeps of the small eigensolve at most. The outer sweeps converge anyway, so
/// each pair is solved only roughly; with the subgroup eigensolve cheap, a second inner sweep
/// saves an outer one at 256² and 512² (8 and 9 instead of 9 and 10; 11 at 1024² either way).
const INNER_SWEEPS: usize = 2;
/// Invocations of an `eigen` workgroup (EIG_WG in the shader).
const EIGEN_WORKGROUP: usize = 32;
pub const MAX_SWEEPS: usize = 30;
/// dgesvj's SWBAND: its relaxed stopping rule applies from sweep SWBAND + 2 on.
const LAPACK_SWBAND: usize = 3;
/// Unit roundoff of f32 (LAPACK's ε).
const EPS: f32 = f32::EPSILON / 2.0;
/// Two 1024-float arrays (tile, Gram/rotation) + the eigensolve's rotation scratch.
const SHARED_BYTES: u64 = 2 * 4096 + 2 * 64 + 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RoundParams {
    m: u32,
    ld: u32,
    np: u32,
    nb: u32,
    round: u32,
    chunk: u32,
    chunks: u32,
    tol: f32,
    sweeps: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct ShapeParams {
    batch: u32,
    len: u32,
    np: u32,
    cols: u32,
    transpose: u32,
    ld: u32,
    offset: u32,
}

pub(super) fn contracts() -> Vec<ShaderContract> {
    let uniforms = || {
        vec![
            crate::uniform_layout!("Params", RoundParams { m, ld, np, nb, round, chunk, chunks, tol, sweeps }),
            crate::uniform_layout!("Shape", ShapeParams { batch, len, np, cols, transpose, ld, offset }),
        ]
    };
    let constants = vec![
        ("B", BLOCK as u64),
        ("P", PAIR as u64),
        ("ROT_ROWS", ROTATE_ROWS as u64),
        ("EIG_WG", EIGEN_WORKGROUP as u64),
    ];
    let mut subgroup_constants = constants.clone();
    subgroup_constants.push(("SG_ROT_ROWS", SUBGROUP_ROTATE_ROWS as u64));
    vec![
        ShaderContract { shader: &SHADER, uniforms: uniforms(), constants },
        ShaderContract { shader: &SUBGROUP_SHADER, uniforms: uniforms(), constants: subgroup_constants },
    ]
}

/// A = U diag(S) Vᵀ for each matrix of the batch; r = min(m, n).
pub struct SvdResult {
    /// [batch, m, r]; columns with σ = 0 are zero.
    pub u: Tensor,
    /// [batch, r], descending.
    pub s: Tensor,
    /// [batch, n, r]
    pub v: Tensor,
    /// Sweeps run, the last one included (it rotated nothing, or only at the rounding floor).
    pub sweeps: usize,
    /// Largest off-diagonal cosine seen in the last sweep.
    pub off: f32,
}

/// The sizes of one decomposition: W holds `cols` columns of length `len`, padded to `np`.
#[derive(Clone, Copy, Debug)]
struct Plan {
    batch: usize,
    len: usize,
    /// W's rows as the round kernels see them: len rounded up to a multiple of 4 (zero rows),
    /// so that they may read columns as vec4. V's rows follow.
    ld: usize,
    cols: usize,
    np: usize,
    nb: usize,
    /// W's columns are A's columns (m ≥ n); otherwise A's rows (work on Aᵀ).
    tall: bool,
}

impl Plan {
    fn new(batch: usize, m: usize, n: usize) -> Plan {
        let (len, cols) = if m >= n { (m, n) } else { (n, m) };
        let nb = cols.div_ceil(BLOCK).max(2).next_multiple_of(2);
        Plan { batch, len, ld: len.next_multiple_of(4), cols, np: nb * BLOCK, nb, tall: m >= n }
    }
    fn pairs(&self) -> usize {
        self.nb / 2
    }
    /// X's column stride: W's rows, then V's.
    fn stride(&self) -> usize {
        self.ld + self.np
    }
    fn tol(&self) -> f32 {
        (self.len as f32).sqrt() * EPS
    }
}

fn chunks(len: usize) -> usize {
    len.div_ceil(CHUNK)
}

/// Worst-case loop iterations of one `gram` invocation: its rows in steps of 4, then the
/// stores (portable: 4 of 4; subgroup: 8 of 4 x (1 + 4)).
fn gram_loops(kernels: RoundKernels, len: usize) -> u64 {
    let stores = match kernels {
        RoundKernels::Portable => 4 * 4,
        RoundKernels::Subgroup => 8 * 4 * 5,
    };
    (len.min(CHUNK).div_ceil(4) + stores) as u64
}

/// Per step of `rotate`: the step (portable: and its loop over the pair's columns; the
/// subgroup kernel's column steps and stores are unrolled).
fn rotate_loops(kernels: RoundKernels, len: usize) -> u64 {
    let (rows, per_step) = match kernels {
        RoundKernels::Portable => (ROTATE_ROWS, 1 + PAIR),
        RoundKernels::Subgroup => (SUBGROUP_ROTATE_ROWS, 1),
    };
    (len.min(CHUNK).div_ceil(rows) * per_step) as u64
}

fn eigen_loops(len: usize) -> u64 {
    let per_thread = (PAIR * PAIR / EIGEN_WORKGROUP) as u64;
    // The fused G update over BLOCK x BLOCK slot pairs, then Q's BLOCK x PAIR entries.
    let per_step = ((BLOCK * BLOCK).div_ceil(EIGEN_WORKGROUP) + (BLOCK * PAIR).div_ceil(EIGEN_WORKGROUP)) as u64;
    per_thread * (1 + chunks(len) as u64)
        + per_thread
        + 2 * per_thread * (1 + PAIR as u64)
        + INNER_SWEEPS as u64 * (1 + (PAIR as u64 - 1) * (1 + per_step))
}

fn norm_loops(len: usize) -> u64 {
    len.div_ceil(256) as u64 + 8
}

/// A kernel: its module and entry point.
type Kernel = (&'static Shader, &'static str);

fn round_launch(
    gpu: &Gpu,
    (shader, entry): Kernel,
    params: &RoundParams,
    read: &[&Tensor],
    write: &[&Tensor],
    workgroups: [u32; 3],
    loop_iterations: u64,
) -> Result<()> {
    gpu.launch(&Launch {
        shader,
        entry,
        constants: &[],
        params: bytemuck::bytes_of(params),
        read,
        write,
        workgroups,
        loop_iterations,
        workgroup_bytes: SHARED_BYTES,
    })
}

fn flat_launch(
    gpu: &Gpu,
    entry: &'static str,
    params: &ShapeParams,
    read: &[&Tensor],
    write: &Tensor,
    n: usize,
) -> Result<()> {
    gpu.launch(&Launch {
        shader: &SHADER,
        entry,
        constants: &[],
        params: bytemuck::bytes_of(params),
        read,
        write: &[write],
        workgroups: grid_1d((n as u64).div_ceil(256)),
        loop_iterations: 0,
        workgroup_bytes: SHARED_BYTES,
    })
}

/// Scratch of one decomposition, allocated once and reused by every round.
struct Work {
    /// [batch, np, stride]: W above V in every column.
    x: Tensor,
    /// Same shape: where `sort_columns` writes the reordered X.
    spare: Tensor,
    /// [batch, np] of 1: the scale of a `gather` that only moves columns.
    ones: Tensor,
    partial: Tensor,
    q: Tensor,
    rotated: Tensor,
    off: Tensor,
}

impl Work {
    /// Scratch for `plan`, with W = A (or Aᵀ) and V = I recorded.
    fn load(plan: &Plan, mats: &Tensor) -> Result<Work> {
        let gpu = mats.gpu();
        let batch = plan.batch;
        if (batch * plan.np * plan.stride()) as u64 > u32::MAX as u64 {
            bail!("Jacobi SVD: {:?} is too large for 32-bit indexing; split the batch", mats.shape());
        }
        let work = Work {
            x: Tensor::uninit(gpu, &[batch, plan.np, plan.stride()], DType::F32)?,
            spare: Tensor::uninit(gpu, &[batch, plan.np, plan.stride()], DType::F32)?,
            ones: Tensor::from_f32(gpu, &[batch, plan.np], &vec![1.0; batch * plan.np])?,
            partial: Tensor::uninit(gpu, &[batch, plan.pairs(), chunks(plan.ld), PAIR, PAIR], DType::F32)?,
            q: Tensor::uninit(gpu, &[batch, plan.pairs(), PAIR, PAIR], DType::F32)?,
            rotated: Tensor::uninit(gpu, &[batch, plan.pairs()], DType::U32)?,
            off: Tensor::uninit(gpu, &[2], DType::F32)?,
        };
        let shape = ShapeParams {
            batch: batch as u32,
            len: plan.len as u32,
            np: plan.np as u32,
            cols: plan.cols as u32,
            transpose: plan.tall as u32,
            ld: plan.stride() as u32,
            offset: plan.ld as u32,
        };
        flat_launch(gpu, "load", &shape, &[mats], &work.x, batch * plan.np * plan.stride())?;
        Ok(work)
    }
}

/// Parameters of a round kernel that visits the first `m` rows of X.
fn round_params(plan: &Plan, m: usize, round: usize) -> RoundParams {
    RoundParams {
        m: m as u32,
        ld: plan.stride() as u32,
        np: plan.np as u32,
        nb: plan.nb as u32,
        round: round as u32,
        chunk: CHUNK as u32,
        chunks: chunks(m) as u32,
        tol: plan.tol(),
        sweeps: INNER_SWEEPS as u32,
    }
}

/// Records one round (a set of disjoint block pairs) on W and V.
fn record_round(gpu: &Gpu, kernels: RoundKernels, plan: &Plan, work: &Work, round: usize) -> Result<()> {
    let pairs = plan.pairs() as u32;
    let batch = plan.batch as u32;
    let pw = round_params(plan, plan.ld, round);
    let grid = [pairs, chunks(plan.ld) as u32, batch];
    round_launch(gpu, kernels.gram(), &pw, &[&work.x], &[&work.partial], grid, gram_loops(kernels, plan.ld))?;
    round_launch(
        gpu,
        kernels.eigen(),
        &pw,
        &[&work.partial],
        &[&work.q, &work.rotated, &work.off],
        [pairs, 1, batch],
        eigen_loops(plan.ld),
    )?;
    let px = round_params(plan, plan.stride(), round);
    let grid = [pairs, chunks(plan.stride()) as u32, batch];
    let loops = rotate_loops(kernels, plan.stride());
    round_launch(gpu, kernels.rotate(), &px, &[&work.q, &work.rotated], &[&work.x], grid, loops)
}

/// How many m×n matrices one `svd_batched` call can take on this adapter: its largest buffer,
/// the working matrix (W above V for every matrix), must fit one storage binding and 32-bit
/// indexing. Errors when not even one fits.
pub fn max_batch(gpu: &Gpu, m: usize, n: usize) -> Result<usize> {
    let plan = Plan::new(1, m, n);
    let per_matrix = (plan.np * plan.stride()) as u64;
    let limits = gpu.limits();
    let bytes = limits.max_buffer_size.min(limits.max_storage_buffer_binding_size);
    let fit = (bytes / (4 * per_matrix)).min(u32::MAX as u64 / per_matrix);
    if fit == 0 {
        bail!(
            "the SVD of a {m}x{n} matrix needs a working buffer of {:.1} MiB, more than this adapter allows per binding ({:.1} MiB)",
            (4 * per_matrix) as f64 / 1048576.0,
            bytes as f64 / 1048576.0
        );
    }
    Ok(fit as usize)
}

/// Thin SVD of every matrix of `mats` [batch, m, n] (f32). Errors on NaN/Inf input and when
/// neither stopping rule holds after 30 sweeps.
pub fn svd_batched(mats: &Tensor) -> Result<SvdResult> {
    svd_batched_with(mats, RoundKernels::choose(mats.gpu()))
}

/// [`svd_batched`] with given round kernels (tests and benchmarks); refuses the subgroup
/// kernels on a device without subgroups of at least 8.
pub fn svd_batched_with(mats: &Tensor, kernels: RoundKernels) -> Result<SvdResult> {
    let &[batch, m, n] = mats.shape() else {
        bail!("svd_batched expects a [batch, m, n] tensor, got shape {:?}", mats.shape());
    };
    if mats.dtype() != DType::F32 {
        bail!("svd_batched expects f32 matrices, got {:?}", mats.dtype());
    }
    if batch == 0 || m == 0 || n == 0 {
        bail!("svd_batched: empty matrices of shape {:?}", mats.shape());
    }
    let gpu = mats.gpu();
    if kernels == RoundKernels::Subgroup && !subgroups_of_8(gpu) {
        bail!("svd: the subgroup kernels need the SUBGROUP feature with subgroups of at least 8");
    }
    let plan = Plan::new(batch, m, n);
    let mut work = Work::load(&plan, mats)?;
    let tol = plan.tol();
    let mut sweeps = 0;
    let mut off = f32::INFINITY;
    while off > tol {
        if sweeps == MAX_SWEEPS {
            bail!(
                "Jacobi SVD of {:?} did not converge in {MAX_SWEEPS} sweeps: largest off-diagonal cosine {off:.3e}, threshold {tol:.3e}",
                mats.shape()
            );
        }
        sort_columns(gpu, &plan, &mut work)?;
        work.off.fill_zero()?;
        for round in 0..plan.nb - 1 {
            record_round(gpu, kernels, &plan, &work, round)?;
        }
        let [largest_cos, largest_sine] = work.off.to_f32()?[..] else { unreachable!("off holds 2 values") };
        off = largest_cos;
        sweeps += 1;
        log::debug!(
            "Jacobi SVD of {:?}: sweep {sweeps}, largest off-diagonal cosine {off:.3e}, largest rotation sine {largest_sine:.3e}",
            mats.shape()
        );
        if !off.is_finite() {
            bail!(
                "Jacobi SVD of {:?}: the input holds NaN or Inf (or values whose squares overflow f32)",
                mats.shape()
            );
        }
        if rounding_floor_reached(&plan, sweeps, off, largest_sine) {
            break;
        }
    }
    finish(gpu, &plan, &work, sweeps, off)
}

/// LAPACK dgesvj's second stopping rule: after a few sweeps, the cosines are within √n of
/// the tolerance and the sweep's rotations are so small (n·cos·sin below it) that what is
/// left is the rounding of the Gram, which further sweeps only stir (measured: 2 extra sweeps
/// at 1024² around a largest cosine of 1.91e-6, the tolerance 1.907e-6).
fn rounding_floor_reached(plan: &Plan, sweeps: usize, off: f32, largest_sine: f32) -> bool {
    let (n, tol) = (plan.cols as f32, plan.tol());
    sweeps > LAPACK_SWBAND + 1 && off < n.sqrt() * tol && n * off * largest_sine < tol
}

/// The norms of W's columns, [batch, np], read back.
fn column_norms(gpu: &Gpu, plan: &Plan, work: &Work) -> Result<Vec<f32>> {
    let batch = plan.batch;
    let norms = Tensor::uninit(gpu, &[batch, plan.np], DType::F32)?;
    let shape = ShapeParams {
        batch: batch as u32,
        len: plan.ld as u32,
        np: plan.np as u32,
        ld: plan.stride() as u32,
        ..Default::default()
    };
    gpu.launch(&Launch {
        shader: &SHADER,
        entry: "norms",
        constants: &[],
        params: bytemuck::bytes_of(&shape),
        read: &[&work.x],
        write: &[&norms],
        workgroups: grid_1d((batch * plan.np) as u64),
        loop_iterations: norm_loops(plan.ld),
        workgroup_bytes: SHARED_BYTES,
    })?;
    norms.to_f32()
}

/// Reorders the true columns of X (W and V together) by descending norm, as LAPACK's
/// de Rijk pivoting does within its sweeps: blocks then hold columns of like size, and a
/// sweep converges further (measured: 11 instead of 13 sweeps at 512² in a NumPy model of
/// this solver). Padding columns stay last.
fn sort_columns(gpu: &Gpu, plan: &Plan, work: &mut Work) -> Result<()> {
    let norms = column_norms(gpu, plan, work)?;
    let mut perm: Vec<u32> = Vec::with_capacity(plan.batch * plan.np);
    for b in 0..plan.batch {
        let col = &norms[b * plan.np..(b + 1) * plan.np];
        let mut order: Vec<u32> = (0..plan.cols as u32).collect();
        order.sort_by(|&i, &j| col[j as usize].total_cmp(&col[i as usize]));
        perm.extend(order);
        perm.extend(plan.cols as u32..plan.np as u32);
    }
    if perm.iter().enumerate().all(|(i, &p)| p as usize == i % plan.np) {
        return Ok(());
    }
    let perm = Tensor::from_u32(gpu, &[plan.batch, plan.np], &perm)?;
    let columns =
        Columns { offset: 0, len: plan.stride(), count: plan.np, perm: &perm, scale: &work.ones, x_layout: true };
    gather(gpu, plan, &work.x, &columns, &work.spare)?;
    std::mem::swap(&mut work.x, &mut work.spare);
    Ok(())
}

/// Which columns of X `gather` copies: rows offset..offset + len of column perm[b, k] for
/// k < count, times scale[b, k].
struct Columns<'a> {
    offset: usize,
    len: usize,
    count: usize,
    perm: &'a Tensor,
    scale: &'a Tensor,
    /// Write them as X stores columns ([batch, count, len]) rather than as [batch, len, count].
    x_layout: bool,
}

fn gather(gpu: &Gpu, plan: &Plan, x: &Tensor, columns: &Columns, out: &Tensor) -> Result<()> {
    let p = ShapeParams {
        batch: plan.batch as u32,
        len: columns.len as u32,
        np: plan.np as u32,
        cols: columns.count as u32,
        transpose: columns.x_layout as u32,
        ld: plan.stride() as u32,
        offset: columns.offset as u32,
    };
    flat_launch(gpu, "gather", &p, &[x, columns.perm, columns.scale], out, plan.batch * columns.len * columns.count)
}

/// Column norms → σ, sorted descending; U = normalised columns, V gathered in the same order.
fn finish(gpu: &Gpu, plan: &Plan, work: &Work, sweeps: usize, off: f32) -> Result<SvdResult> {
    let (batch, r) = (plan.batch, plan.cols);
    let norms = column_norms(gpu, plan, work)?;
    let (mut perm, mut sigma, mut inv) = (Vec::with_capacity(batch * r), Vec::new(), Vec::new());
    for b in 0..batch {
        let col = &norms[b * plan.np..b * plan.np + r];
        let mut order: Vec<u32> = (0..r as u32).collect();
        order.sort_by(|&i, &j| col[j as usize].total_cmp(&col[i as usize]));
        for &i in &order {
            let s = col[i as usize];
            if !s.is_finite() {
                bail!("Jacobi SVD: non-finite column norm (the input holds values whose squares overflow f32)");
            }
            sigma.push(s);
            // Zero (or underflowed) columns give zero U columns rather than 0/0.
            inv.push(if s > 1e-15 { 1.0 / s } else { 0.0 });
        }
        perm.extend(order);
    }
    let perm = Tensor::from_u32(gpu, &[batch, r], &perm)?;
    let s = Tensor::from_f32(gpu, &[batch, r], &sigma)?;
    let inv = Tensor::from_f32(gpu, &[batch, r], &inv)?;
    // Rows offset..offset + len of X's sorted columns, scaled.
    let sorted = |offset: usize, len: usize, scale: &Tensor| -> Result<Tensor> {
        let out = Tensor::uninit(gpu, &[batch, len, r], DType::F32)?;
        let columns = Columns { offset, len, count: r, perm: &perm, scale, x_layout: false };
        gather(gpu, plan, &work.x, &columns, &out)?;
        Ok(out)
    };
    let left = sorted(0, plan.len, &inv)?;
    let right = orthogonalise(&sorted(plan.ld, plan.cols, &work.ones)?)?;
    let (u, v) = if plan.tall { (left, right) } else { (right, left) };
    Ok(SvdResult { u, s, v, sweeps, off })
}

/// One Newton–Schulz step X ← X (3I − XᵀX) / 2 on the accumulated rotations X [batch, r, r]:
/// their f32 rounding drifts with every round that touches a column (‖XᵀX − I‖ reached
/// 1.1e-5 at 1024² in 15 sweeps); the step squares the drift, for two matmuls.
fn orthogonalise(x: &Tensor) -> Result<Tensor> {
    let &[batch, rows, r] = x.shape() else {
        bail!("orthogonalise expects [batch, rows, r], got {:?}", x.shape());
    };
    let gram = matmul(x, x, true, false)?;
    let out = Tensor::uninit(x.gpu(), x.shape(), DType::F32)?;
    out.copy_from(x)?;
    let mut g = Gemm::new(rows, r, r, false, false);
    g.batch = batch;
    g.alpha = -0.5;
    g.beta = 1.5;
    gemm(&g, x, &gram, &out)?;
    Ok(out)
}

/// Thin SVD of one [m, n] matrix: u [m, r], s `[r]`, v [n, r].
pub fn svd(mat: &Tensor) -> Result<SvdResult> {
    let &[m, n] = mat.shape() else {
        bail!("svd expects an [m, n] matrix, got shape {:?}", mat.shape());
    };
    let res = svd_batched(&mat.reshape(&[1, m, n])?)?;
    let r = m.min(n);
    Ok(SvdResult {
        u: res.u.reshape(&[m, r])?,
        s: res.s.reshape(&[r])?,
        v: res.v.reshape(&[n, r])?,
        sweeps: res.sweeps,
        off: res.off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::random;

    /// Accuracy of one decomposition, measured in f64 against A (row-major [m, n]).
    struct Errors {
        reconstruction: f64,
        u_orth: f64,
        v_orth: f64,
    }

    fn measure(a: &[f32], m: usize, n: usize, u: &[f32], s: &[f32], v: &[f32]) -> Errors {
        let r = m.min(n);
        let mut diff = 0.0f64;
        let mut norm = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let usv: f64 = (0..r).map(|k| u[i * r + k] as f64 * s[k] as f64 * v[j * r + k] as f64).sum();
                diff += (a[i * n + j] as f64 - usv).powi(2);
                norm += (a[i * n + j] as f64).powi(2);
            }
        }
        // Orthonormality over the columns with σ > 0 (U's columns for σ = 0 are zero).
        let orth = |x: &[f32], rows: usize| {
            let mut worst = 0.0f64;
            for p in (0..r).filter(|&p| s[p] > 0.0) {
                for q in (0..r).filter(|&q| s[q] > 0.0) {
                    let dot: f64 = (0..rows).map(|i| x[i * r + p] as f64 * x[i * r + q] as f64).sum();
                    worst = worst.max((dot - if p == q { 1.0 } else { 0.0 }).abs());
                }
            }
            worst
        };
        Errors {
            reconstruction: if norm > 0.0 { (diff / norm).sqrt() } else { diff.sqrt() },
            u_orth: orth(u, m),
            v_orth: orth(v, n),
        }
    }

    fn check(name: &str, a: &[f32], m: usize, n: usize, res: &SvdResult, s_ref: &[f32]) {
        let (u, s, v) = (res.u.to_f32().unwrap(), res.s.to_f32().unwrap(), res.v.to_f32().unwrap());
        assert!(u.iter().chain(&s).chain(&v).all(|x| x.is_finite()), "{name}: non-finite output");
        let e = measure(a, m, n, &u, &s, &v);
        let s_max = s_ref[0];
        let s_err = s.iter().zip(s_ref).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        eprintln!(
            "{name:>22}: sweeps {:>2}  off {:.1e}  |A-USV|/|A| {:.1e}  U {:.1e}  V {:.1e}  max|s-s_ref|/s_max {:.1e}",
            res.sweeps,
            res.off,
            e.reconstruction,
            e.u_orth,
            e.v_orth,
            s_err / s_max.max(f32::MIN_POSITIVE)
        );
        assert!(e.reconstruction <= 1e-5, "{name}: reconstruction error {:.3e}", e.reconstruction);
        assert!(e.u_orth <= 1e-5, "{name}: |UᵀU - I| = {:.3e}", e.u_orth);
        assert!(e.v_orth <= 1e-5, "{name}: |VᵀV - I| = {:.3e}", e.v_orth);
        assert!(s_err <= 1e-5 * s_max, "{name}: σ error {s_err:.3e} with σ_max {s_max}");
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "{name}: σ not descending: {s:?}");
    }

    #[test]
    fn matches_torch_fixtures() {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/svd.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let read = |name: &str| -> (Vec<f32>, Vec<usize>) {
            let t = file.tensor(name).unwrap();
            (bytemuck::pod_collect_to_vec(t.data()), t.shape().to_vec())
        };
        let mut cases: Vec<String> =
            file.names().iter().filter_map(|k| k.strip_suffix(".a").map(str::to_string)).collect();
        cases.sort();
        assert_eq!(cases.len(), 12, "fixture cases: {cases:?}");
        let gpu = gpu();
        for kernels in available_kernels(&gpu) {
            for case in &cases {
                let (a, shape) = read(&format!("{case}.a"));
                let (s_ref, _) = read(&format!("{case}.s"));
                // A batch of one: `check` reads the factors' values, whatever their shapes.
                let mats = Tensor::from_f32(&gpu, &[1, shape[0], shape[1]], &a).unwrap();
                let res = svd_batched_with(&mats, kernels).unwrap();
                check(&format!("{case} ({kernels:?})"), &a, shape[0], shape[1], &res, &s_ref);
            }
        }
    }

    /// The portable round kernels everywhere, the subgroup ones where the device has them.
    fn available_kernels(gpu: &Gpu) -> Vec<RoundKernels> {
        let mut kernels = vec![RoundKernels::Portable];
        if subgroups_of_8(gpu) {
            kernels.push(RoundKernels::Subgroup);
        }
        kernels
    }

    /// Several matrices at once, against faer's f64 singular values, for shapes that are not
    /// multiples of the block (and wider than one block pair).
    #[test]
    fn batched_matches_faer() {
        let gpu = gpu();
        let shapes = [(3, 33, 17), (2, 17, 40), (2, 65, 65)];
        for (kernels, &(batch, m, n)) in
            available_kernels(&gpu).into_iter().flat_map(|k| shapes.iter().map(move |s| (k, s)))
        {
            let a = random(batch * m * n, (m * 1000 + n) as u64);
            let res = svd_batched_with(&Tensor::from_f32(&gpu, &[batch, m, n], &a).unwrap(), kernels).unwrap();
            let (u, s, v) = (res.u.to_f32().unwrap(), res.s.to_f32().unwrap(), res.v.to_f32().unwrap());
            let r = m.min(n);
            for b in 0..batch {
                let ab = &a[b * m * n..(b + 1) * m * n];
                let reference = faer::Mat::<f64>::from_fn(m, n, |i, j| ab[i * n + j] as f64);
                let mut s_ref: Vec<f32> = reference.singular_values().unwrap().into_iter().map(|x| x as f32).collect();
                s_ref.sort_by(|x, y| y.total_cmp(x));
                let one = SvdResult {
                    u: Tensor::from_f32(&gpu, &[m, r], &u[b * m * r..(b + 1) * m * r]).unwrap(),
                    s: Tensor::from_f32(&gpu, &[r], &s[b * r..(b + 1) * r]).unwrap(),
                    v: Tensor::from_f32(&gpu, &[n, r], &v[b * n * r..(b + 1) * n * r]).unwrap(),
                    sweeps: res.sweeps,
                    off: res.off,
                };
                check(&format!("batch {b} of {m}x{n} ({kernels:?})"), ab, m, n, &one, &s_ref);
            }
        }
    }

    /// The Newton–Schulz step keeps V orthogonal to well below the 1e-5 bound after the many
    /// rounds of a larger matrix (V's drift grows with the number of rounds).
    #[test]
    fn accumulated_rotations_stay_orthogonal() {
        let (m, n) = (256, 256);
        let a = random(m * n, 2024);
        let res = svd(&Tensor::from_f32(&gpu(), &[m, n], &a).unwrap()).unwrap();
        let (u, s, v) = (res.u.to_f32().unwrap(), res.s.to_f32().unwrap(), res.v.to_f32().unwrap());
        let e = measure(&a, m, n, &u, &s, &v);
        assert!(e.v_orth <= 1e-6, "|VᵀV - I| = {:.3e} after {} sweeps", e.v_orth, res.sweeps);
        assert!(e.reconstruction <= 1e-5, "reconstruction error {:.3e}", e.reconstruction);
    }

    #[test]
    fn rejects_nan_and_inf() {
        let gpu = gpu();
        for bad in [f32::NAN, f32::INFINITY] {
            let mut a = random(20 * 6, 7);
            a[13] = bad;
            let err = svd(&Tensor::from_f32(&gpu, &[20, 6], &a).unwrap()).err().expect("an error");
            assert!(err.to_string().contains("NaN or Inf"), "{err}");
        }
    }

    /// LAPACK's relaxed rule ends the sweeps at the Gram's rounding floor (the last sweep of a
    /// 1024² decomposition: cosine 1.919e-6 against a tolerance of 1.907e-6, sines 3.1e-5),
    /// but not early in the run, nor while cosines or rotations are large.
    #[test]
    fn stops_at_the_rounding_floor_like_dgesvj() {
        let plan = Plan::new(1, 1024, 1024);
        assert!(rounding_floor_reached(&plan, 11, 1.919e-6, 3.1e-5));
        assert!(!rounding_floor_reached(&plan, 4, 1.919e-6, 3.1e-5), "too early");
        assert!(!rounding_floor_reached(&plan, 11, 2.4e-4, 3.1e-5), "cosine above √n·tol");
        assert!(!rounding_floor_reached(&plan, 11, 1.919e-6, 4.6e-3), "rotations still large");
    }

    /// Batches fill the adapter's binding limit, and a matrix whose working buffer alone is
    /// too large is refused with the sizes.
    #[test]
    fn batches_fit_the_binding_limit() {
        let gpu = gpu();
        let limit = gpu.limits().max_buffer_size.min(gpu.limits().max_storage_buffer_binding_size);
        let per_matrix = 4 * (1024 * (1024 + 1024)) as u64; // W above V, both 1024 x 1024
        let fit = max_batch(&gpu, 1024, 1024).unwrap() as u64;
        assert!(fit * per_matrix <= limit && (fit + 1) * per_matrix > limit, "{fit} per batch, limit {limit}");
        let rows = (limit / (4 * 4096)) as usize; // W alone would just fit; V on top does not
        let err = max_batch(&gpu, rows, 4096).unwrap_err().to_string();
        assert!(err.contains(&format!("{rows}x4096")) && err.contains("per binding"), "{err}");
    }

    /// Every kernel of a 4096×4096 decomposition stays within lavapipe's loop budget.
    #[test]
    fn loop_counts_fit_the_budget_up_to_4096() {
        for len in [1, 17, 255, 256, 257, 4096, 8192] {
            for kernels in [RoundKernels::Subgroup, RoundKernels::Portable] {
                for loops in [gram_loops(kernels, len), rotate_loops(kernels, len), eigen_loops(len), norm_loops(len)] {
                    assert!(loops > 0 && loops <= crate::gpu::LOOP_BUDGET, "{len} rows: {loops} iterations");
                }
            }
        }
    }
}
