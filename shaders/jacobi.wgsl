// Block one-sided Jacobi SVD (Hestenes). The working matrix W [batch, NP, M] stores each
// column contiguously (NP = columns padded to an even number of B-wide blocks, padding = 0),
// and V [batch, NP, NP] likewise. One round orthogonalises NB/2 disjoint block pairs at once:
//   gram:   partial Gram matrices of each pair's 2B columns over chunks of rows
//   eigen:  sum the chunks, measure the largest off-diagonal cosine (atomic max into `off`),
//           Jacobi-eigensolve the 2B x 2B Gram in workgroup memory -> rotation Q
//   rotate: columns of W (and of V) of the pair <- columns * Q
// The pair of round r comes from the round-robin (circle) ordering: block NB-1 stays put,
// block at position i < NB-1 is (i + r) mod (NB-1), pair k joins positions k and NB-1-k.

const B: u32 = 16u;
const P: u32 = 32u; // 2B columns per pair
const T: u32 = 32u; // rows per shared tile

struct Params {
    m: u32,       // rows of W (column length) / of V for `rotate` on V
    np: u32,      // padded column count
    nb: u32,      // blocks (even)
    round: u32,
    chunk: u32,   // rows per workgroup in gram / rotate
    chunks: u32,  // row chunks per pair
    tol: f32,     // off-diagonal cosine threshold
    sweeps: u32,  // inner Jacobi sweeps at most (eigen)
}

@group(0) @binding(0) var<uniform> p: Params;

fn block_at(pos: u32) -> u32 {
    if pos == p.nb - 1u {
        return pos;
    }
    return (pos + p.round) % (p.nb - 1u);
}

// Global column index of local column c (0..P) of pair k.
fn pair_column(k: u32, c: u32) -> u32 {
    if c < B {
        return block_at(k) * B + c;
    }
    return block_at(p.nb - 1u - k) * B + c - B;
}

var<workgroup> tile: array<f32, 1024>; // [P][T]: column-major tile of the pair's columns
var<workgroup> mat: array<f32, 1024>;  // [P][P]: Gram (eigen) or rotation (rotate)

// ---- gram: partial[b, k, chunk, i, j] = sum over the chunk's rows of W[:, col i] * W[:, col j]
@group(0) @binding(1) var<storage, read> gram_w: array<f32>;
@group(0) @binding(2) var<storage, read_write> gram_out: array<f32>;

@compute @workgroup_size(256)
fn gram(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wg.x;
    let chunk = wg.y;
    let b = wg.z;
    let i = lid / 8u;        // Gram row
    let j0 = (lid % 8u) * 4u; // four Gram columns
    let base = b * p.np * p.m;
    let row0 = chunk * p.chunk;
    let row1 = min(row0 + p.chunk, p.m);
    var acc = vec4<f32>(0.0);
    for (var r = row0; r < row1; r += T) {
        for (var e = lid; e < P * T; e += 256u) {
            let c = e / T;
            let row = r + e % T;
            var v = 0.0;
            if row < row1 {
                v = gram_w[base + pair_column(k, c) * p.m + row];
            }
            tile[e] = v;
        }
        workgroupBarrier();
        for (var t = 0u; t < T; t++) {
            let a = tile[i * T + t];
            acc += a * vec4<f32>(tile[j0 * T + t], tile[(j0 + 1u) * T + t], tile[(j0 + 2u) * T + t], tile[(j0 + 3u) * T + t]);
        }
        workgroupBarrier();
    }
    let dst = (((b * (p.nb / 2u) + k) * p.chunks + chunk) * P + i) * P + j0;
    gram_out[dst] = acc.x;
    gram_out[dst + 1u] = acc.y;
    gram_out[dst + 2u] = acc.z;
    gram_out[dst + 3u] = acc.w;
}

// ---- eigen: one workgroup per (pair, batch); writes Q [b, k, P, P] and whether it rotated.
@group(0) @binding(1) var<storage, read> eig_partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> eig_q: array<f32>;
@group(0) @binding(3) var<storage, read_write> eig_rotated: array<u32>;
@group(0) @binding(4) var<storage, read_write> eig_off: array<atomic<u32>>;

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
    if pos == P - 1u {
        return pos;
    }
    return (pos + step) % (P - 1u);
}

fn cosine(gij: f32, gii: f32, gjj: f32) -> f32 {
    if gii <= TINY || gjj <= TINY {
        return 0.0;
    }
    return abs(gij) / (sqrt(gii) * sqrt(gjj));
}

