// Block one-sided Jacobi SVD (Hestenes). The working matrix X [batch, NP, LD + NP] stores
// each column contiguously: W's column (LD rows) above V's column (NP rows), NP = columns
// padded to an even number of B-wide blocks (padding = 0). Stacking V under W lets one
// rotation pass move both. One round orthogonalises NB/2 disjoint block pairs at once:
//   gram:   partial Gram matrices of each pair's 2B columns of W over chunks of rows
//   eigen:  sum the chunks, measure the largest off-diagonal cosine (atomic max into `off`),
//           Jacobi-eigensolve the 2B x 2B Gram in workgroup memory -> rotation Q
//   rotate: the pair's columns of X (W and V) <- columns * Q
// The pair of round r comes from the round-robin (circle) ordering: block NB-1 stays put,
// block at position i < NB-1 is (i + r) mod (NB-1), pair k joins positions k and NB-1-k.

const B: u32 = 16u;
const P: u32 = 32u; // 2B columns per pair
const ROT_ROWS: u32 = 64u; // rows per step of a rotate workgroup

struct Params {
    m: u32,       // rows to visit: W's for gram, W's and V's for rotate
    ld: u32,      // column stride of X
    np: u32,      // padded column count
    nb: u32,      // blocks (even)
    round: u32,
    chunk: u32,   // rows per workgroup in gram / rotate
    chunks: u32,  // row chunks per pair
    tol: f32,     // off-diagonal cosine threshold
    sweeps: u32,  // inner Jacobi sweeps at most (eigen)
}

@group(0) @binding(0) var<uniform> p: Params;

// Position `pos` of a round-robin of `n` places advanced by `step` (< n), the last place
// fixed. A conditional subtraction rather than %: llvmpipe divides lane by lane.
fn circle(pos: u32, step: u32, n: u32) -> u32 {
    if pos == n - 1u {
        return pos;
    }
    let x = pos + step;
    return select(x, x - (n - 1u), x >= n - 1u);
}

fn block_at(pos: u32) -> u32 {
    return circle(pos, p.round, p.nb);
}

// Index of pair k of matrix b among the round's pairs of the whole batch.
fn pair_index(k: u32, b: u32) -> u32 {
    return b * (p.nb / 2u) + k;
}

// Global column index of local column c (0..P) of pair k.
fn pair_column(k: u32, c: u32) -> u32 {
    if c < B {
        return block_at(k) * B + c;
    }
    return block_at(p.nb - 1u - k) * B + c - B;
}

var<workgroup> tile: array<f32, 1024>; // [P][P]: eigen's rotation Q
var<workgroup> mat: array<f32, 1024>;  // [P][P]: eigen's Gram

// Outer product u vᵀ as a matrix whose element [t][s] is u[s] v[t].
fn outer(u: vec4<f32>, v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(u * v.x, u * v.y, u * v.z, u * v.w);
}

// ---- gram: partial[b, k, chunk, i, j] = sum over the chunk's rows of W[:, col i] * W[:, col j]
// Register blocks straight from storage, no workgroup memory: llvmpipe loads workgroup memory
// lane by lane, so a staged tile costs more than it saves. Invocation (bi, bj) of 4 x 4 owns
// the 8 x 8 block of Gram rows 8 bi.. and columns 8 bj.. (8 columns never straddle a block).
@group(0) @binding(1) var<storage, read> gram_w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> gram_out: array<f32>;

// Rows 4q..4q + 4 of 4 neighbouring columns (column c at vec4 q + c * ld / 4) as the columns
// of a matrix.
fn gram_load(q: u32) -> mat4x4<f32> {
    let m4 = p.ld / 4u;
    return mat4x4<f32>(gram_w[q], gram_w[q + m4], gram_w[q + 2u * m4], gram_w[q + 3u * m4]);
}

// Gram entries [i0 + s][j0 + t] = g[t][s] into the pair's P x P partial at dst.
fn gram_store(g: mat4x4<f32>, dst: u32, i0: u32, j0: u32) {
    for (var s = 0u; s < 4u; s++) {
        gram_out[dst + (i0 + s) * P + j0] = g[0][s];
        gram_out[dst + (i0 + s) * P + j0 + 1u] = g[1][s];
        gram_out[dst + (i0 + s) * P + j0 + 2u] = g[2][s];
        gram_out[dst + (i0 + s) * P + j0 + 3u] = g[3][s];
    }
}

