// Subgroup helpers shared by the kernels for CPU adapters (matmul_subgroup, jacobi_subgroup),
// which run one 8-lane subgroup per workgroup: on llvmpipe a broadcast from a constant lane
// is one register shuffle, where a load whose address differs per lane is a scalar loop.

// Lane c's v for c = 0..7, in every lane.
fn spread(v: vec4<f32>) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(
        subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
        subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u),
    );
}
