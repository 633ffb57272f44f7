// gram_subgroup, eigen_subgroup and rotate_subgroup: appended to jacobi.wgsl (its Params,
// pair addressing, bindings and rotation formulas) and subgroup.wgsl (spread) to make the
// jacobi_subgroup module, for CPU adapters with subgroups of at least 8; the launcher checks.
// A workgroup is one 8-lane subgroup, and lane l owns the pair's columns 4l..4l + 4 (4
// columns never straddle a 16-wide block). What every lane needs is loaded once, spread
// across the lanes and shared by broadcast, so each load feeds 4 to 8 times the multiply-adds
// of gram and rotate; the eigensolve keeps its Gram and rotation in registers, with no
// workgroup memory and no barriers.

// acc[g] += the products of 4 rows of the pair's columns 4g.. (every lane's `own`, spread)
// with this lane's columns: acc[g][j][r] gains sum over the rows of x[4g + r] x[4l + j].
fn gram_accumulate(acc: ptr<function, array<mat4x4<f32>, 8>>, own: mat4x4<f32>) {
    // Column 4g + h of the pair is s_h[g]. Constant indices only, so that the accumulators
    // stay in registers.
    let s0 = spread(own[0]);
    let s1 = spread(own[1]);
    let s2 = spread(own[2]);
    let s3 = spread(own[3]);
    (*acc)[0] += transpose(mat4x4<f32>(s0[0], s1[0], s2[0], s3[0])) * own;
    (*acc)[1] += transpose(mat4x4<f32>(s0[1], s1[1], s2[1], s3[1])) * own;
    (*acc)[2] += transpose(mat4x4<f32>(s0[2], s1[2], s2[2], s3[2])) * own;
    (*acc)[3] += transpose(mat4x4<f32>(s0[3], s1[3], s2[3], s3[3])) * own;
    (*acc)[4] += transpose(mat4x4<f32>(s0[4], s1[4], s2[4], s3[4])) * own;
    (*acc)[5] += transpose(mat4x4<f32>(s0[5], s1[5], s2[5], s3[5])) * own;
    (*acc)[6] += transpose(mat4x4<f32>(s0[6], s1[6], s2[6], s3[6])) * own;
    (*acc)[7] += transpose(mat4x4<f32>(s0[7], s1[7], s2[7], s3[7])) * own;
}

// ---- gram_subgroup: same output as gram. Per step of 4 rows, lane l loads its 4 columns;
// spread, they give every lane all 32 columns, and lane l accumulates the Gram's columns
// 4l.. against all of them: acc[g][j][r] = G[4g + r][4l + j].
@compute @workgroup_size(8)
fn gram_subgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let k = wg.x;
    let chunk = wg.y;
    let b = wg.z;
    let m4 = p.ld / 4u;
    let col = (b * p.np * p.ld + pair_column(k, 4u * lane) * p.ld) / 4u;
    let row0 = chunk * p.chunk;
    let row1 = min(row0 + p.chunk, p.m);
    var acc: array<mat4x4<f32>, 8>;
    for (var q = row0 / 4u; q < row1 / 4u; q++) {
        // own[j]: rows 4q.. of column 4l + j.
        gram_accumulate(&acc, mat4x4<f32>(gram_w[col + q], gram_w[col + m4 + q], gram_w[col + 2u * m4 + q], gram_w[col + 3u * m4 + q]));
    }
    // The Gram is symmetric: acc[g][j] is row 4l + j, columns 4g..4g + 4.
    let dst = (pair_index(k, b) * p.chunks + chunk) * P * P + 4u * lane * P;
    gram_store_rows(acc[0], dst);
    gram_store_rows(acc[1], dst + 4u);
    gram_store_rows(acc[2], dst + 8u);
    gram_store_rows(acc[3], dst + 12u);
    gram_store_rows(acc[4], dst + 16u);
    gram_store_rows(acc[5], dst + 20u);
    gram_store_rows(acc[6], dst + 24u);
    gram_store_rows(acc[7], dst + 28u);
}

// g[j][t] -> gram_out[dst + j P + t]: 4 rows of 4 entries.
fn gram_store_rows(g: mat4x4<f32>, dst: u32) {
    for (var j = 0u; j < 4u; j++) {
        for (var t = 0u; t < 4u; t++) {
            gram_out[dst + j * P + t] = g[j][t];
        }
    }
}

