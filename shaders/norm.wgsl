// T5 RMS norm (HF T5LayerNorm) over the last dimension, workgroup_reduce.wgsl appended.
// One workgroup per row, striding over the d columns.
//
// rms_norm_forward:  r = 1 / sqrt(mean(x²) + eps); y = w ⊙ x · r; inv_rms[row] = r
// rms_norm_backward: with g = dy ⊙ w,
//                    dx = r · g − x · r³ · Σ(g ⊙ x) / d
//                    dw_rows[row, :] = dy ⊙ x · r   (summed over rows by reduce::col_sum)

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, and so the width of workgroup_reduce.wgsl's tree.
const WG: u32 = 256u;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;

@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> inv_rms: array<f32>;

@compute @workgroup_size(WG)
fn rms_norm_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = workgroup_row(wg, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var ss = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let v = x[base + c];
        ss += v * v;
    }
    ss = workgroup_reduce(ss, lid, REDUCE_SUM);
    let r = 1.0 / sqrt(ss / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        y[base + c] = w[c] * (x[base + c] * r);
    }
    if lid == 0u {
        inv_rms[row] = r;
    }
}

@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read> inv_rms_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> dw_rows: array<f32>;

@compute @workgroup_size(WG)
fn rms_norm_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = workgroup_row(wg, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let r = inv_rms_in[row];
    var gx = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        gx += dy[base + c] * w[c] * x[base + c];
    }
    gx = workgroup_reduce(gx, lid, REDUCE_SUM);
    let k = r * r * r * gx / f32(p.cols);
    for (var c = lid; c < p.cols; c += WG) {
        let xv = x[base + c];
        let dyv = dy[base + c];
        dx[base + c] = r * dyv * w[c] - xv * k;
        dw_rows[base + c] = dyv * xv * r;
    }
}
