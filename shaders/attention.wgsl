// Multi-head attention, forward and backward, plus the T5 relative position bias gather
// and its deterministic scatter-free backward. No atomics anywhere: every output element
// is written by exactly one invocation, in a fixed summation order.
//
// Layouts: q [B, Sq, H*Dh], k and v [B, Sk, Hkv*Dh] (head h = columns h*Dh..(h+1)*Dh; query
// head h reads key/value head h / (H / Hkv), grouped-query attention when Hkv < H),
// probs and dscores [B, H, Sq, Sk], bias [H, Sq, Sk] (shared across the batch), key_mask [B, Sk].
// score(i, j) = scale * q_i·k_j + bias[h, i, j]; key j is visible to query i when
// key_mask[b, j] != 0 and, if causal, j <= i + (Sk - Sq) (queries are the last Sq positions,
// so incremental decoding with Sq = 1 sees every key). A query with no visible key gets
// all-zero probabilities (and so a zero output and zero gradients).
//
// Row kernels: one workgroup of WG invocations per (b, h, row); invocations stride over keys
// for the scores and over head dims for the weighted sums. Linear workgroup index folds x and y.
// workgroup_reduce.wgsl is appended (workgroup_reduce, workgroup_row, NEG_INF).

struct Params {
    batch: u32,
    heads: u32,
    q_len: u32,
    k_len: u32,
    head_dim: u32,
    causal: u32,
    has_bias: u32,
    has_mask: u32,
    scale: f32,
    // position_bias_backward: number of buckets
    buckets: u32,
    kv_heads: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;
// Scores of one query row live in workgroup memory: 8 KiB, with the reduction scratch
// well inside WebGPU's 16 KiB baseline. The launcher refuses longer key sequences.
const MAX_KEYS: u32 = 2048u;

var<workgroup> row: array<f32, MAX_KEYS>;

// Column of the first element of query head h's key/value head in a k or v row.
fn kv_offset(h: u32) -> u32 {
    return (h / (p.heads / p.kv_heads)) * p.head_dim;
}

// ---------------------------------------------------------------- forward

@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> key_mask: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> probs: array<f32>;

fn visible(b: u32, i: u32, j: u32) -> bool {
    if p.has_mask != 0u && key_mask[b * p.k_len + j] == 0.0 {
        return false;
    }
    return p.causal == 0u || i32(j) <= i32(i) + i32(p.k_len) - i32(p.q_len);
}

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // r = (b * H + h) * Sq + i, uniform over the workgroup.
    let r = workgroup_row(wg, nwg);
    if r >= p.batch * p.heads * p.q_len {
        return;
    }
    let i = r % p.q_len;
    let h = (r / p.q_len) % p.heads;
    let b = r / (p.q_len * p.heads);
    let width = p.heads * p.head_dim;
    let kv_width = p.kv_heads * p.head_dim;
    let q_base = (b * p.q_len + i) * width + h * p.head_dim;
    let kv_col = kv_offset(h);
    let bias_base = (h * p.q_len + i) * p.k_len;

    var local_max = NEG_INF;
    for (var j = lid; j < p.k_len; j = j + WG) {
        var s = NEG_INF;
        if visible(b, i, j) {
            let k_base = (b * p.k_len + j) * kv_width + kv_col;
            var dot = 0.0;
            for (var d = 0u; d < p.head_dim; d = d + 1u) {
                dot = dot + q[q_base + d] * k[k_base + d];
            }
            s = p.scale * dot;
            if p.has_bias != 0u {
                s = s + bias[bias_base + j];
            }
            local_max = max(local_max, s);
        }
        row[j] = s;
    }
    let row_max = workgroup_reduce(local_max, lid, REDUCE_MAX);