@compute @workgroup_size(256)
fn eigen(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wg.x;
    let b = wg.z;
    let pair = b * (p.nb / 2u) + k;
    if lid == 0u {
        atomicStore(&local_off, 0u);
    }
    // Sum the row chunks in a fixed order (deterministic); Q starts as the identity.
    for (var e = lid; e < P * P; e += 256u) {
        var g = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            g += eig_partial[(pair * p.chunks + c) * P * P + e];
        }
        mat[e] = g;
        tile[e] = select(0.0, 1.0, e / P == e % P);
    }
    workgroupBarrier();
    for (var e = lid; e < P * P; e += 256u) {
        let i = e / P;
        let j = e % P;
        if i < j {
            let cs = cosine(mat[e], mat[i * P + i], mat[j * P + j]);
            atomicMax(&local_off, bitcast<u32>(cs));
        }
    }
    let off = broadcast_off(lid);
    if lid == 0u {
        atomicMax(&eig_off[0], off);
    }
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
                    var c = 1.0;
                    var s = 0.0;
                    let cs = cosine(gij, gii, gjj);
                    if cs > p.tol {
                        atomicMax(&local_off, bitcast<u32>(cs));
                        // Symmetric Schur rotation (Golub & Van Loan 8.4.1) annihilating g_ij.
                        let theta = (gjj - gii) / (2.0 * gij);
                        var t = 0.5 / theta;
                        if abs(theta) < 1e15 {
                            t = sign(theta) / (abs(theta) + sqrt(1.0 + theta * theta));
                            if theta == 0.0 {
                                t = 1.0;
                            }
                        }
                        c = 1.0 / sqrt(1.0 + t * t); // not inverseSqrt: it may be approximate
                        s = t * c;
                    }
                    rot_c[lid] = c;
                    rot_s[lid] = s;
                }
                workgroupBarrier();
                // Rows: G <- J^T G; and Q <- Q J (columns of Q).
                for (var e = lid; e < 16u * P; e += 256u) {
                    let slot = e / P;
                    let x = e % P;
                    let i = inner_index(step, slot);
                    let j = inner_index(step, P - 1u - slot);
                    let c = rot_c[slot];
                    let s = rot_s[slot];
                    let gi = mat[i * P + x];
                    let gj = mat[j * P + x];
                    mat[i * P + x] = c * gi - s * gj;
                    mat[j * P + x] = s * gi + c * gj;
                    let qi = tile[x * P + i];
                    let qj = tile[x * P + j];
                    tile[x * P + i] = c * qi - s * qj;
                    tile[x * P + j] = s * qi + c * qj;
                }
                workgroupBarrier();
                // Columns: G <- G J; the annihilated pair is set to exact zero.
                for (var e = lid; e < 16u * P; e += 256u) {
                    let slot = e / P;
                    let x = e % P;
                    let i = inner_index(step, slot);
                    let j = inner_index(step, P - 1u - slot);
                    let c = rot_c[slot];
                    let s = rot_s[slot];
                    let gi = mat[x * P + i];
                    let gj = mat[x * P + j];
                    var ni = c * gi - s * gj;
                    var nj = s * gi + c * gj;
                    if s != 0.0 && (x == i || x == j) {
                        if x == i { nj = 0.0; } else { ni = 0.0; }
                    }
                    mat[x * P + i] = ni;
                    mat[x * P + j] = nj;
                }
                workgroupBarrier();
            }
            if broadcast_off(lid) == 0u {
                break;
            }
        }
    }
    workgroupBarrier();
    // One Newton-Schulz step Q <- Q (3I - QᵀQ) / 2 removes the rounding drift of the
    // rotation product (error δ -> O(δ²)); otherwise V loses orthogonality over the sweeps.
    for (var e = lid; e < P * P; e += 256u) {
        let a = e / P;
        let c = e % P;
        var dot = 0.0;
        for (var r = 0u; r < P; r++) {
            dot += tile[r * P + a] * tile[r * P + c];
        }
        mat[e] = dot;
    }
    workgroupBarrier();
    for (var e = lid; e < P * P; e += 256u) {
        let row = e / P;
        let c = e % P;
        var qs = 0.0;
        for (var k = 0u; k < P; k++) {
            qs += tile[row * P + k] * mat[k * P + c];
        }
        eig_q[pair * P * P + e] = 1.5 * tile[e] - 0.5 * qs;
    }
    if lid == 0u {
        eig_rotated[pair] = select(0u, 1u, bitcast<f32>(off) > p.tol);
    }
}

