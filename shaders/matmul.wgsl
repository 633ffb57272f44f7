// Batched GEMM: C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b], op(X) = Xᵀ when TRANS_X.
// Matrices are row-major with leading dims (row strides as stored), element offsets and
// per-batch strides (0 broadcasts one matrix over the batch). Grid: x over column tiles of C,
// y over row tiles, z over the batch. beta == 0 never reads C (it may hold garbage).
//
// gemm_register_blocked: no workgroup memory; each invocation keeps a 4x4 block of C in a
//   mat4x4 and reads A and B as vec4. Fastest on CPU adapters (lavapipe), where barriers are
//   expensive and caches do the reuse. Needs leading dims, offsets, strides and buffer
//   lengths that are multiples of 4 (the launcher checks and falls back to gemm_tiled).
// gemm_tiled: 64x64 tiles of C staged through workgroup memory, 16x16 invocations of 4x4
//   each, scalar coalesced loads; any alignment. What discrete GPUs want.
// transpose: y[b] = x[b]ᵀ through a 16x16 workgroup tile (m = rows, n = cols of x).

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

@group(0) @binding(0) var<uniform> p: Params;

override TRANS_A: bool = false;
override TRANS_B: bool = false;

@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// Writes a 4x4 block whose row r, column s is acc[r][s] at rows i0 + r*di, columns j0 + s*dj.
fn store_block(acc: mat4x4<f32>, base_c: u32, i0: u32, j0: u32, di: u32, dj: u32) {
    var block = acc; // a variable, so that the loops below may index it
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + r * di;
        if i >= p.m {
            break;
        }
        for (var s = 0u; s < 4u; s++) {
            let j = j0 + s * dj;
            if j < p.n {
                let idx = base_c + i * p.ldc + j;
                var v = p.alpha * block[r][s];
                if p.beta != 0.0 {
                    v += p.beta * c[idx];
                }
                c[idx] = v;
            }
        }
    }
}

// ---- register-blocked ----

override RB_X: u32 = 8u; // invocations along n
override RB_Y: u32 = 8u; // invocations along m

@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;

// Four vec4 at q, q + ld4, q + 2 ld4, q + 3 ld4 as the columns of a matrix.
fn load_a(q: u32, ld4: u32) -> mat4x4<f32> {
    return mat4x4<f32>(a4[q], a4[q + ld4], a4[q + 2u * ld4], a4[q + 3u * ld4]);
}

fn load_b(q: u32, ld4: u32) -> mat4x4<f32> {
    return mat4x4<f32>(b4[q], b4[q + ld4], b4[q + 2u * ld4], b4[q + 3u * ld4]);
}

// Column r of fa is op(A)[i0 + r][kk..kk+4]; column t of fb is op(B)[kk + t][j0..j0+4], so
// column r of fb * fa is the contribution to C[i0 + r][j0..j0+4]. Loads that are stored the
// other way round are transposed in registers.
fn fragment_a(q: u32, ld4: u32) -> mat4x4<f32> {
    let f = load_a(q, ld4);
    if TRANS_A {
        return transpose(f);
    }
    return f;
}

fn fragment_b(q: u32, ld4: u32) -> mat4x4<f32> {
    let f = load_b(q, ld4);
    if TRANS_B {
        return transpose(f);
    }
    return f;
}

@compute @workgroup_size(RB_X, RB_Y)
fn gemm_register_blocked(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i0 = (wg.y * RB_Y + lid.y) * 4u;
    let j0 = (wg.x * RB_X + lid.x) * 4u;
    let base_a = p.offset_a + wg.z * p.stride_a;
    let base_b = p.offset_b + wg.z * p.stride_b;
    // Rows i0.. and columns j0.. past the edge read neighbouring (or clamped) data that only
    // reaches C entries store_block skips, so the K loop has no bounds checks.
    let lda4 = p.lda / 4u;
    let ldb4 = p.ldb / 4u;
    var qa = select(base_a + i0 * p.lda, base_a + i0, TRANS_A) / 4u;
    var qb = select(base_b + j0, base_b + j0 * p.ldb, TRANS_B) / 4u;
    let step_a = select(1u, p.lda, TRANS_A);
    let step_b = select(p.ldb, 1u, TRANS_B);
    var acc = mat4x4<f32>();
    let k_full = p.k / 4u;
    for (var t = 0u; t < k_full; t++) {
        acc += fragment_b(qb, ldb4) * fragment_a(qa, lda4);
        qa += step_a;
        qb += step_b;
    }
    let k_rest = p.k % 4u;
    if k_rest != 0u {
        // Past K the loads hit other data, which must not reach C: zero it.
        let keep = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(k_rest);
        var fa = fragment_a(qa, lda4);
        var fb = fragment_b(qb, ldb4);
        for (var r = 0u; r < 4u; r++) {
            fa[r] = select(vec4<f32>(), fa[r], keep);
            fb[r] = select(vec4<f32>(), fb[r], keep[r]);
        }
        acc += fb * fa;
    }
    store_block(acc, p.offset_c + wg.z * p.stride_c, i0, j0, 1u, 1u);
}

