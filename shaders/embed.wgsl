// Embedding lookup: x[t, :] = table[id, :] widened from bf16 to f32, id = tokens[t].id, or for a
// token fed from the previous pass (fed = r + 1) sampled[r], the id that pass sampled for its
// output row r, still on the GPU: a decode step can be queued before the host has seen it.
// Bindings: tokens [T], table rows [row_start, row_start + rows) of [V, H] bf16, x [T, H] f32,
// sampled [O] u32. Grid: (ceil(H / (2 WG)), T): a lane per bf16 pair, so that a row's loads go
// out together (one 64-lane workgroup walking the row, a chain of 23 loads a lane, took 14.8 us
// of a batch-1 step on the H200, this 8.2: PERF.md v0.25). The table may be split over buffers;
// each part is one dispatch that fills only the tokens whose id falls in its rows.
#include "common/step.wgsl"
#include "common/bf16.wgsl"

struct Params {
    hidden: u32,
    row_start: u32,
    rows: u32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> tokens: array<TokenInfo>;
@group(0) @binding(3) var<storage, read> table: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
@group(0) @binding(5) var<storage, read> sampled: array<u32>;

// Lanes per workgroup (the Rust side reads this line to size the grid).
const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    let tok = tokens[t];
    var id = tok.id;
    if tok.fed != 0u {
        id = sampled[tok.fed - 1u];
    }
    if id < p.row_start || id >= p.row_start + p.rows {
        return;
    }
    let half = p.hidden / 2u;
    let i = wg.x * WG + lid;
    if i < half {
        let w = table[(id - p.row_start) * half + i];
        x[t * p.hidden + 2u * i] = bf16_lo(w);
        x[t * p.hidden + 2u * i + 1u] = bf16_hi(w);
    }
}
