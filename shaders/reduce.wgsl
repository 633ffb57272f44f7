// Reductions of f32 data (workgroup_reduce.wgsl is appended).
//
// row_reduce:     out[r] = op over c of x[r, c]      op: 0 sum, 1 sum of squares, 2 max
// col_sum:        out[c] (+)= sum over r of x[r, c]  (a = 1 accumulates into out)
// sumsq_partials: out[a + g] = sum of x[i]² over the g-th chunk of SUMSQ_CHUNK elements
//                 (one pass per tensor into a shared partials buffer; a row_reduce sums it)

struct Params {
    rows: u32,
    cols: u32,
    // row_reduce: op; col_sum: accumulate flag; sumsq_partials: offset into out.
    a: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, and so the width of workgroup_reduce.wgsl's tree.
const WG: u32 = 256u;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const ROW_SUM: u32 = 0u;
const ROW_SUMSQ: u32 = 1u;

@compute @workgroup_size(WG)
fn row_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = workgroup_row(wg, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var acc = select(0.0, NEG_INF, p.a == 2u);
    for (var c = lid; c < p.cols; c += WG) {
        let v = x[base + c];
        switch p.a {
            case ROW_SUM: { acc += v; }
            case ROW_SUMSQ: { acc += v * v; }
            default: { acc = max(acc, v); }
        }
    }
    let r = workgroup_reduce(acc, lid, select(REDUCE_SUM, REDUCE_MAX, p.a == 2u));
    if lid == 0u {
        out[row] = r;
    }
}

// A col_sum workgroup covers COL_TILE adjacent columns (coalesced reads) with
// WG / COL_TILE row lanes each striding over the rows.
const COL_TILE: u32 = 32u;
const ROW_LANES: u32 = 8u;

@compute @workgroup_size(WG)
fn col_sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = workgroup_row(wg, nwg);
    if tile * COL_TILE >= p.cols {
        return;
    }
    let col = tile * COL_TILE + lid % COL_TILE;
    let lane = lid / COL_TILE;
    var acc = 0.0;
    if col < p.cols {
        for (var r = lane; r < p.rows; r += ROW_LANES) {
            acc += x[r * p.cols + col];
        }
    }
    wg_scratch[lid] = acc;
    workgroupBarrier();
    for (var s = ROW_LANES / 2u; s > 0u; s = s >> 1u) {
        if lane < s {
            wg_scratch[lid] += wg_scratch[lid + s * COL_TILE];
        }
        workgroupBarrier();
    }
    if lane == 0u && col < p.cols {
        out[col] = wg_scratch[lid] + select(0.0, out[col], p.a == 1u);
    }
}

// Elements per sumsq_partials workgroup: WG invocations x SUMSQ_ITEMS each.
const SUMSQ_ITEMS: u32 = 64u;

@compute @workgroup_size(WG)
fn sumsq_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = workgroup_row(wg, nwg);
    let n = p.cols;
    let base = g * WG * SUMSQ_ITEMS;
    if base >= n {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < SUMSQ_ITEMS; k++) {
        let i = base + k * WG + lid;
        if i < n {
            acc += x[i] * x[i];
        }
    }
    let r = workgroup_reduce(acc, lid, REDUCE_SUM);
    if lid == 0u {
        out[p.a + g] = r;
    }
}
