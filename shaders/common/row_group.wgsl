// Row groups for matrix-vector kernels: a workgroup of WG lanes is cut into NG groups of GL
// consecutive lanes; a group computes NSUM sums (output rows, or rows times tokens), its lanes
// splitting the inner dimension so that consecutive lanes read consecutive words (coalesced), and
// the group's partial sums are added here. Every lane of a group receives the NSUM totals.
//
// With SUBGROUPS, subgroupAdd sums inside each subgroup and the GL / size subgroup totals of a
// group meet in workgroup memory. The Rust side only picks SUBGROUPS when no subgroup is wider
// than 32 lanes (GL is 32 or more).
// Without, a tree in workgroup memory does it all. Subgroups are taken to be consecutive lanes
// (lane = lid % size), which holds for one-dimensional compute workgroups on the drivers we know.
//
// The including file defines `const WG: u32` (at most 256), `const GL: u32` (a power of two from
// 32 to WG) and `const NSUM: u32`, takes its entry point's lanes as `Lanes` (common/lanes.wgsl),
// and calls group_sums from uniform control flow. Parallelism comes from many short rows of
// work: a lane handles a few 16-byte loads per row, so a batch-1 pass keeps enough bytes in
// flight to fill the memory bus.
#include "common/lanes.wgsl"

const NG: u32 = WG / GL;

var<workgroup> rg_part: array<f32, WG * NSUM>;
var<workgroup> rg_total: array<f32, NG * NSUM>;

#ifdef SUBGROUPS
fn group_sums(acc: ptr<function, array<f32, NSUM>>, l: Lanes) {
    let sg = l.lid / l.size;
    for (var r = 0u; r < NSUM; r++) {
        let s = subgroupAdd((*acc)[r]);
        if l.lane == 0u {
            rg_part[sg * NSUM + r] = s;
        }
    }
    workgroupBarrier();
    // Lane r of each group adds sum r's subgroup totals, then every lane reads the NSUM sums.
    let grp = l.lid / GL;
    let g_lane = l.lid % GL;
    if g_lane < NSUM {
        let parts = max(GL / l.size, 1u);
        var total = 0.0;
        for (var q = 0u; q < parts; q++) {
            total += rg_part[(grp * parts + q) * NSUM + g_lane];
        }
        rg_total[grp * NSUM + g_lane] = total;
    }
    workgroupBarrier();
    for (var r = 0u; r < NSUM; r++) {
        (*acc)[r] = rg_total[grp * NSUM + r];
    }
}

#else
fn group_sums(acc: ptr<function, array<f32, NSUM>>, l: Lanes) {
    for (var r = 0u; r < NSUM; r++) {
        rg_part[l.lid * NSUM + r] = (*acc)[r];
    }
    let g_lane = l.lid % GL;
    for (var stride = GL / 2u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if g_lane < stride {
            for (var r = 0u; r < NSUM; r++) {
                rg_part[l.lid * NSUM + r] += rg_part[(l.lid + stride) * NSUM + r];
            }
        }
    }
    workgroupBarrier();
    let first = l.lid - g_lane;
    for (var r = 0u; r < NSUM; r++) {
        (*acc)[r] = rg_part[first * NSUM + r];
    }
    workgroupBarrier();
}

#endif