// ---- rotate: columns of X [b, NP, m] of pair k, rows of this chunk, <- columns * Q.
@group(0) @binding(1) var<storage, read> rot_q: array<f32>;
@group(0) @binding(2) var<storage, read> rot_flag: array<u32>;
@group(0) @binding(3) var<storage, read_write> rot_x: array<f32>;

@compute @workgroup_size(256)
fn rotate(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wg.x;
    let chunk = wg.y;
    let b = wg.z;
    let pair = b * (p.nb / 2u) + k;
    if lid == 0u {
        uniform_word = rot_flag[pair];
    }
    if workgroupUniformLoad(&uniform_word) == 0u {
        return;
    }
    for (var e = lid; e < P * P; e += 256u) {
        mat[e] = rot_q[pair * P * P + e];
    }
    let t = lid % T;        // row within the tile
    let j0 = (lid / T) * 4u; // four output columns
    let base = b * p.np * p.m;
    let row0 = chunk * p.chunk;
    let row1 = min(row0 + p.chunk, p.m);
    for (var r = row0; r < row1; r += T) {
        for (var e = lid; e < P * T; e += 256u) {
            let row = r + e % T;
            var v = 0.0;
            if row < row1 {
                v = rot_x[base + pair_column(k, e / T) * p.m + row];
            }
            tile[e] = v;
        }
        workgroupBarrier();
        var acc = vec4<f32>(0.0);
        for (var c = 0u; c < P; c++) {
            let q = c * P + j0;
            acc += tile[c * T + t] * vec4<f32>(mat[q], mat[q + 1u], mat[q + 2u], mat[q + 3u]);
        }
        let row = r + t;
        if row < row1 {
            rot_x[base + pair_column(k, j0) * p.m + row] = acc.x;
            rot_x[base + pair_column(k, j0 + 1u) * p.m + row] = acc.y;
            rot_x[base + pair_column(k, j0 + 2u) * p.m + row] = acc.z;
            rot_x[base + pair_column(k, j0 + 3u) * p.m + row] = acc.w;
        }
        workgroupBarrier();
    }
}

// ---- setup and finish: flat elementwise kernels with their own parameter block.
struct Shape {
    batch: u32,
    len: u32,    // column length of the column-major output (or source, for gather)
    np: u32,     // padded column count of W / V
    cols: u32,   // load: A's true column count in W's sense; gather: r output columns
    transpose: u32, // load: 1 when W's columns are A's columns (A stored [len, cols])
    ld: u32,     // gather: distance between the source's columns
}

@group(0) @binding(0) var<uniform> sh: Shape;

fn flat(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

// W[b, j, i] = column j of A (or of A^T), zero for padding columns.
@group(0) @binding(1) var<storage, read> load_a: array<f32>;
@group(0) @binding(2) var<storage, read_write> load_w: array<f32>;

@compute @workgroup_size(256)
fn load(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wg, nwg, lid);
    let per = sh.np * sh.len;
    if idx >= sh.batch * per {
        return;
    }
    let b = idx / per;
    let j = (idx % per) / sh.len;
    let i = idx % sh.len;
    var v = 0.0;
    if j < sh.cols {
        let src = b * sh.cols * sh.len;
        if sh.transpose == 1u {
            v = load_a[src + i * sh.cols + j];
        } else {
            v = load_a[src + j * sh.len + i];
        }
    }
    load_w[idx] = v;
}

@group(0) @binding(1) var<storage, read_write> identity_v: array<f32>;

@compute @workgroup_size(256)
fn identity(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wg, nwg, lid);
    if idx < sh.batch * sh.np * sh.np {
        let e = idx % (sh.np * sh.np);
        identity_v[idx] = select(0.0, 1.0, e / sh.np == e % sh.np);
    }
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
        let v = norm_w[col * sh.len + i];
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

// out[b, i, k] = src[b, perm[b, k], i] * scale[b, k] for i < len, k < cols (sorted, scaled columns).
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
    let i = (idx % per) / sh.cols;
    let k = idx % sh.cols;
    let s = b * sh.cols + k;
    gather_out[idx] = gather_src[(b * sh.np + gather_perm[s]) * sh.ld + i] * gather_scale[s];
}