// ---- rotate_subgroup: same effect as rotate. Lane l reads its columns' 4 x 4 blocks of Q
// once. Per step of 32 rows and 4 columns c.. of the pair, lane l loads rows 4l.. of the 4
// columns; spread, the loads give every lane the step's 32 x 4 block of X, and lane l
// accumulates its 4 output columns for all 32 rows: acc[s][j] = rows 4s.. of column 4l + j.
const SG_ROT_ROWS: u32 = 32u;

// acc += the 32 rows at vec4 x (lane l's rows 4l..) of 4 columns ld4 vec4 apart, times the
// lane's Q block qt (qt[j][h] = Q[c + h][4l + j]).
fn rotate_accumulate(acc: ptr<function, array<mat4x4<f32>, 8>>, x: u32, ld4: u32, qt: mat4x4<f32>) {
    let s0 = spread(rot_x[x]);
    let s1 = spread(rot_x[x + ld4]);
    let s2 = spread(rot_x[x + 2u * ld4]);
    let s3 = spread(rot_x[x + 3u * ld4]);
    (*acc)[0] += mat4x4<f32>(s0[0], s1[0], s2[0], s3[0]) * qt;
    (*acc)[1] += mat4x4<f32>(s0[1], s1[1], s2[1], s3[1]) * qt;
    (*acc)[2] += mat4x4<f32>(s0[2], s1[2], s2[2], s3[2]) * qt;
    (*acc)[3] += mat4x4<f32>(s0[3], s1[3], s2[3], s3[3]) * qt;
    (*acc)[4] += mat4x4<f32>(s0[4], s1[4], s2[4], s3[4]) * qt;
    (*acc)[5] += mat4x4<f32>(s0[5], s1[5], s2[5], s3[5]) * qt;
    (*acc)[6] += mat4x4<f32>(s0[6], s1[6], s2[6], s3[6]) * qt;
    (*acc)[7] += mat4x4<f32>(s0[7], s1[7], s2[7], s3[7]) * qt;
}

// Rows 4i.. of Q's columns 4l.. (Q row-major, vec4 q + 8c is Q[c][4l..]), transposed.
fn q_block(q: u32, i: u32) -> mat4x4<f32> {
    let row = q + 32u * i;
    return transpose(mat4x4<f32>(rot_q[row], rot_q[row + 8u], rot_q[row + 16u], rot_q[row + 24u]));
}

@compute @workgroup_size(8)
fn rotate_subgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let k = wg.x;
    let chunk = wg.y;
    let b = wg.z;
    let pair = pair_index(k, b);
    if !pair_rotated(pair, lane == 0u) {
        return;
    }
    let ld4 = p.ld / 4u;
    let base = b * p.np * p.ld;
    let out = base + pair_column(k, 4u * lane) * p.ld;
    let col_a = base + block_at(k) * B * p.ld;
    let col_b = base + block_at(p.nb - 1u - k) * B * p.ld;
    let q = pair * P * P / 4u + lane;
    // Constant indices only, so that Q and the accumulators stay in registers.
    let qt = array<mat4x4<f32>, 8>(
        q_block(q, 0u), q_block(q, 1u), q_block(q, 2u), q_block(q, 3u),
        q_block(q, 4u), q_block(q, 5u), q_block(q, 6u), q_block(q, 7u),
    );
    let row0 = chunk * p.chunk;
    let row1 = min(row0 + p.chunk, p.m);
    for (var r = row0; r < row1; r += SG_ROT_ROWS) {
        // Rows past row1 read other data (or the clamped end) and are not written.
        var acc: array<mat4x4<f32>, 8>;
        let xa = (col_a + r) / 4u + lane;
        let xb = (col_b + r) / 4u + lane;
        rotate_accumulate(&acc, xa, ld4, qt[0]);
        rotate_accumulate(&acc, xa + 4u * ld4, ld4, qt[1]);
        rotate_accumulate(&acc, xa + 8u * ld4, ld4, qt[2]);
        rotate_accumulate(&acc, xa + 12u * ld4, ld4, qt[3]);
        rotate_accumulate(&acc, xb, ld4, qt[4]);
        rotate_accumulate(&acc, xb + 4u * ld4, ld4, qt[5]);
        rotate_accumulate(&acc, xb + 8u * ld4, ld4, qt[6]);
        rotate_accumulate(&acc, xb + 12u * ld4, ld4, qt[7]);
        // Every lane has read the step's rows of all 32 columns before any lane writes them.
        workgroupBarrier();
        rot_store(acc[0], out, r, row1);
        rot_store(acc[1], out, r + 4u, row1);
        rot_store(acc[2], out, r + 8u, row1);
        rot_store(acc[3], out, r + 12u, row1);
        rot_store(acc[4], out, r + 16u, row1);
        rot_store(acc[5], out, r + 20u, row1);
        rot_store(acc[6], out, r + 24u, row1);
        rot_store(acc[7], out, r + 28u, row1);
        workgroupBarrier();
    }
}

