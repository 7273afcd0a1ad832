// Workgroup sum of NV values per thread; the totals land in red[0..NV]. The including file defines
// `const WG: u32` (a power of two) and `const NV: u32`, takes a `Lanes` parameter in its entry
// point and passes it to reduce_setup first, and calls reduce_sum from uniform control flow
// (reading red[] before any later call overwrites it).
#include "common/lanes.wgsl"

var<private> r_lid: u32;
var<workgroup> red: array<f32, NV * WG>;

#ifdef SUBGROUPS
var<private> r_lane: u32;
var<private> r_sg: u32;

fn reduce_setup(l: Lanes) {
    r_lid = l.lid;
    r_lane = l.lane;
    r_sg = l.size;
}

fn reduce_sum(acc: ptr<function, array<f32, NV>>) {
    // Sum inside each subgroup in registers, then the few subgroup totals through memory.
    let n_sg = (WG + r_sg - 1u) / r_sg;
    let sg_id = r_lid / r_sg;
    for (var j = 0u; j < NV; j++) {
        let s = subgroupAdd((*acc)[j]);
        if r_lane == 0u {
            red[sg_id * NV + j] = s;
        }
    }
    workgroupBarrier();
    if r_lid < NV {
        var total = 0.0;
        for (var s = 0u; s < n_sg; s++) {
            total += red[s * NV + r_lid];
        }
        red[r_lid] = total;
    }
    workgroupBarrier();
}
#else
fn reduce_setup(l: Lanes) {
    r_lid = l.lid;
}

fn reduce_sum(acc: ptr<function, array<f32, NV>>) {
    for (var j = 0u; j < NV; j++) {
        red[r_lid * NV + j] = (*acc)[j];
    }
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if r_lid < stride {
            for (var j = 0u; j < NV; j++) {
                red[r_lid * NV + j] += red[(r_lid + stride) * NV + j];
            }
        }
    }
    workgroupBarrier();
}
#endif
