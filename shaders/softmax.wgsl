// Row softmax over the last dimension and its backward (workgroup_reduce.wgsl is appended).
// One workgroup per row, striding over the columns.
//
// softmax_forward:  y = exp(x - max) / Σ exp(x - max)
// softmax_backward: dx = y ⊙ (dy - Σ dy ⊙ y)

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, and so the width of workgroup_reduce.wgsl's tree.
const WG: u32 = 256u;

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn softmax_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = workgroup_row(wg, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var m = NEG_INF;
    for (var c = lid; c < p.cols; c += WG) {
        m = max(m, x[base + c]);
    }
    m = workgroup_reduce(m, lid, REDUCE_MAX);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += exp(x[base + c] - m);
    }
    let inv = 1.0 / workgroup_reduce(s, lid, REDUCE_SUM);
    for (var c = lid; c < p.cols; c += WG) {
        y[base + c] = exp(x[base + c] - m) * inv;
    }
}

@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> y_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = workgroup_row(wg, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var d = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        d += dy[base + c] * y_in[base + c];
    }
    d = workgroup_reduce(d, lid, REDUCE_SUM);
    for (var c = lid; c < p.cols; c += WG) {
        dx[base + c] = y_in[base + c] * (dy[base + c] - d);
    }
}