// m and ld are multiples of 4 (zero rows at the end of W), as are the chunk bounds.
@compute @workgroup_size(16)
fn gram(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wg.x;
    let chunk = wg.y;
    let b = wg.z;
    let i0 = (lid / 4u) * 8u;
    let j0 = (lid % 4u) * 8u;
    let base = b * p.np * p.ld;
    let ci = (base + pair_column(k, i0) * p.ld) / 4u;
    let cj = (base + pair_column(k, j0) * p.ld) / 4u;
    let far = p.ld; // 4 columns on, in vec4
    let row0 = chunk * p.chunk;
    let row1 = min(row0 + p.chunk, p.m);
    var g00 = mat4x4<f32>();
    var g01 = mat4x4<f32>();
    var g10 = mat4x4<f32>();
    var g11 = mat4x4<f32>();
    for (var q = row0 / 4u; q < row1 / 4u; q++) {
        let xi0 = transpose(gram_load(ci + q));
        let xi1 = transpose(gram_load(ci + far + q));
        let xj0 = gram_load(cj + q);
        let xj1 = gram_load(cj + far + q);
        g00 += xi0 * xj0;
        g01 += xi0 * xj1;
        g10 += xi1 * xj0;
        g11 += xi1 * xj1;
    }
    let dst = (pair_index(k, b) * p.chunks + chunk) * P * P;
    gram_store(g00, dst, i0, j0);
    gram_store(g01, dst, i0, j0 + 4u);
    gram_store(g10, dst, i0 + 4u, j0);
    gram_store(g11, dst, i0 + 4u, j0 + 4u);
}

// ---- eigen: one workgroup per (pair, batch); writes Q [b, k, P, P] and whether it rotated;
// off[0] gathers the largest off-diagonal cosine, off[1] the largest rotation sine.
@group(0) @binding(1) var<storage, read> eig_partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> eig_q: array<f32>;
@group(0) @binding(3) var<storage, read_write> eig_rotated: array<u32>;
@group(0) @binding(4) var<storage, read_write> eig_off: array<atomic<u32>>;

// One workgroup per pair: few invocations, because llvmpipe switches between the workgroup's
// 8-lane SIMD groups at every barrier and the solve has about 3 barriers per inner step.
const EIG_WG: u32 = 32u;

var<workgroup> rot_c: array<f32, 16>;
var<workgroup> rot_s: array<f32, 16>;
var<workgroup> local_off: atomic<u32>;
var<workgroup> uniform_word: u32; // broadcast through workgroupUniformLoad (uniform control flow)

// local_off as seen by the whole workgroup, in uniform control flow.
fn broadcast_off(lid: u32) -> u32 {
    workgroupBarrier();
    if lid == 0u {
        uniform_word = atomicLoad(&local_off);
    }
    return workgroupUniformLoad(&uniform_word);
}

// Below this squared norm a column counts as zero: no rotation, no cosine (avoids 0/0).
const TINY: f32 = 1e-30;

// The pair (lo, hi) of the inner round-robin step `step`, rotation slot s (0..16) over P indices.
fn inner_index(step: u32, pos: u32) -> u32 {
    return circle(pos, step, P);
}

fn cosine(gij: f32, gii: f32, gjj: f32) -> f32 {
    if gii <= TINY || gjj <= TINY {
        return 0.0;
    }
    return abs(gij) / (sqrt(gii) * sqrt(gjj));
}

// (c, s) of the symmetric Schur rotation annihilating g_ij (Golub & Van Loan 8.4.1); (1, 0)
// when the cosine is within the tolerance (or NaN).
fn schur_rotation(gij: f32, gii: f32, gjj: f32) -> vec2<f32> {
    if !(cosine(gij, gii, gjj) > p.tol) {
        return vec2<f32>(1.0, 0.0);
    }
    let theta = (gjj - gii) / (2.0 * gij);
    var t = 0.5 / theta;
    if abs(theta) < 1e15 {
        t = sign(theta) / (abs(theta) + sqrt(1.0 + theta * theta));
        if theta == 0.0 {
            t = 1.0;
        }
    }
    let c = 1.0 / sqrt(1.0 + t * t); // not inverseSqrt: it may be approximate
    return vec2<f32>(c, t * c);
}

