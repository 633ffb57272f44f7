// Rotary position embedding in Hugging Face Llama's rotate-half convention: within each head,
// element i pairs with element i + Dh/2 and the pair turns by angle position * inv_freq[i]:
//   y[i]        = x[i] cos - x[i + Dh/2] sin
//   y[i + Dh/2] = x[i + Dh/2] cos + x[i] sin
// The backward pass is the transposed rotation, the same formula with sin negated (sign = -1).
//
// Layouts: x and y [rows, H*Dh] with row = b * seq_len + position index; cos and sin
// [positions, Dh/2], precomputed on the host. One invocation per (row, head, pair).

struct Params {
    rows: u32,
    seq_len: u32,
    heads: u32,
    half_dim: u32,
    // Absolute position of a sequence's first row (the cached length in incremental decoding).
    first_position: u32,
    sign: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_table: array<f32>;
@group(0) @binding(3) var<storage, read> sin_table: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wg.x + wg.y * nwg.x) * WG + lid;
    if t >= p.rows * p.heads * p.half_dim {
        return;
    }
    let i = t % p.half_dim;
    let row_head = t / p.half_dim;
    let position = p.first_position + (row_head / p.heads) % p.seq_len;
    let c = cos_table[position * p.half_dim + i];
    let s = p.sign * sin_table[position * p.half_dim + i];
    let base = row_head * 2u * p.half_dim;
    let x1 = x[base + i];
    let x2 = x[base + i + p.half_dim];
    y[base + i] = x1 * c - x2 * s;
    y[base + i + p.half_dim] = x2 * c + x1 * s;
}
