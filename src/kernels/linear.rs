//! Dense layers with bf16 weights: q/k/v, o_proj, lm_head. Passes of up to VEC_MAX_TOKENS tokens
//! run `shaders/linear_vec.wgsl` (one workgroup row per token, the preceding RMSNorm fused), larger
//! ones the token tiles of `shaders/linear.wgsl`.

use crate::error::{Error, Result};
use crate::gpu::shader::wgsl_const;
use crate::gpu::{Count, Dispatch, Gpu, Split};

use super::VEC_MAX_TOKENS;

/// The RMSNorm a projection's input goes through first: in = RMSNorm(x) * w.
pub struct NormInput<'a> {
    /// The un-normed input [count, k] (the residual stream).
    pub x: &'a wgpu::Buffer,
    /// [k] f32 gain.
    pub w: &'a wgpu::Buffer,
    pub eps: f32,
}

/// `Params` of shaders/common/linear_params.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    k: u32,
    rows: u32,
    row_start: u32,
    n_out: u32,
    count_which: u32,
    has_bias: u32,
    accumulate: u32,
    eps: f32,
}

impl Params {
    /// The parameters of `l` for its weight buffer `c`.
    fn new(l: &Linear, c: &crate::gpu::Rows) -> Params {
        Params {
            k: l.k,
            rows: c.count,
            row_start: c.start,
            n_out: l.n_out,
            count_which: super::count_index(l.count),
            has_bias: l.bias.is_some() as u32,
            accumulate: l.accumulate as u32,
            eps: l.norm.as_ref().map_or(0.0, |n| n.eps),
        }
    }
}

/// Rows and tokens per workgroup (R, TT in the shader).
const R: u32 = 4;
const TT: u32 = 4;

/// y: [count, n_out] = x: [count, k] · Wᵀ + bias, with W: [n_out, k] bf16 split by rows.
pub struct Linear<'a> {
    pub x: &'a wgpu::Buffer,
    pub w: &'a Split,
    pub bias: Option<&'a wgpu::Buffer>,
    pub y: &'a wgpu::Buffer,
    pub k: u32,
    pub n_out: u32,
    /// Which step count gives the number of input rows.
    pub count: Count,
    /// Add into y (the residual stream) instead of overwriting it.
    pub accumulate: bool,
    /// When set, `x` holds RMSNorm(norm.x) * norm.w for the tiled path (written by a separate
    /// rmsnorm dispatch that the caller runs only for passes above VEC_MAX_TOKENS), and the
    /// vector path reads norm.x and normalizes it itself.
    pub norm: Option<NormInput<'a>>,
}

/// The largest pass that runs the vector kernel for input width k: it reads 8 weights per load,
/// so k must be a multiple of 8 (else 0: every pass is tiled). A fused norm's separate rmsnorm
/// dispatch must run for the larger passes.
pub fn vec_max_tokens(k: u32) -> u32 {
    if k % 8 == 0 { VEC_MAX_TOKENS } else { 0 }
}

/// One dispatch per weight buffer.
pub fn build(gpu: &Gpu, step: &wgpu::Buffer, l: &Linear) -> Result<Vec<Dispatch>> {
    if l.k % 2 != 0 {
        return Err(Error::Unsupported(format!(
            "linear input width {} must be even",
            l.k
        )));
    }
    let covered: u32 = l.w.chunks.iter().map(|c| c.count).sum();
    if covered != l.n_out {
        return Err(Error::Shape {
            tensor: "weight".into(),
            file: "linear".into(),
            expected: vec![l.n_out as usize, l.k as usize],
            got: vec![covered as usize, l.k as usize],
        });
    }
    let vec_max = vec_max_tokens(l.k);
    let mut out = if vec_max > 0 {
        build_vec(gpu, step, l, 1..=vec_max)?
    } else {
        Vec::new()
    };
    let key = super::key(gpu, "linear.wgsl", "main").define_if("VEC8", l.k % 8 == 0);
    let one = key.clone().define_if("ONE_TOKEN", true);
    for c in &l.w.chunks {
        let p = Params::new(l, c);
        // Without a bias the binding still needs a buffer; x is read-only too.
        let bufs = [l.x, &c.buffer, l.bias.unwrap_or(l.x), l.y];
        let params = bytemuck::bytes_of(&p);
        let x = c.count.div_ceil(R);
        if vec_max == 0 {
            out.push(
                Dispatch::new(gpu, &one, step, params, &bufs, x, l.count, 1)?
                    .only_for(l.count, 1..=1),
            );
        }
        out.push(
            Dispatch::new(gpu, &key, step, params, &bufs, x, l.count, TT)?
                .only_for(l.count, (vec_max + 1).max(2)..=u32::MAX),
        );
    }
    Ok(out)
}