@compute @workgroup_size(EIG_WG)
fn eigen(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wg.x;
    let b = wg.z;
    let pair = pair_index(k, b);
    if lid == 0u {
        atomicStore(&local_off, 0u);
    }
    // Sum the row chunks in a fixed order (deterministic); Q starts as the identity.
    for (var e = lid; e < P * P; e += EIG_WG) {
        var g = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            g += eig_partial[(pair * p.chunks + c) * P * P + e];
        }
        mat[e] = g;
        tile[e] = select(0.0, 1.0, e / P == e % P);
    }
    workgroupBarrier();
    // Each invocation's largest cosine in a register, then one atomic per invocation. The
    // maximum is taken over the bit patterns, as the atomic does, so that NaN (above every
    // finite cosine) reaches `off` and the driver reports the bad input.
    var own_off = 0u;
    for (var e = lid; e < P * P; e += EIG_WG) {
        let i = e / P;
        let j = e % P;
        if i < j {
            own_off = max(own_off, bitcast<u32>(cosine(mat[e], mat[i * P + i], mat[j * P + j])));
        }
    }
    atomicMax(&local_off, own_off);
    let off = broadcast_off(lid);
    if lid == 0u {
        atomicMax(&eig_off[0], off);
    }
    // The largest sine of this invocation's rotations (LAPACK's MXSINJ, for the stopping rule).
    var own_sine = 0u;
    if bitcast<f32>(off) > p.tol {
        for (var sweep = 0u; sweep < p.sweeps; sweep++) {
            if lid == 0u {
                atomicStore(&local_off, 0u);
            }
            workgroupBarrier();
            for (var step = 0u; step < P - 1u; step++) {
                // 16 disjoint rotations, one per slot.
                if lid < 16u {
                    let i = inner_index(step, lid);
                    let j = inner_index(step, P - 1u - lid);
                    let gii = mat[i * P + i];
                    let gjj = mat[j * P + j];
                    let gij = mat[i * P + j];
                    let cs = cosine(gij, gii, gjj);
                    if cs > p.tol {
                        atomicMax(&local_off, bitcast<u32>(cs));
                    }
                    let rot = schur_rotation(gij, gii, gjj);
                    own_sine = max(own_sine, bitcast<u32>(abs(rot.y)));
                    rot_c[lid] = rot.x;
                    rot_s[lid] = rot.y;
                }
                workgroupBarrier();
                // G <- Jᵀ G J in one pass: the 2 x 2 block of rows (i_a, j_a) and columns
                // (i_b, j_b) depends only on slots a and b. An annihilated pair is set to
                // exact zero.
                for (var e = lid; e < 16u * 16u; e += EIG_WG) {
                    let a = e / 16u;
                    let b = e % 16u;
                    let ia = inner_index(step, a);
                    let ja = inner_index(step, P - 1u - a);
                    let ib = inner_index(step, b);
                    let jb = inner_index(step, P - 1u - b);
                    let ca = rot_c[a];
                    let sa = rot_s[a];
                    let cb = rot_c[b];
                    let sb = rot_s[b];
                    let g_ii = mat[ia * P + ib];
                    let g_ij = mat[ia * P + jb];
                    let g_ji = mat[ja * P + ib];
                    let g_jj = mat[ja * P + jb];
                    // Rows first (Jᵀ from the left), then columns (J from the right).
                    let r_ii = ca * g_ii - sa * g_ji;
                    let r_ij = ca * g_ij - sa * g_jj;
                    let r_ji = sa * g_ii + ca * g_ji;
                    let r_jj = sa * g_ij + ca * g_jj;
                    var n_ij = sb * r_ii + cb * r_ij;
                    var n_ji = cb * r_ji - sb * r_jj;
                    if a == b && sa != 0.0 {
                        n_ij = 0.0;
                        n_ji = 0.0;
                    }
                    mat[ia * P + ib] = cb * r_ii - sb * r_ij;
                    mat[ia * P + jb] = n_ij;
                    mat[ja * P + ib] = n_ji;
                    mat[ja * P + jb] = sb * r_ji + cb * r_jj;
                }
                // Q <- Q J (columns of Q).
                for (var e = lid; e < 16u * P; e += EIG_WG) {
                    let slot = e / P;
                    let x = e % P;
                    let i = inner_index(step, slot);
                    let j = inner_index(step, P - 1u - slot);
                    let c = rot_c[slot];
                    let s = rot_s[slot];
                    let qi = tile[x * P + i];
                    let qj = tile[x * P + j];
                    tile[x * P + i] = c * qi - s * qj;
                    tile[x * P + j] = s * qi + c * qj;
                }
                workgroupBarrier();
            }
            if broadcast_off(lid) == 0u {
                break;
            }
        }
        newton_schulz_to_q(lid, pair);
    }
    atomicMax(&eig_off[1], own_sine);
    if lid == 0u {
        eig_rotated[pair] = select(0u, 1u, bitcast<f32>(off) > p.tol);
    }
}

