// Fused cross-entropy forward and backward over rows of logits (workgroup_reduce.wgsl is
// appended). One workgroup per row, striding over the vocabulary.
//
// For a row with a label in [0, vocab) (-100 and anything else out of range is ignored):
//   lse = max + log Σ exp(x - max)
//   row_loss = (lse - x[label]) · inv_valid
//   dlogits = (exp(x - lse) - onehot(label)) · scale      (scale = grad_scale / num_valid)
// Ignored rows get row_loss 0 and dlogits 0. A row_reduce then sums row_loss to the loss.

struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
    inv_valid: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, and so the width of workgroup_reduce.wgsl's tree.
const WG: u32 = 256u;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;

@compute @workgroup_size(WG)
fn cross_entropy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = workgroup_row(wg, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.vocab;
    let label = labels[row];
    let valid = label >= 0 && u32(label) < p.vocab;
    var m = NEG_INF;
    for (var c = lid; c < p.vocab; c += WG) {
        m = max(m, logits[base + c]);
    }
    m = workgroup_reduce(m, lid, REDUCE_MAX);
    var s = 0.0;
    for (var c = lid; c < p.vocab; c += WG) {
        s += exp(logits[base + c] - m);
    }
    let lse = m + log(workgroup_reduce(s, lid, REDUCE_SUM));
    for (var c = lid; c < p.vocab; c += WG) {
        let g = (exp(logits[base + c] - lse) - select(0.0, 1.0, i32(c) == label)) * p.scale;
        dlogits[base + c] = select(0.0, g, valid);
    }
    if lid == 0u {
        var l = 0.0;
        if valid {
            l = (lse - logits[base + u32(label)]) * p.inv_valid;
        }
        row_loss[row] = l;
    }
}
