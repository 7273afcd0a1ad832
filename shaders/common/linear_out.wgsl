// The store both dense-layer kernels end with: y[t, col] = v + bias[col] (when the layer has a
// bias), added into y instead when the layer accumulates (the residual stream). The including
// file binds `p` (with n_out, has_bias, accumulate), `bias` and `y`.
fn store_out(t: u32, col: u32, v: f32) {
    var out = v;
    if p.has_bias != 0u {
        out += bias[col];
    }
    let o = t * p.n_out + col;
    if p.accumulate != 0u {
        y[o] += out;
    } else {
        y[o] = out;
    }
}