    var local_sum = 0.0;
    for (var j = lid; j < p.k_len; j = j + WG) {
        var e = 0.0;
        if visible(b, i, j) {
            e = exp(row[j] - row_max);
        }
        row[j] = e;
        local_sum = local_sum + e;
    }
    let total = workgroup_reduce(local_sum, lid, REDUCE_SUM);
    // total >= 1 when any key is visible (the maximum contributes exp(0)); 0 otherwise.
    let inv = select(0.0, 1.0 / total, total > 0.0);
    for (var j = lid; j < p.k_len; j = j + WG) {
        let pj = row[j] * inv;
        row[j] = pj;
        probs[r * p.k_len + j] = pj;
    }
    workgroupBarrier();

    for (var d = lid; d < p.head_dim; d = d + WG) {
        var acc = 0.0;
        for (var j = 0u; j < p.k_len; j = j + 1u) {
            acc = acc + row[j] * v[(b * p.k_len + j) * kv_width + kv_col + d];
        }
        out[q_base + d] = acc;
    }
}

// ---------------------------------------------------------------- backward
// Pass 1, per query row: dP = dO·Vᵀ, dS = P ⊙ (dP − Σ P⊙dP), dQ = scale · dS·K. Writes dS.
// Pass 2, per key row: dK = scale · dSᵀ·Q, dV = Pᵀ·dO (loops over the queries of every query
// head sharing the key/value head, no atomics).
// Pass 3, per (h, i, j): dbias += Σ_b dS (loops over the batch).

@group(0) @binding(1) var<storage, read> bq_dout: array<f32>;
@group(0) @binding(2) var<storage, read> bq_k: array<f32>;
@group(0) @binding(3) var<storage, read> bq_v: array<f32>;
@group(0) @binding(4) var<storage, read> bq_probs: array<f32>;
@group(0) @binding(5) var<storage, read_write> bq_dq: array<f32>;
@group(0) @binding(6) var<storage, read_write> bq_dscores: array<f32>;

@compute @workgroup_size(WG)
fn attention_backward_queries(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = workgroup_row(wg, nwg);
    if r >= p.batch * p.heads * p.q_len {
        return;
    }
    let i = r % p.q_len;
    let h = (r / p.q_len) % p.heads;
    let b = r / (p.q_len * p.heads);
    let width = p.heads * p.head_dim;
    let kv_width = p.kv_heads * p.head_dim;
    let q_base = (b * p.q_len + i) * width + h * p.head_dim;
    let kv_col = kv_offset(h);

    var local_dot = 0.0;
    for (var j = lid; j < p.k_len; j = j + WG) {
        let v_base = (b * p.k_len + j) * kv_width + kv_col;
        var dp = 0.0;
        for (var d = 0u; d < p.head_dim; d = d + 1u) {
            dp = dp + bq_dout[q_base + d] * bq_v[v_base + d];
        }
        row[j] = dp;
        local_dot = local_dot + dp * bq_probs[r * p.k_len + j];
    }
    let row_dot = workgroup_reduce(local_dot, lid, REDUCE_SUM);
    for (var j = lid; j < p.k_len; j = j + WG) {
        let ds = bq_probs[r * p.k_len + j] * (row[j] - row_dot);
        row[j] = ds;
        bq_dscores[r * p.k_len + j] = ds;
    }
    workgroupBarrier();

    for (var d = lid; d < p.head_dim; d = d + WG) {
        var acc = 0.0;
        for (var j = 0u; j < p.k_len; j = j + 1u) {
            acc = acc + row[j] * bq_k[(b * p.k_len + j) * kv_width + kv_col + d];
        }
        bq_dq[q_base + d] = p.scale * acc;
    }
}

@group(0) @binding(1) var<storage, read> bk_q: array<f32>;
@group(0) @binding(2) var<storage, read> bk_dout: array<f32>;
@group(0) @binding(3) var<storage, read> bk_probs: array<f32>;
@group(0) @binding(4) var<storage, read> bk_dscores: array<f32>;
@group(0) @binding(5) var<storage, read_write> bk_dk: array<f32>;
@group(0) @binding(6) var<storage, read_write> bk_dv: array<f32>;

