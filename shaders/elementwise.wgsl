// Elementwise kernels over flat f32 arrays. One entry point per binding shape; the
// operation is a uniform `op` code so that a family of ops shares one pipeline.
//
// fill:   y = alpha
// unary:  y = f(x)          op: 0 scale (alpha*x), 1 relu, 2 gelu_new, 3 axpby (alpha*x + beta*y),
//                               4 silu (x * sigmoid(x))
// binary: y = g(a, b)       op: 0 a + b, 1 a * b, 2 relu'(b) * a, 3 gelu_new'(b) * a, 4 silu'(b) * a
//                               (backward ops: a is the upstream gradient, b the forward input)
// Index: workgroups may be spread over x and y (grid_1d), so the flat index folds both.

struct Params {
    n: u32,
    op: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 256u;

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + lid;
}

const GELU_C: f32 = 0.7978845608028654; // sqrt(2 / pi)

fn tanh_safe(z: f32) -> f32 {
    // tanh through exp of a clamped argument: exact enough and never inf/inf.
    let c = clamp(z, -15.0, 15.0);
    let e = exp(2.0 * c);
    return (e - 1.0) / (e + 1.0);
}

fn gelu_new(x: f32) -> f32 {
    return 0.5 * x * (1.0 + tanh_safe(GELU_C * (x + 0.044715 * x * x * x)));
}

fn gelu_new_grad(x: f32) -> f32 {
    let t = tanh_safe(GELU_C * (x + 0.044715 * x * x * x));
    let dt = (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
    return 0.5 * (1.0 + t) + 0.5 * x * dt;
}

// 1 / (1 + exp(-x)); exp overflows to inf for very negative x, which gives exactly 0.
fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    return s * (1.0 + x * (1.0 - s));
}

@group(0) @binding(1) var<storage, read_write> fill_y: array<f32>;

@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i < p.n {
        fill_y[i] = p.alpha;
    }
}

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> unary_y: array<f32>;

@compute @workgroup_size(WG)
fn unary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= p.n {
        return;
    }
    let v = x[i];
    switch p.op {
        case 0u: { unary_y[i] = p.alpha * v; }
        case 1u: { unary_y[i] = max(v, 0.0); }
        case 2u: { unary_y[i] = gelu_new(v); }
        case 4u: { unary_y[i] = v * sigmoid(v); }
        default: { unary_y[i] = p.alpha * v + p.beta * unary_y[i]; }
    }
}

@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> binary_y: array<f32>;

@compute @workgroup_size(WG)
fn binary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= p.n {
        return;
    }
    let a = x[i];
    let bv = b[i];
    switch p.op {
        case 0u: { binary_y[i] = a + bv; }
        case 1u: { binary_y[i] = a * bv; }
        case 2u: { binary_y[i] = select(0.0, a, bv > 0.0); }
        case 3u: { binary_y[i] = a * gelu_new_grad(bv); }
        default: { binary_y[i] = a * silu_grad(bv); }
    }
}
