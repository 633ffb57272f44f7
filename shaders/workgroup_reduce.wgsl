
// ---- workgroup_reduce.wgsl: appended to every row-wise kernel family (reduce, softmax,
// norm, loss, attention) by `row_shader!`, after the family's own code so that naga's line
// numbers in the family file stay right. The family declares `const WG: u32`, the
// invocations of its workgroups (a power of two).
//
// One workgroup of WG invocations owns a row and strides over its columns; the partial
// values of the invocations are then combined by a tree in workgroup memory. The tree
// order is fixed, so results are deterministic.

const REDUCE_SUM: u32 = 0u;
const REDUCE_MAX: u32 = 1u;

var<workgroup> wg_scratch: array<f32, WG>;

// Combines one value per invocation; every invocation receives the result. Must be called
// from workgroup-uniform control flow.
fn workgroup_reduce(v: f32, lid: u32, op: u32) -> f32 {
    wg_scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            let a = wg_scratch[lid];
            let b = wg_scratch[lid + s];
            wg_scratch[lid] = select(a + b, max(a, b), op == REDUCE_MAX);
        }
        workgroupBarrier();
    }
    let r = wg_scratch[0];
    // The scratch is reused by the next reduction of the same invocation.
    workgroupBarrier();
    return r;
}

// Row of a workgroup in a grid folded by `grid_1d`.
fn workgroup_row(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// About the lowest finite f32: the identity of max without producing inf - inf = NaN.
const NEG_INF: f32 = -3.402823e38;
