// gemm_subgroup: appended to matmul.wgsl (its Params, TRANS_A/B, a4/b4, fragment_b and
// store_block) and subgroup.wgsl (spread) to make the matmul_subgroup module, built only on
// devices with the SUBGROUP feature and subgroups of at least 8; the launcher checks.
//
// For CPU adapters (lavapipe runs 8 invocations as the SIMD lanes of one subgroup): there a
// storage load whose address differs per lane costs a scalar loop over the lanes, while
// subgroupBroadcast from a constant lane is one register shuffle. A workgroup is one subgroup
// of 8 lanes and computes a 32 x 64 tile of C: per step of 4 along K, each lane loads 4 vec4
// of the tile's 32 x 4 block of op(A) and shares them by broadcast, so every lane sees all 32
// rows; each lane loads only its own 8 columns of op(B) (two 4 x 4 fragments) and keeps a
// 32 x 8 block of C. Needs the same 16-byte alignment as gemm_register_blocked.

// The 32 x 4 block op(A)[i0..i0+32][kk..kk+4] as 8 fragments: column r of fragment g is row
// 4g + r. Lane c's load h is vector number v = c + 8h of the block: row v (along K) when A is
// stored untransposed, else K step v / 8 of rows 4 (v % 8)..4 (v % 8) + 4.
fn fragments_a(v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) -> array<mat4x4<f32>, 8> {
    let s0 = spread(v0);
    let s1 = spread(v1);
    let s2 = spread(v2);
    let s3 = spread(v3);
    if TRANS_A {
        return array<mat4x4<f32>, 8>(
            transpose(mat4x4<f32>(s0[0], s1[0], s2[0], s3[0])),
            transpose(mat4x4<f32>(s0[1], s1[1], s2[1], s3[1])),
            transpose(mat4x4<f32>(s0[2], s1[2], s2[2], s3[2])),
            transpose(mat4x4<f32>(s0[3], s1[3], s2[3], s3[3])),
            transpose(mat4x4<f32>(s0[4], s1[4], s2[4], s3[4])),
            transpose(mat4x4<f32>(s0[5], s1[5], s2[5], s3[5])),
            transpose(mat4x4<f32>(s0[6], s1[6], s2[6], s3[6])),
            transpose(mat4x4<f32>(s0[7], s1[7], s2[7], s3[7])),
        );
    }
    return array<mat4x4<f32>, 8>(
        mat4x4<f32>(s0[0], s0[1], s0[2], s0[3]),
        mat4x4<f32>(s0[4], s0[5], s0[6], s0[7]),
        mat4x4<f32>(s1[0], s1[1], s1[2], s1[3]),
        mat4x4<f32>(s1[4], s1[5], s1[6], s1[7]),
        mat4x4<f32>(s2[0], s2[1], s2[2], s2[3]),
        mat4x4<f32>(s2[4], s2[5], s2[6], s2[7]),
        mat4x4<f32>(s3[0], s3[1], s3[2], s3[3]),
        mat4x4<f32>(s3[4], s3[5], s3[6], s3[7]),
    );
}

// acc[8u + g] += fb_u * fa[g]: C rows 4g.. of the tile, columns of fragment u. Constant
// indices only, so that the accumulators stay in registers.
fn accumulate(acc: ptr<function, array<mat4x4<f32>, 16>>, fa: array<mat4x4<f32>, 8>, fb0: mat4x4<f32>, fb1: mat4x4<f32>) {
    (*acc)[0] += fb0 * fa[0];
    (*acc)[1] += fb0 * fa[1];
    (*acc)[2] += fb0 * fa[2];
    (*acc)[3] += fb0 * fa[3];
    (*acc)[4] += fb0 * fa[4];
    (*acc)[5] += fb0 * fa[5];
    (*acc)[6] += fb0 * fa[6];
    (*acc)[7] += fb0 * fa[7];
    (*acc)[8] += fb1 * fa[0];
    (*acc)[9] += fb1 * fa[1];
    (*acc)[10] += fb1 * fa[2];
    (*acc)[11] += fb1 * fa[3];
    (*acc)[12] += fb1 * fa[4];
    (*acc)[13] += fb1 * fa[5];
    (*acc)[14] += fb1 * fa[6];
    (*acc)[15] += fb1 * fa[7];
}