// ---- eigen_subgroup: same output as eigen, one 8-lane subgroup per pair, with the Gram G
// and the rotation Q in registers. Lane l owns the physical columns 4l..4l + 4: g[u][t] holds
// rows 4u..4u + 4 of G's column 4l + t, q[u][t] the same of Q. Rotation slot s works on the
// physical positions (2s, 2s + 1), so each lane computes the rotations of its own two slots
// and applies them to its own columns; the rows need every slot's rotation, shared by
// broadcast. Between steps the indices move by a fixed permutation, `eigen`'s round-robin
// seen from the slots (the first index of each slot moves down a slot, the second up, the
// index at position 1 stays): on G's rows a constant register shuffle, on G's and Q's
// columns one shuffle with the neighbouring lanes. After P - 1 steps every pair of indices
// has met once and the positions are back where they started.
@group(0) @binding(1) var<storage, read> eig_partial4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> eig_q4: array<vec4<f32>>;

// a, or b where take_b, column by column.
fn choose(a: mat4x4<f32>, b: mat4x4<f32>, take_b: bool) -> mat4x4<f32> {
    return mat4x4<f32>(select(a[0], b[0], take_b), select(a[1], b[1], take_b), select(a[2], b[2], take_b), select(a[3], b[3], take_b));
}

// Block `lane` of m: rows 4l.. of the lane's columns, where its two slots' 2 x 2 blocks sit.
fn block_of_lane(m: ptr<function, array<mat4x4<f32>, 8>>, lane: u32) -> mat4x4<f32> {
    var b = (*m)[0];
    b = choose(b, (*m)[1], lane == 1u);
    b = choose(b, (*m)[2], lane == 2u);
    b = choose(b, (*m)[3], lane == 3u);
    b = choose(b, (*m)[4], lane == 4u);
    b = choose(b, (*m)[5], lane == 5u);
    b = choose(b, (*m)[6], lane == 6u);
    return choose(b, (*m)[7], lane == 7u);
}

// Cosines |g_ij| / (√g_ii √g_jj) of a column's 4 entries, 0 where either norm is tiny (as
// `cosine`: a NaN norm is not tiny, so that NaN comes through).
fn cosines(gij: vec4<f32>, gii: vec4<f32>, gjj: f32) -> vec4<f32> {
    let tiny = gii <= vec4<f32>(TINY) | vec4<bool>(gjj <= TINY);
    return select(abs(gij) / (sqrt(gii) * sqrt(gjj)), vec4<f32>(), tiny);
}

// Jᵀ from the left on rows 4u..: rows (4u, 4u + 1) by the rotation (r.x, r.y), rows
// (4u + 2, 4u + 3) by (r.z, r.w); row i <- c row_i - s row_j, row j <- s row_i + c row_j.
fn rotate_rows(m: mat4x4<f32>, r: vec4<f32>) -> mat4x4<f32> {
    let c = r.xxzz;
    let s = vec4<f32>(-r.y, r.y, -r.w, r.w);
    return mat4x4<f32>(m[0] * c + m[0].yxwz * s, m[1] * c + m[1].yxwz * s, m[2] * c + m[2].yxwz * s, m[3] * c + m[3].yxwz * s);
}

// J from the right on this lane's columns: (0, 1) by (r.x, r.y), (2, 3) by (r.z, r.w).
fn rotate_columns(m: mat4x4<f32>, r: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(r.x * m[0] - r.y * m[1], r.y * m[0] + r.x * m[1], r.z * m[2] - r.w * m[3], r.w * m[2] + r.z * m[3]);
}

