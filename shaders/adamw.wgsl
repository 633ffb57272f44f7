// AdamW with torch.optim.AdamW semantics (decoupled weight decay, bias correction, eps
// added after the bias-corrected square root), fused with global gradient-norm clipping.
// The clip factor is computed here from the gradients' global sum of squares, so a step
// needs no read-back before the update.
//
// update = -lr * (wd * p + m_hat / (sqrt(v_hat) + eps)), with m, v updated from clip * g.
// adamw_apply adds the update to p in place; adamw_update only writes it, so the caller
// can project it out of the frozen subspace (OSFT) before adding it to p.

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // 1 - beta1^t and sqrt(1 - beta2^t), computed in f64 on the host
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    // 0 disables clipping
    max_grad_norm: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> grad_sumsq: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(5) var<storage, read_write> exp_avg_sq: array<f32>;

override WG: u32 = 256u;

fn clip_factor() -> f32 {
    if p.max_grad_norm <= 0.0 {
        return 1.0;
    }
    // torch.nn.utils.clip_grad_norm_: max_norm / (total_norm + 1e-6), clamped to 1
    return min(1.0, p.max_grad_norm / (sqrt(grad_sumsq[0]) + 1e-6));
}

/// Advances the moments of element i and returns its update.
fn adamw_delta(i: u32, w: f32) -> f32 {
    let g = grad[i] * clip_factor();
    let m = p.beta1 * exp_avg[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * exp_avg_sq[i] + (1.0 - p.beta2) * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / p.bias_correction2_sqrt + p.eps;
    return -p.lr * (p.weight_decay * w + (m / p.bias_correction1) / denom);
}

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + lid;
}

@group(0) @binding(3) var<storage, read_write> param: array<f32>;

@compute @workgroup_size(WG)
fn adamw_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < p.n {
        let w = param[i];
        param[i] = w + adamw_delta(i, w);
    }
}

@group(0) @binding(3) var<storage, read> param_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> update: array<f32>;

@compute @workgroup_size(WG)
fn adamw_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < p.n {
        update[i] = adamw_delta(i, param_in[i]);
    }
}
