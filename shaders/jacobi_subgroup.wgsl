// gram_subgroup and rotate_subgroup: appended to jacobi.wgsl (its Params, pair addressing and
// bindings) and subgroup.wgsl (spread) to make the jacobi_subgroup module, for CPU adapters
// with subgroups of at least 8; the launcher checks. A workgroup is one 8-lane subgroup, and
// lane l owns the pair's columns 4l..4l + 4 (4 columns never straddle a 16-wide block). What
// every lane needs is loaded once, spread across the lanes and shared by broadcast, so each
// load feeds 4 to 8 times the multiply-adds of gram and rotate.

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
        // own[j]: rows 4q.. of column 4l + j. Column 4g + h of the pair is s_h[g].
        let own = mat4x4<f32>(gram_w[col + q], gram_w[col + m4 + q], gram_w[col + 2u * m4 + q], gram_w[col + 3u * m4 + q]);
        let s0 = spread(own[0]);
        let s1 = spread(own[1]);
        let s2 = spread(own[2]);
        let s3 = spread(own[3]);
        // Constant indices only, so that the accumulators stay in registers.
        acc[0] += transpose(mat4x4<f32>(s0[0], s1[0], s2[0], s3[0])) * own;
        acc[1] += transpose(mat4x4<f32>(s0[1], s1[1], s2[1], s3[1])) * own;
        acc[2] += transpose(mat4x4<f32>(s0[2], s1[2], s2[2], s3[2])) * own;
        acc[3] += transpose(mat4x4<f32>(s0[3], s1[3], s2[3], s3[3])) * own;
        acc[4] += transpose(mat4x4<f32>(s0[4], s1[4], s2[4], s3[4])) * own;
        acc[5] += transpose(mat4x4<f32>(s0[5], s1[5], s2[5], s3[5])) * own;
        acc[6] += transpose(mat4x4<f32>(s0[6], s1[6], s2[6], s3[6])) * own;
        acc[7] += transpose(mat4x4<f32>(s0[7], s1[7], s2[7], s3[7])) * own;
    }
    // The Gram is symmetric: acc[g][j] is row 4l + j, columns 4g..4g + 4.
    let dst = ((b * (p.nb / 2u) + k) * p.chunks + chunk) * P * P + 4u * lane * P;
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

// ---- rotate_subgroup: same effect as rotate. Per step of 32 rows and 4 columns c.. of the
// pair, lane l loads rows 4l.. of the 4 columns and its 4 x 4 block of Q (rows c.., columns
// 4l..); spread, the loads give every lane the step's 32 x 4 block of X, and lane l
// accumulates its 4 output columns for all 32 rows: acc[s][j] = rows 4s.. of column 4l + j.
const SG_ROT_ROWS: u32 = 32u;

@compute @workgroup_size(8)
fn rotate_subgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let k = wg.x;
    let chunk = wg.y;
    let b = wg.z;
    let pair = b * (p.nb / 2u) + k;
    if !pair_rotated(pair, lane == 0u) {
        return;
    }
    let ld4 = p.ld / 4u;
    let base = b * p.np * p.ld;
    let out = base + pair_column(k, 4u * lane) * p.ld;
    let col_a = base + block_at(k) * B * p.ld;
    let col_b = base + block_at(p.nb - 1u - k) * B * p.ld;
    // Q[c][4l..4l + 4] is vec4 number q + 8c.
    let q = pair * P * P / 4u + lane;
    let row0 = chunk * p.chunk;
    let row1 = min(row0 + p.chunk, p.m);
    for (var r = row0; r < row1; r += SG_ROT_ROWS) {
        // Rows past row1 read other data (or the clamped end) and are not written.
        var acc: array<mat4x4<f32>, 8>;
        for (var c = 0u; c < P; c += 4u) {
            let x = (select(col_b + (c - B) * p.ld, col_a + c * p.ld, c < B) + r) / 4u + lane;
            let s0 = spread(rot_x[x]);
            let s1 = spread(rot_x[x + ld4]);
            let s2 = spread(rot_x[x + 2u * ld4]);
            let s3 = spread(rot_x[x + 3u * ld4]);
            // qt[j][h] = Q[c + h][4l + j]
            let qt = transpose(mat4x4<f32>(rot_q[q + 8u * c], rot_q[q + 8u * c + 8u], rot_q[q + 8u * c + 16u], rot_q[q + 8u * c + 24u]));
            acc[0] += mat4x4<f32>(s0[0], s1[0], s2[0], s3[0]) * qt;
            acc[1] += mat4x4<f32>(s0[1], s1[1], s2[1], s3[1]) * qt;
            acc[2] += mat4x4<f32>(s0[2], s1[2], s2[2], s3[2]) * qt;
            acc[3] += mat4x4<f32>(s0[3], s1[3], s2[3], s3[3]) * qt;
            acc[4] += mat4x4<f32>(s0[4], s1[4], s2[4], s3[4]) * qt;
            acc[5] += mat4x4<f32>(s0[5], s1[5], s2[5], s3[5]) * qt;
            acc[6] += mat4x4<f32>(s0[6], s1[6], s2[6], s3[6]) * qt;
            acc[7] += mat4x4<f32>(s0[7], s1[7], s2[7], s3[7]) * qt;
        }
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