@compute @workgroup_size(8)
fn gemm_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let i0 = wg.y * 32u;
    // Fragment u covers columns j0 + 32u..+4: neighbouring lanes read neighbouring vec4.
    let j0 = wg.x * 64u + lid.x * 4u;
    let base_a = p.offset_a + wg.z * p.stride_a;
    let base_b = p.offset_b + wg.z * p.stride_b;
    let lda4 = p.lda / 4u;
    let ldb4 = p.ldb / 4u;
    // First vec4 of this lane's A loads; the other three follow at a fixed distance. Rows and
    // columns past the edge read neighbouring (or clamped) data that only reaches C entries
    // store_block skips.
    var qa = select(base_a + (i0 + lane) * p.lda, base_a + lane * 4u + i0, TRANS_A) / 4u;
    let next_a = select(8u * lda4, lda4, TRANS_A);
    let step_a = select(1u, p.lda, TRANS_A);
    var qb = select(base_b + j0, base_b + j0 * p.ldb, TRANS_B) / 4u;
    let next_b = select(8u, 32u * ldb4, TRANS_B);
    let step_b = select(p.ldb, 1u, TRANS_B);
    var acc: array<mat4x4<f32>, 16>;
    let k_full = p.k / 4u;
    for (var t = 0u; t < k_full; t++) {
        let fa = fragments_a(a4[qa], a4[qa + next_a], a4[qa + 2u * next_a], a4[qa + 3u * next_a]);
        accumulate(&acc, fa, fragment_b(qb, ldb4), fragment_b(qb + next_b, ldb4));
        qa += step_a;
        qb += step_b;
    }
    let k_rest = p.k % 4u;
    if k_rest != 0u {
        // Past K the loads hit other data, which must not reach C: zero it.
        let keep = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(k_rest);
        var fa = fragments_a(a4[qa], a4[qa + next_a], a4[qa + 2u * next_a], a4[qa + 3u * next_a]);
        var fb0 = fragment_b(qb, ldb4);
        var fb1 = fragment_b(qb + next_b, ldb4);
        for (var r = 0u; r < 4u; r++) {
            for (var g = 0u; g < 8u; g++) {
                fa[g][r] = select(vec4<f32>(), fa[g][r], keep);
            }
            fb0[r] = select(vec4<f32>(), fb0[r], keep[r]);
            fb1[r] = select(vec4<f32>(), fb1[r], keep[r]);
        }
        accumulate(&acc, fa, fb0, fb1);
    }
    let base_c = p.offset_c + wg.z * p.stride_c;
    store_block(acc[0], base_c, i0 + 0u, j0, 1u, 1u);
    store_block(acc[1], base_c, i0 + 4u, j0, 1u, 1u);
    store_block(acc[2], base_c, i0 + 8u, j0, 1u, 1u);
    store_block(acc[3], base_c, i0 + 12u, j0, 1u, 1u);
    store_block(acc[4], base_c, i0 + 16u, j0, 1u, 1u);
    store_block(acc[5], base_c, i0 + 20u, j0, 1u, 1u);
    store_block(acc[6], base_c, i0 + 24u, j0, 1u, 1u);
    store_block(acc[7], base_c, i0 + 28u, j0, 1u, 1u);
    store_block(acc[8], base_c, i0 + 0u, j0 + 32u, 1u, 1u);
    store_block(acc[9], base_c, i0 + 4u, j0 + 32u, 1u, 1u);
    store_block(acc[10], base_c, i0 + 8u, j0 + 32u, 1u, 1u);
    store_block(acc[11], base_c, i0 + 12u, j0 + 32u, 1u, 1u);
    store_block(acc[12], base_c, i0 + 16u, j0 + 32u, 1u, 1u);
    store_block(acc[13], base_c, i0 + 20u, j0 + 32u, 1u, 1u);
    store_block(acc[14], base_c, i0 + 24u, j0 + 32u, 1u, 1u);
    store_block(acc[15], base_c, i0 + 28u, j0 + 32u, 1u, 1u);
}