/// The matrix-vector kernel alone, for passes whose count is in `counts` (k a multiple of 8).
pub fn build_vec(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    l: &Linear,
    counts: std::ops::RangeInclusive<u32>,
) -> Result<Vec<Dispatch>> {
    if l.k % 8 != 0 {
        return Err(Error::Unsupported(format!(
            "the vector kernel needs an input width that is a multiple of 8, not {}",
            l.k
        )));
    }
    let key =
        super::row_group_key(gpu, "linear_vec.wgsl", "main").define_if("NORM", l.norm.is_some());
    let rows_per_wg = wgsl_const("linear_vec.wgsl", "ROWS")?;
    let mut out = Vec::new();
    for c in &l.w.chunks {
        let p = Params::new(l, c);
        let bias = l.bias.unwrap_or(l.x);
        // The gain binding exists only in the NORM variant.
        let bufs = match &l.norm {
            Some(n) => vec![n.x, &c.buffer, bias, l.y, n.w],
            None => vec![l.x, &c.buffer, bias, l.y],
        };
        // Workgroups stride over row blocks beyond the grid limit (lm_head has 10^5).
        let grid_x = c
            .count
            .div_ceil(rows_per_wg)
            .min(gpu.caps.max_workgroups_per_dim);
        let params = bytemuck::bytes_of(&p);
        out.push(
            Dispatch::new(gpu, &key, step, params, &bufs, grid_x, l.count, 1)?
                .only_for(l.count, counts.clone()),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::testing::*;

    fn reference(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        y0: &[f32],
        t: usize,
        k: usize,
        n: usize,
        acc: bool,
    ) -> Vec<f32> {
        let mut y = vec![0.0; t * n];
        for ti in 0..t {
            for r in 0..n {
                let mut s = 0.0f64;
                for i in 0..k {
                    s += x[ti * k + i] as f64 * w[r * k + i] as f64;
                }
                let v = s as f32 + b[r];
                y[ti * n + r] = if acc { y0[ti * n + r] + v } else { v };
            }
        }
        y
    }

    #[test]
    fn linear_matches_reference() {
        let mut rng = seeded("linear_matches_reference");
        for gpu in gpus() {
            // (tokens, k, n, rows per buffer, accumulate)
            for &(t, k, n, split, acc) in &[
                (1, 64, 8, 8, false),
                (1, 98, 13, 5, true),
                (7, 98, 13, 5, true),
                (5, 256, 37, 37, false),
                (9, 130, 20, 7, true),
            ] {
                let x = random(&mut rng, t * k, 1.0);
                let (w, wb) = random_bf16(&mut rng, n * k, 0.5);
                let b = random(&mut rng, n, 0.5);
                let y0 = random(&mut rng, t * n, 1.0);
                let w_split = split_rows(gpu, &wb, n, k, split);
                let xb = gpu.upload("x", f32_bytes(&x)).unwrap();
                let bb = gpu.upload("b", f32_bytes(&b)).unwrap();
                let yb = gpu.upload("y", f32_bytes(&y0)).unwrap();
                let step = step_buffer(gpu);
                let d = build(
                    gpu,
                    &step,
                    &Linear {
                        x: &xb,
                        w: &w_split,
                        bias: Some(&bb),
                        y: &yb,
                        k: k as u32,
                        n_out: n as u32,
                        count: Count::Tokens,
                        accumulate: acc,
                        norm: None,
                    },
                )
                .unwrap();
                let counts = StepCounts {
                    tokens: t as u32,
                    ..Default::default()
                };
                submit(gpu, &step, &counts, &d);
                let got = gpu.read_f32(&yb, t * n).unwrap();
                let want = reference(&x, &w, &b, &y0, t, k, n, acc);
                let e = nmse(&got, &want);
                assert!(
                    e < 1e-10,
                    "{} t={t} k={k} n={n}: nmse {e}",
                    gpu.caps.subgroups
                );
            }
        }
    }

    #[test]
    fn fused_norm_matches_rmsnorm_then_linear() {
        let mut rng = seeded("linear_norm");
        for gpu in gpus() {
            // (tokens, k, n, rows per buffer): the vector path with the norm fused, and above
            // VEC_MAX_TOKENS the tiled path on the separately normed input.
            for &(t, k, n, split) in &[(1, 64, 24, 24), (3, 256, 37, 16), (12, 64, 9, 9)] {
                let x = random(&mut rng, t * k, 2.0);
                let g = random(&mut rng, k, 1.0);
                let (w, wb) = random_bf16(&mut rng, n * k, 0.5);
                let h: Vec<f32> = x.chunks(k).flat_map(|r| rmsnorm_ref(r, &g, 1e-5)).collect();
                let w_split = split_rows(gpu, &wb, n, k, split);
                let xb = gpu.upload("x", f32_bytes(&x)).unwrap();
                let gb = gpu.upload("g", f32_bytes(&g)).unwrap();
                // The tiled path reads the normed input, as the model's rmsnorm dispatch writes it.
                let hb = gpu.upload("h", f32_bytes(&h)).unwrap();
                let yb = gpu.storage("y", (t * n * 4) as u64).unwrap();
                let step = step_buffer(gpu);
                let d = build(
                    gpu,
                    &step,
                    &Linear {
                        x: &hb,
                        w: &w_split,
                        bias: None,
                        y: &yb,
                        k: k as u32,
                        n_out: n as u32,
                        count: Count::Tokens,
                        accumulate: false,
                        norm: Some(NormInput {
                            x: &xb,
                            w: &gb,
                            eps: 1e-5,
                        }),
                    },
                )
                .unwrap();
                let counts = StepCounts {
                    tokens: t as u32,
                    ..Default::default()
                };
                submit(gpu, &step, &counts, &d);
                let got = gpu.read_f32(&yb, t * n).unwrap();
                let want = reference(&h, &w, &vec![0.0; n], &[], t, k, n, false);
                let e = nmse(&got, &want);
                assert!(e < 1e-10, "t={t} k={k} n={n}: nmse {e}");
            }
        }
    }
}