// Q (in tile) -> eig_q of `pair` through one Newton-Schulz step Q <- Q (3I - QᵀQ) / 2, which
// removes the rounding drift of the rotation product (error δ -> O(δ²)); otherwise V loses
// orthogonality over the sweeps. Only pairs that rotate need it: `rotate` skips the others.
fn newton_schulz_to_q(lid: u32, pair: u32) {
    workgroupBarrier();
    for (var e = lid; e < P * P; e += EIG_WG) {
        let a = e / P;
        let c = e % P;
        var dot = 0.0;
        for (var r = 0u; r < P; r++) {
            dot += tile[r * P + a] * tile[r * P + c];
        }
        mat[e] = dot;
    }
    workgroupBarrier();
    for (var e = lid; e < P * P; e += EIG_WG) {
        let row = e / P;
        let c = e % P;
        var qs = 0.0;
        for (var k = 0u; k < P; k++) {
            qs += tile[row * P + k] * mat[k * P + c];
        }
        eig_q[pair * P * P + e] = 1.5 * tile[e] - 0.5 * qs;
    }
}

// ---- rotate: columns of X of pair k, rows of this chunk, <- columns * Q.
// In place and from registers: invocation (rg, cg) of 8 x 4 computes rows 8 rg.. of each
// 64-row block for output columns 8 cg..; the barrier lets every invocation read the block's
// old values before any writes them.
@group(0) @binding(1) var<storage, read> rot_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> rot_flag: array<u32>;
@group(0) @binding(3) var<storage, read_write> rot_x: array<vec4<f32>>;

// Rows row..row+4 of the 4 columns at col, col + m, .. <- y[t], when below row1 (m, row and
// row1 are multiples of 4).
fn rot_store(y: mat4x4<f32>, col: u32, row: u32, row1: u32) {
    if row < row1 {
        let at = (col + row) / 4u;
        let ld4 = p.ld / 4u;
        rot_x[at] = y[0];
        rot_x[at + ld4] = y[1];
        rot_x[at + 2u * ld4] = y[2];
        rot_x[at + 3u * ld4] = y[3];
    }
}

// Whether the eigensolve of `pair` rotated, read by one invocation and shared, so that the
// whole workgroup returns together (the barriers after need uniform control flow).
fn pair_rotated(pair: u32, reader: bool) -> bool {
    if reader {
        uniform_word = rot_flag[pair];
    }
    return workgroupUniformLoad(&uniform_word) != 0u;
}

@compute @workgroup_size(32)
fn rotate(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wg.x;
    let chunk = wg.y;
    let b = wg.z;
    let pair = pair_index(k, b);
    if !pair_rotated(pair, lid == 0u) {
        return;
    }
    let c0 = (lid % 4u) * 8u;
    let base = b * p.np * p.ld;
    let out = base + pair_column(k, c0) * p.ld;
    // The pair's two blocks, hoisted out of the column loop.
    let col_a = base + block_at(k) * B * p.ld;
    let col_b = base + block_at(p.nb - 1u - k) * B * p.ld;
    // Q[c][c0..c0 + 8] is vec4 number q + 8c and the next one.
    let q = (pair * P * P + c0) / 4u;
    let row0 = chunk * p.chunk;
    let row1 = min(row0 + p.chunk, p.m);
    for (var r = row0; r < row1; r += ROT_ROWS) {
        // Rows past row1 read other data (or the clamped end) and are not written.
        let row = r + (lid / 4u) * 8u;
        var y00 = mat4x4<f32>();
        var y01 = mat4x4<f32>();
        var y10 = mat4x4<f32>();
        var y11 = mat4x4<f32>();
        for (var c = 0u; c < P; c++) {
            let col = select(col_b + (c - B) * p.ld, col_a + c * p.ld, c < B);
            let x0 = rot_x[(col + row) / 4u];
            let x1 = rot_x[(col + row) / 4u + 1u];
            let q0 = rot_q[q + 8u * c];
            let q1 = rot_q[q + 8u * c + 1u];
            y00 += outer(x0, q0);
            y01 += outer(x0, q1);
            y10 += outer(x1, q0);
            y11 += outer(x1, q1);
        }
        workgroupBarrier();
        rot_store(y00, out, row, row1);
        rot_store(y01, out + 4u * p.ld, row, row1);
        rot_store(y10, out, row + 4u, row1);
        rot_store(y11, out + 4u * p.ld, row + 4u, row1);
        workgroupBarrier();
    }
}

