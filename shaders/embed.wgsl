// Embedding lookup: x[t, :] = table[tokens[t].id, :] widened from bf16 to f32.
// Bindings: tokens [T], table rows [row_start, row_start + rows) of [V, H] bf16, x [T, H] f32.
// Grid: (1, T). The table may be split over buffers; each part is one dispatch that fills only the
// tokens whose id falls in its rows.
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

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    let id = tokens[t].id;
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