// ---- tiled ----

const TILE: u32 = 64u;
const TILE_K: u32 = 16u;
// Row pitch of the staged tiles: 65 keeps the column-wise stores of a transposed load free of
// bank conflicts.
const PITCH: u32 = TILE + 1u;

var<workgroup> tile_a: array<f32, 1040>; // [TILE_K][PITCH]: op(A)[i][kk] at kk * PITCH + i
var<workgroup> tile_b: array<f32, 1040>; // [TILE_K][PITCH]: op(B)[kk][j] at kk * PITCH + j

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

@compute @workgroup_size(16, 16)
fn gemm_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i_tile = wg.y * TILE;
    let j_tile = wg.x * TILE;
    let base_a = p.offset_a + wg.z * p.stride_a;
    let base_b = p.offset_b + wg.z * p.stride_b;
    // acc[r][s] is C[i_tile + lid.y + 16 r][j_tile + lid.x + 16 s]: neighbouring invocations
    // read neighbouring words of the tiles and write neighbouring words of C.
    var acc = mat4x4<f32>();
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        // 1024 elements of each tile, 4 per invocation; consecutive invocations walk the
        // dimension that is contiguous in memory so that global loads coalesce.
        for (var e = 0u; e < 4u; e++) {
            let idx = li + 256u * e;
            let ia = select(idx / TILE_K, idx % TILE, TRANS_A);
            let ka = select(idx % TILE_K, idx / TILE, TRANS_A);
            let gi = i_tile + ia;
            let gka = k0 + ka;
            var va = 0.0;
            if gi < p.m && gka < p.k {
                va = a[base_a + select(gi * p.lda + gka, gka * p.lda + gi, TRANS_A)];
            }
            tile_a[ka * PITCH + ia] = va;

            let jb = select(idx % TILE, idx / TILE_K, TRANS_B);
            let kb = select(idx / TILE, idx % TILE_K, TRANS_B);
            let gj = j_tile + jb;
            let gkb = k0 + kb;
            var vb = 0.0;
            if gj < p.n && gkb < p.k {
                vb = b[base_b + select(gkb * p.ldb + gj, gj * p.ldb + gkb, TRANS_B)];
            }
            tile_b[kb * PITCH + jb] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let row = kk * PITCH;
            let av = vec4<f32>(tile_a[row + lid.y], tile_a[row + lid.y + 16u], tile_a[row + lid.y + 32u], tile_a[row + lid.y + 48u]);
            let bv = vec4<f32>(tile_b[row + lid.x], tile_b[row + lid.x + 16u], tile_b[row + lid.x + 32u], tile_b[row + lid.x + 48u]);
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    store_block(acc, p.offset_c + wg.z * p.stride_c, i_tile + lid.y, j_tile + lid.x, 16u, 16u);
}

// ---- transpose ----

var<workgroup> tile_t: array<f32, 272>; // 16 x 17: the odd pitch avoids bank conflicts

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(16, 16)
fn transpose_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base = wg.z * p.m * p.n;
    let r = wg.y * 16u + lid.y;
    let col = wg.x * 16u + lid.x;
    var v = 0.0;
    if r < p.m && col < p.n {
        v = x[base + r * p.n + col];
    }
    tile_t[lid.y * 17u + lid.x] = v;
    workgroupBarrier();
    // Out row = in column wg.x * 16 + lid.y; out column = in row wg.y * 16 + lid.x.
    let out_r = wg.x * 16u + lid.y;
    let out_c = wg.y * 16u + lid.x;
    if out_r < p.n && out_c < p.m {
        y[base + out_r * p.m + out_c] = tile_t[lid.x * 17u + lid.y];
    }
}
