// An invocation's place in its workgroup, and with SUBGROUPS in its subgroup: the entry-point
// parameter of every kernel that reduces across lanes (reduce.wgsl, row_group.wgsl, ...).
#ifdef SUBGROUPS
struct Lanes {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
}
#else
struct Lanes {
    @builtin(local_invocation_index) lid: u32,
}
#endif
