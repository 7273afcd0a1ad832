//! The MoE router folded into the attention block for decode passes (`shaders/router_fold.wgsl`):
//! the router's logits as two projections that run beside q/k/v and o_proj; moe_vec's FOLDED
//! kernels (one token's gate_up, route_slots for more) take the norm and rank them, so decode has
//! no router dispatch.

use crate::error::{Error, Result};
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::shader::wgsl_const;
use crate::gpu::{Count, Dispatch, Gpu, Grid, ShaderKey, Split};

wgsl_mirror! {
    "router_fold.wgsl", Params:
    #[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
    pub(crate) struct Params {
        hidden: u32,
        width: u32,
        n_experts: u32,
        row_start: u32,
        rows: u32,
        offset: u32,
        k_len: u32,
        has_add: u32,
    }
}

/// Storage buffers the FOLDED gate_up binds (the most of the fold's kernels).
const GATE_UP_BUFFERS: u32 = 11;

/// The most tokens a pass folds the router for (MAX_TOKENS, at most `partial_max_tokens`: the
/// passes beyond route from the router's own partial logits or its whole dispatch).
pub fn max_tokens(partial_max_tokens: u32) -> Result<u32> {
    Ok(wgsl_const("router_fold.wgsl", "MAX_TOKENS")?.min(partial_max_tokens))
}

/// Whether the fold can run on this adapter: the FOLDED gate_up's bindings fit (not on the
/// portable path's eight), and the one-token expert kernels rank at most MAX_E experts.
pub fn fits(gpu: &Gpu, n_experts: u32) -> Result<bool> {
    Ok(gpu.caps.storage_buffers >= GATE_UP_BUFFERS
        && n_experts <= wgsl_const("moe_vec.wgsl", "MAX_E")?)
}

/// One layer's router weights as the fold needs them.
pub struct FoldInputs<'a> {
    /// [E, H] bf16 (one buffer), the post-attention norm gain g \[H] f32.
    pub router: &'a Split,
    pub norm: &'a wgpu::Buffer,
    /// o_proj [H, N] bf16 by rows.
    pub o_proj: &'a Split,
    pub hidden: u32,
    /// N = heads * head_dim.
    pub width: u32,
    pub n_experts: u32,
}

/// Builds a layer's fold buffer ([E, N] M = (W_r g) O, then [E, H] W_r g, f32) on the GPU:
/// submitted, not waited for (later submissions see it done).
pub fn prepare(gpu: &Gpu, f: &FoldInputs) -> Result<wgpu::Buffer> {
    let [wr] = &f.router.chunks[..] else {
        return Err(Error::Unsupported(
            "the router matrix must fit one buffer".into(),
        ));
    };
    if !f.width.is_multiple_of(4) || !f.hidden.is_multiple_of(4) {
        return Err(Error::Unsupported(format!(
            "the folded router needs widths that are multiples of 4, not {} and {}",
            f.width, f.hidden
        )));
    }
    let e = f.n_experts as u64;
    let fold = gpu.storage("router fold", e * (f.width as u64 + f.hidden as u64) * 4)?;
    let key = ShaderKey::new("router_fold.wgsl", "prepare").define_if("PREPARE", true);
    let wg = wgsl_const("router_fold.wgsl", "WG")?;
    for c in &f.o_proj.chunks {
        let p = Params {
            hidden: f.hidden,
            width: f.width,
            n_experts: f.n_experts,
            row_start: c.start,
            rows: c.count,
            ..Default::default()
        };
        let params = gpu.uniform("router fold params", bytemuck::bytes_of(&p));
        let grid = [(f.width / 2).div_ceil(wg), f.n_experts, 1];
        gpu.dispatch_once(&key, &[&params, &wr.buffer, f.norm, &c.buffer, &fold], grid)?;
    }
    Ok(fold)
}

/// A term of the logits and what it is computed from.
#[derive(Clone, Copy)]
pub enum Term<'a> {
    /// z_x = (W_r g) (x + b_o), from the residual x before o_proj and o_proj's bias.
    Residual {
        x: &'a wgpu::Buffer,
        bias: Option<&'a wgpu::Buffer>,
    },
    /// z_a = M a, from the attention output.
    Attention { a: &'a wgpu::Buffer },
}