@compute @workgroup_size(WG)
fn attention_backward_keys(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // r = (b * Hkv + g) * Sk + j; key/value head g serves query heads g*G..(g+1)*G, G = H / Hkv.
    let r = workgroup_row(wg, nwg);
    if r >= p.batch * p.kv_heads * p.k_len {
        return;
    }
    let j = r % p.k_len;
    let g = (r / p.k_len) % p.kv_heads;
    let b = r / (p.k_len * p.kv_heads);
    let group = p.heads / p.kv_heads;
    let width = p.heads * p.head_dim;
    let k_base = (b * p.k_len + j) * p.kv_heads * p.head_dim + g * p.head_dim;

    for (var d = lid; d < p.head_dim; d = d + WG) {
        var dk = 0.0;
        var dv = 0.0;
        // Queries of every head of the group in one flat loop (fixed order: head, then query).
        for (var n = 0u; n < group * p.q_len; n = n + 1u) {
            let h = g * group + n / p.q_len;
            let i = n % p.q_len;
            let s = ((b * p.heads + h) * p.q_len + i) * p.k_len + j;
            let x = (b * p.q_len + i) * width + h * p.head_dim + d;
            dk = dk + bk_dscores[s] * bk_q[x];
            dv = dv + bk_probs[s] * bk_dout[x];
        }
        bk_dk[k_base + d] = p.scale * dk;
        bk_dv[k_base + d] = dv;
    }
}

@group(0) @binding(1) var<storage, read> db_dscores: array<f32>;
@group(0) @binding(2) var<storage, read_write> db_dbias: array<f32>;

@compute @workgroup_size(WG)
fn attention_backward_bias(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = workgroup_row(wg, nwg) * WG + lid;
    let per_batch = p.heads * p.q_len * p.k_len;
    if t >= per_batch {
        return;
    }
    var acc = db_dbias[t];
    for (var b = 0u; b < p.batch; b = b + 1u) {
        acc = acc + db_dscores[b * per_batch + t];
    }
    db_dbias[t] = acc;
}

// ---------------------------------------------------------------- T5 position bias
// bias[h, i, j] = table[bucket[i * Sk + j], h], table [num_buckets, H].

@group(0) @binding(1) var<storage, read> pb_table: array<f32>;
@group(0) @binding(2) var<storage, read> pb_buckets: array<u32>;
@group(0) @binding(3) var<storage, read_write> pb_bias: array<f32>;

@compute @workgroup_size(WG)
fn position_bias_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = workgroup_row(wg, nwg) * WG + lid;
    let positions = p.q_len * p.k_len;
    if t >= p.heads * positions {
        return;
    }
    let h = t / positions;
    pb_bias[t] = pb_table[pb_buckets[t % positions] * p.heads + h];
}

// dtable[bucket, h] += Σ over the bucket's positions of dbias[h, position]. The host sorts
// positions by bucket (CSR: offsets [num_buckets + 1], positions). One workgroup per
// (bucket, h): invocations stride over the bucket's positions, then a fixed-order tree sum.

@group(0) @binding(1) var<storage, read> pbb_dbias: array<f32>;
@group(0) @binding(2) var<storage, read> pbb_offsets: array<u32>;
@group(0) @binding(3) var<storage, read> pbb_positions: array<u32>;
@group(0) @binding(4) var<storage, read_write> pbb_dtable: array<f32>;

@compute @workgroup_size(WG)
fn position_bias_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // g = bucket * H + h, uniform over the workgroup.
    let g = workgroup_row(wg, nwg);
    if g >= p.buckets * p.heads {
        return;
    }
    let bucket = g / p.heads;
    let h = g % p.heads;
    let plane = h * p.q_len * p.k_len;
    var acc = 0.0;
    for (var n = pbb_offsets[bucket] + lid; n < pbb_offsets[bucket + 1u]; n = n + WG) {
        acc = acc + pbb_dbias[plane + pbb_positions[n]];
    }
    let total = workgroup_reduce(acc, lid, REDUCE_SUM);
    if lid == 0u {
        pbb_dtable[g] = pbb_dtable[g] + total;
    }
}