// ---- setup and finish: flat elementwise kernels with their own parameter block.
struct Shape {
    batch: u32,
    len: u32,    // load: A's column length in W's sense; norms, gather: rows to read
    np: u32,     // padded column count of X
    cols: u32,   // load: A's true column count in W's sense; gather: r output columns
    transpose: u32, // load: 1 when W's columns are A's columns (A stored [len, cols]);
                    // gather: 1 to write in X's layout
    ld: u32,     // X's column stride
    offset: u32, // load: W's rows (V starts there); gather: the first row to read
}

@group(0) @binding(0) var<uniform> sh: Shape;

fn flat(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

// X[b, j, i] = column j of A (or of A^T) for rows i < offset, zero for padding columns and
// rows; below them V = I.
@group(0) @binding(1) var<storage, read> load_a: array<f32>;
@group(0) @binding(2) var<storage, read_write> load_x: array<f32>;

@compute @workgroup_size(256)
fn load(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wg, nwg, lid);
    let per = sh.np * sh.ld;
    if idx >= sh.batch * per {
        return;
    }
    let b = idx / per;
    let j = (idx % per) / sh.ld;
    let i = idx % sh.ld;
    var v = 0.0;
    if i >= sh.offset {
        v = select(0.0, 1.0, i - sh.offset == j);
    } else if j < sh.cols && i < sh.len {
        let src = b * sh.cols * sh.len;
        if sh.transpose == 1u {
            v = load_a[src + i * sh.cols + j];
        } else {
            v = load_a[src + j * sh.len + i];
        }
    }
    load_x[idx] = v;
}

// norms[b, j] = |W[b, j, :]|, one workgroup per column.
@group(0) @binding(1) var<storage, read> norm_w: array<f32>;
@group(0) @binding(2) var<storage, read_write> norm_out: array<f32>;

@compute @workgroup_size(256)
fn norms(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wg.x + wg.y * nwg.x;
    if col >= sh.batch * sh.np {
        return;
    }
    var acc = 0.0;
    for (var i = lid; i < sh.len; i += 256u) {
        let v = norm_w[col * sh.ld + i];
        acc += v * v;
    }
    tile[lid] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if lid < stride {
            tile[lid] += tile[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        norm_out[col] = sqrt(tile[0]);
    }
}

// out[b, i, k] = X[b, perm[b, k], offset + i] * scale[b, k] for i < len, k < cols (sorted,
// scaled columns), stored [b, i, k], or [b, k, i] (X's own layout) when transpose is 1.
@group(0) @binding(1) var<storage, read> gather_src: array<f32>;
@group(0) @binding(2) var<storage, read> gather_perm: array<u32>;
@group(0) @binding(3) var<storage, read> gather_scale: array<f32>;
@group(0) @binding(4) var<storage, read_write> gather_out: array<f32>;

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wg, nwg, lid);
    let per = sh.len * sh.cols;
    if idx >= sh.batch * per {
        return;
    }
    let b = idx / per;
    var i = (idx % per) / sh.cols;
    var k = idx % sh.cols;
    if sh.transpose == 1u {
        k = (idx % per) / sh.len;
        i = idx % sh.len;
    }
    let s = b * sh.cols + k;
    gather_out[idx] = gather_src[(b * sh.np + gather_perm[s]) * sh.ld + sh.offset + i] * gather_scale[s];
}