/// The dispatch that writes one term into `z` [T, E] for the passes of up to `max_tokens`
/// tokens, from the layer's `fold` buffer (`prepare`).
pub fn project(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    f: &FoldInputs,
    fold: &wgpu::Buffer,
    term: Term,
    z: &wgpu::Buffer,
    max_tokens: u32,
) -> Result<Dispatch> {
    let (offset, k_len, v, add) = match term {
        Term::Attention { a } => (0, f.width, a, None),
        Term::Residual { x, bias } => (f.n_experts * f.width, f.hidden, x, bias),
    };
    let p = Params {
        hidden: f.hidden,
        width: f.width,
        n_experts: f.n_experts,
        offset,
        k_len,
        has_add: add.is_some() as u32,
        ..Default::default()
    };
    let key = super::key(gpu, "router_fold.wgsl", "project");
    let experts = wgsl_const("router_fold.wgsl", "PROJECT_EXPERTS")?;
    let tokens = wgsl_const("router_fold.wgsl", "PROJECT_TOKENS")?;
    let d = Dispatch::new(
        gpu,
        &key,
        step,
        bytemuck::bytes_of(&p),
        &[v, fold, add.unwrap_or(v), z],
        Grid::new(f.n_experts.div_ceil(experts), Count::Tokens, tokens),
    )?;
    Ok(d.only_for(Count::Tokens, 1..=max_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::testing::*;

    // The two terms add up to the router's logits before the norm's scale: W_r (g x') for each
    // token's residual x' = x + O a + b_o that o_proj leaves, computed directly in f64.
    gpu_test!(fold_gives_router_logits);
    async fn fold_gives_router_logits() {
        let mut rng = seeded("router_fold");
        for gpu in gpus().await {
            // (tokens, hidden, width, experts, o_proj rows per buffer): blocks of experts and of
            // tokens whole and cut short.
            let shapes: [(usize, usize, usize, usize, usize); 4] = [
                (1, 64, 96, 5, 64),
                (3, 96, 64, 32, 40),
                (13, 64, 96, 5, 64),
                (17, 96, 64, 32, 40),
            ];
            for &(t, h, n, e, per) in &shapes {
                let (wr, wr_bytes) = random_bf16(&mut rng, e * h, 1.0);
                let (o, o_bytes) = random_bf16(&mut rng, h * n, 1.0);
                let g = random(&mut rng, h, 2.0);
                let bo = random(&mut rng, h, 1.0);
                let x = random(&mut rng, t * h, 3.0);
                let a = random(&mut rng, t * n, 1.0);
                let router = split_rows(gpu, &wr_bytes, e, h, e);
                let o_proj = split_rows(gpu, &o_bytes, h, n, per);
                let norm = gpu.upload("g", f32_bytes(&g)).unwrap();
                let f = FoldInputs {
                    router: &router,
                    norm: &norm,
                    o_proj: &o_proj,
                    hidden: h as u32,
                    width: n as u32,
                    n_experts: e as u32,
                };
                let fold = prepare(gpu, &f).unwrap();
                let up = |name, v: &[f32]| gpu.upload(name, f32_bytes(v)).unwrap();
                let (xb, ab, bb) = (up("x", &x), up("a", &a), up("b_o", &bo));
                let zx = gpu.storage("z_x", (t * e * 4) as u64).unwrap();
                let za = gpu.storage("z_a", (t * e * 4) as u64).unwrap();
                let step = step_buffer(gpu);
                let resid = Term::Residual {
                    x: &xb,
                    bias: Some(&bb),
                };
                let attn = Term::Attention { a: &ab };
                let ds = [
                    project(gpu, &step, &f, &fold, resid, &zx, t as u32).unwrap(),
                    project(gpu, &step, &f, &fold, attn, &za, t as u32).unwrap(),
                ];
                let counts = StepCounts {
                    tokens: t as u32,
                    ..Default::default()
                };
                submit(gpu, &step, &counts, &ds);
                let got_x = gpu.read_f32(&zx, t * e).await.unwrap();
                let got_a = gpu.read_f32(&za, t * e).await.unwrap();
                let got: Vec<f32> = got_x.iter().zip(&got_a).map(|(p, q)| p + q).collect();
                let mut want = Vec::new();
                for ti in 0..t {
                    let resid: Vec<f64> = (0..h)
                        .map(|i| {
                            let oa: f64 = (0..n)
                                .map(|j| o[i * n + j] as f64 * a[ti * n + j] as f64)
                                .sum();
                            x[ti * h + i] as f64 + oa + bo[i] as f64
                        })
                        .collect();
                    want.extend((0..e).map(|r| {
                        (0..h)
                            .map(|i| wr[r * h + i] as f64 * g[i] as f64 * resid[i])
                            .sum::<f64>() as f32
                    }));
                }
                let e2 = nmse(&got, &want);
                assert!(e2 < 1e-11, "t={t} h={h} n={n} e={e}: nmse {e2}");
            }
        }
    }
}
