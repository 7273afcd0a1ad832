// An invocation's place in its workgroup, and with SUBGROUPS in its subgroup: the entry-point
// parameter of every kernel that reduces across lanes (reduce.wgsl, row_group.wgsl, ...).
#ifdef SUBGROUPS
struct Lanes {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
}

// The sum of v over the n (a power of two) neighbouring lanes of an aligned run of the subgroup,
// in each of them, by shuffles: ((v0 + v1) + (v2 + v3)) + ... in the same order whatever the lane.
fn neighbour_sum(v: f32, n: u32) -> f32 {
    var s = v;
    for (var m = 1u; m < n; m <<= 1u) {
        s += subgroupShuffleXor(s, m);
    }
    return s;
}

// The max of v over the n (a power of two) neighbouring lanes of an aligned run of the subgroup,
// in each of them, by shuffles.
fn neighbour_max(v: f32, n: u32) -> f32 {
    var s = v;
    for (var m = 1u; m < n; m <<= 1u) {
        s = max(s, subgroupShuffleXor(s, m));
    }
    return s;
}
#else
struct Lanes {
    @builtin(local_invocation_index) lid: u32,
}
#endif
