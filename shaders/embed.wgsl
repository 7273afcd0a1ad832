// Embedding lookup: x[t, :] = table[id, :] widened from bf16 to f32, id = tokens[t].id, or for a
// token fed from the previous pass (fed = r + 1) sampled[r], the id that pass sampled for its
// output row r, still on the GPU: a decode step can be queued before the host has seen it.
// Bindings: tokens [T], table rows [row_start, row_start + rows) of [V, H] bf16, x [T, H] f32,
// sampled [O] u32. Grid: (1, T). The table may be split over buffers; each part is one dispatch
// that fills only the tokens whose id falls in its rows.
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

const WG: u32 = 64u;

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
    let src = (id - p.row_start) * half;
    for (var i = lid; i < half; i += WG) {
        let w = table[src + i];
        x[t * p.hidden + 2u * i] = bf16_lo(w);
        x[t * p.hidden + 2u * i + 1u] = bf16_hi(w);
    }
}
