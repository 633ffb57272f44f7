// Embedding lookup and its deterministic backward.
//
// embedding_gather:   out[i, c] = table[ids[i], c]; an id >= vocab reads nothing and gives
//                     zeros (the GPU never reads out of bounds; hosts check ids they hold).
// embedding_backward: dtable[ids_u, c] += Σ dy[pos, c] over the positions of unique id u
//                     in segment `seg` of its position list (host-built CSR). One
//                     invocation per (unique id, column): a fixed summation order and no
//                     two invocations writing the same element, so no atomics.
// Index: flat over x and y (grid_1d).

struct Params {
    // gather: n ids; backward: unique ids
    n: u32,
    cols: u32,
    // gather: vocab; backward: first position of the segment (segment index x SEG)
    a: u32,
    // backward: positions per segment
    seg: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + lid;
}

@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn embedding_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= p.n * p.cols {
        return;
    }
    let id = ids[i / p.cols];
    var v = 0.0;
    if id < p.a {
        v = table[id * p.cols + i % p.cols];
    }
    out[i] = v;
}

@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> unique_ids: array<u32>;
// offsets[u]..offsets[u + 1] index `positions` for unique id u
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read_write> dtable: array<f32>;

@compute @workgroup_size(WG)
fn embedding_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if i >= p.n * p.cols {
        return;
    }
    let u = i / p.cols;
    let c = i % p.cols;
    let start = offsets[u] + p.a;
    let end = min(offsets[u + 1u], start + p.seg);
    if start >= end {
        return;
    }
    var acc = 0.0;
    for (var k = start; k < end; k++) {
        acc += dy[positions[k] * p.cols + c];
    }
    let dst = unique_ids[u] * p.cols + c;
    dtable[dst] += acc;
}