// One step on block u of G: rows by the rotations of lane u's slots, columns by this lane's,
// and the annihilated entries of this lane's 2 x 2 blocks (in block u = lane) set to 0.
fn rotate_gram_block(m: mat4x4<f32>, rows: vec4<f32>, own: vec4<f32>, lanes_block: bool) -> mat4x4<f32> {
    var n = rotate_columns(rotate_rows(m, rows), own);
    if lanes_block {
        if own.y != 0.0 {
            n[1].x = 0.0;
            n[0].y = 0.0;
        }
        if own.w != 0.0 {
            n[3].z = 0.0;
            n[2].w = 0.0;
        }
    }
    return n;
}

// The slot move on the rows of block u (from the same column's blocks u - 1, u, u + 1):
// row 4u <- 4u + 2, 4u + 1 <- 4u - 1, 4u + 2 <- 4u + 4, 4u + 3 <- 4u + 1; at the ends
// row 1 stays, row 3 <- row 0 and row 30 <- row 31.
fn move_rows(prev: mat4x4<f32>, cur: mat4x4<f32>, next: mat4x4<f32>, u: u32) -> mat4x4<f32> {
    return mat4x4<f32>(
        move_column_rows(prev[0], cur[0], next[0], u),
        move_column_rows(prev[1], cur[1], next[1], u),
        move_column_rows(prev[2], cur[2], next[2], u),
        move_column_rows(prev[3], cur[3], next[3], u),
    );
}

fn move_column_rows(prev: vec4<f32>, cur: vec4<f32>, next: vec4<f32>, u: u32) -> vec4<f32> {
    return vec4<f32>(cur.z, select(prev.w, cur.y, u == 0u), select(next.x, cur.w, u == 7u), select(cur.y, cur.x, u == 0u));
}

// The same move on the columns: slot 0 <- slot 2, slot 1 <- the lower lane's slot 3,
// slot 2 <- the upper lane's slot 0, slot 3 <- slot 1 (lane 0: slot 1 stays, slot 3 <- slot 0;
// lane 7: slot 2 <- slot 3).
fn move_columns(m: mat4x4<f32>, lane: u32) -> mat4x4<f32> {
    let from_lower = subgroupShuffleUp(m[3], 1u);
    let from_upper = subgroupShuffleDown(m[0], 1u);
    return mat4x4<f32>(
        m[2],
        select(from_lower, m[1], lane == 0u),
        select(from_upper, m[3], lane == 7u),
        select(m[1], m[0], lane == 0u),
    );
}

// Rows 4u.. of the lane's columns of Q S, for the symmetric S whose columns 4l.. (all rows)
// this lane holds in s: every lane's rows 4u.. of Q, spread, times them.
fn times_spread(q: mat4x4<f32>, s: ptr<function, array<mat4x4<f32>, 8>>) -> mat4x4<f32> {
    let s0 = spread(q[0]);
    let s1 = spread(q[1]);
    let s2 = spread(q[2]);
    let s3 = spread(q[3]);
    return mat4x4<f32>(s0[0], s1[0], s2[0], s3[0]) * (*s)[0] + mat4x4<f32>(s0[1], s1[1], s2[1], s3[1]) * (*s)[1]
        + mat4x4<f32>(s0[2], s1[2], s2[2], s3[2]) * (*s)[2] + mat4x4<f32>(s0[3], s1[3], s2[3], s3[3]) * (*s)[3]
        + mat4x4<f32>(s0[4], s1[4], s2[4], s3[4]) * (*s)[4] + mat4x4<f32>(s0[5], s1[5], s2[5], s3[5]) * (*s)[5]
        + mat4x4<f32>(s0[6], s1[6], s2[6], s3[6]) * (*s)[6] + mat4x4<f32>(s0[7], s1[7], s2[7], s3[7]) * (*s)[7];
}

// Block u of the lane's columns into Q (row-major, as vec4): Q[4u + r][4l..4l + 4] = m[..][r].
fn store_q_block(m: mat4x4<f32>, pair: u32, u: u32, lane: u32) {
    let rows = transpose(m);
    let dst = (pair * P * P + 4u * u * P) / 4u + lane;
    eig_q4[dst] = rows[0];
    eig_q4[dst + 8u] = rows[1];
    eig_q4[dst + 16u] = rows[2];
    eig_q4[dst + 24u] = rows[3];
}

// Rows 4u.. of G's columns 4l.. from one row chunk's partial Gram at vec4 src (row-major).
fn partial_block(src: u32, u: u32) -> mat4x4<f32> {
    let rows = src + 32u * u;
    return transpose(mat4x4<f32>(eig_partial4[rows], eig_partial4[rows + 8u], eig_partial4[rows + 16u], eig_partial4[rows + 24u]));
}

// The bit patterns of the cosines of block u's entries above the diagonal (rows 4u.., the
// lane's columns 4l..), given the diagonal of rows 4u.. and of the lane's columns.
fn block_cosines(m: mat4x4<f32>, u: u32, lane: u32, rows_diagonal: vec4<f32>, diagonal: vec4<f32>) -> vec4<u32> {
    let row = vec4<u32>(4u * u) + vec4<u32>(0u, 1u, 2u, 3u);
    let col = 4u * lane;
    let c0 = select(vec4<f32>(), cosines(m[0], rows_diagonal, diagonal.x), row < vec4<u32>(col));
    let c1 = select(vec4<f32>(), cosines(m[1], rows_diagonal, diagonal.y), row < vec4<u32>(col + 1u));
    let c2 = select(vec4<f32>(), cosines(m[2], rows_diagonal, diagonal.z), row < vec4<u32>(col + 2u));
    let c3 = select(vec4<f32>(), cosines(m[3], rows_diagonal, diagonal.w), row < vec4<u32>(col + 3u));
    return max(max(bitcast<vec4<u32>>(c0), bitcast<vec4<u32>>(c1)), max(bitcast<vec4<u32>>(c2), bitcast<vec4<u32>>(c3)));
}

const IDENTITY: mat4x4<f32> = mat4x4<f32>(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0);

@compute @workgroup_size(8)
fn eigen_subgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let k = wg.x;
    let b = wg.z;
    let pair = pair_index(k, b);
    // G summed over the row chunks in a fixed order (deterministic): row 4u + r of the
    // partial holds G[4u + r][4l..4l + 4] as vec4 number (4u + r) 8 + l.
    var g: array<mat4x4<f32>, 8>;
    for (var c = 0u; c < p.chunks; c++) {
        // Constant indices only, so that G and Q stay in registers.
        let src = (pair * p.chunks + c) * P * P / 4u + lane;
        g[0] += partial_block(src, 0u);
        g[1] += partial_block(src, 1u);
        g[2] += partial_block(src, 2u);
        g[3] += partial_block(src, 3u);
        g[4] += partial_block(src, 4u);
        g[5] += partial_block(src, 5u);
        g[6] += partial_block(src, 6u);
        g[7] += partial_block(src, 7u);
    }
    // The largest off-diagonal cosine, compared as bit patterns (as the atomic does), so
    // that NaN (above every finite cosine) reaches `off` and the driver reports bad input.
    let own = block_of_lane(&g, lane);
    let diagonal = vec4<f32>(own[0].x, own[1].y, own[2].z, own[3].w);
    let d = spread(diagonal);
    let largest = max(
        max(max(block_cosines(g[0], 0u, lane, d[0], diagonal), block_cosines(g[1], 1u, lane, d[1], diagonal)),
            max(block_cosines(g[2], 2u, lane, d[2], diagonal), block_cosines(g[3], 3u, lane, d[3], diagonal))),
        max(max(block_cosines(g[4], 4u, lane, d[4], diagonal), block_cosines(g[5], 5u, lane, d[5], diagonal)),
            max(block_cosines(g[6], 6u, lane, d[6], diagonal), block_cosines(g[7], 7u, lane, d[7], diagonal))),
    );
    let off = subgroupMax(max(max(largest.x, largest.y), max(largest.z, largest.w)));
    var own_sine = 0.0;
    if bitcast<f32>(off) > p.tol {
        var q = array<mat4x4<f32>, 8>(
            choose(mat4x4<f32>(), IDENTITY, lane == 0u), choose(mat4x4<f32>(), IDENTITY, lane == 1u),
            choose(mat4x4<f32>(), IDENTITY, lane == 2u), choose(mat4x4<f32>(), IDENTITY, lane == 3u),
            choose(mat4x4<f32>(), IDENTITY, lane == 4u), choose(mat4x4<f32>(), IDENTITY, lane == 5u),
            choose(mat4x4<f32>(), IDENTITY, lane == 6u), choose(mat4x4<f32>(), IDENTITY, lane == 7u),
        );
        for (var sweep = 0u; sweep < p.sweeps; sweep++) {
            var rotated = false;
            for (var step = 0u; step < P - 1u; step++) {
                let m = block_of_lane(&g, lane);
                let rot = vec4<f32>(schur_rotation(m[1].x, m[0].x, m[1].y), schur_rotation(m[3].z, m[2].z, m[3].w));
                own_sine = max(own_sine, max(abs(rot.y), abs(rot.w)));
                rotated = rotated || rot.y != 0.0 || rot.w != 0.0;
                let rows = spread(rot);
                // Constant indices only, so that G and Q stay in registers.
                let r0 = rotate_gram_block(g[0], rows[0], rot, lane == 0u);
                let r1 = rotate_gram_block(g[1], rows[1], rot, lane == 1u);
                let r2 = rotate_gram_block(g[2], rows[2], rot, lane == 2u);
                let r3 = rotate_gram_block(g[3], rows[3], rot, lane == 3u);
                let r4 = rotate_gram_block(g[4], rows[4], rot, lane == 4u);
                let r5 = rotate_gram_block(g[5], rows[5], rot, lane == 5u);
                let r6 = rotate_gram_block(g[6], rows[6], rot, lane == 6u);
                let r7 = rotate_gram_block(g[7], rows[7], rot, lane == 7u);
                g[0] = move_columns(move_rows(r0, r0, r1, 0u), lane);
                g[1] = move_columns(move_rows(r0, r1, r2, 1u), lane);
                g[2] = move_columns(move_rows(r1, r2, r3, 2u), lane);
                g[3] = move_columns(move_rows(r2, r3, r4, 3u), lane);
                g[4] = move_columns(move_rows(r3, r4, r5, 4u), lane);
                g[5] = move_columns(move_rows(r4, r5, r6, 5u), lane);
                g[6] = move_columns(move_rows(r5, r6, r7, 6u), lane);
                g[7] = move_columns(move_rows(r6, r7, r7, 7u), lane);
                q[0] = move_columns(rotate_columns(q[0], rot), lane);
                q[1] = move_columns(rotate_columns(q[1], rot), lane);
                q[2] = move_columns(rotate_columns(q[2], rot), lane);
                q[3] = move_columns(rotate_columns(q[3], rot), lane);
                q[4] = move_columns(rotate_columns(q[4], rot), lane);
                q[5] = move_columns(rotate_columns(q[5], rot), lane);
                q[6] = move_columns(rotate_columns(q[6], rot), lane);
                q[7] = move_columns(rotate_columns(q[7], rot), lane);
            }
            if subgroupMax(select(0u, 1u, rotated)) == 0u {
                break;
            }
        }
        // One Newton-Schulz step Q <- Q (3I - QᵀQ) / 2, as in `eigen`.
        var s: array<mat4x4<f32>, 8>;
        gram_accumulate(&s, q[0]);
        gram_accumulate(&s, q[1]);
        gram_accumulate(&s, q[2]);
        gram_accumulate(&s, q[3]);
        gram_accumulate(&s, q[4]);
        gram_accumulate(&s, q[5]);
        gram_accumulate(&s, q[6]);
        gram_accumulate(&s, q[7]);
        store_q_block(1.5 * q[0] - 0.5 * times_spread(q[0], &s), pair, 0u, lane);
        store_q_block(1.5 * q[1] - 0.5 * times_spread(q[1], &s), pair, 1u, lane);
        store_q_block(1.5 * q[2] - 0.5 * times_spread(q[2], &s), pair, 2u, lane);
        store_q_block(1.5 * q[3] - 0.5 * times_spread(q[3], &s), pair, 3u, lane);
        store_q_block(1.5 * q[4] - 0.5 * times_spread(q[4], &s), pair, 4u, lane);
        store_q_block(1.5 * q[5] - 0.5 * times_spread(q[5], &s), pair, 5u, lane);
        store_q_block(1.5 * q[6] - 0.5 * times_spread(q[6], &s), pair, 6u, lane);
        store_q_block(1.5 * q[7] - 0.5 * times_spread(q[7], &s), pair, 7u, lane);
    }
    let sine = subgroupMax(bitcast<u32>(own_sine));
    if lane == 0u {
        atomicMax(&eig_off[0], off);
        atomicMax(&eig_off[1], sine);
        eig_rotated[pair] = select(0u, 1u, bitcast<f32>(off) > p.tol);
    }
}
