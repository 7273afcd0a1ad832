//! The MoE router (`shaders/router.wgsl`): norms the input (written for the experts) and projects
//! it to the router logits. Large passes pick the top k and softmax their logits in the same
//! dispatch (one workgroup per token); decode passes spread each token's logits over many
//! workgroups as partial sums, which `moe_vec`'s gate_up adds up and ranks itself.

use crate::error::{Error, Result};
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::{Count, Dispatch, Gpu, Grid, Split};

wgsl_mirror! {
    "router.wgsl", Params:
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub(crate) struct Params {
        hidden: u32,
        n_experts: u32,
        top_k: u32,
        eps: f32,
    }
}

/// The router of one layer and what it reads and writes.
pub struct Router<'a> {
    /// [T, H] residual stream.
    pub x: &'a wgpu::Buffer,
    /// \[H] f32 post-attention norm gain.
    pub norm: &'a wgpu::Buffer,
    pub eps: f32,
    /// [E, H] bf16 and \[E] f32.
    pub w: &'a Split,
    pub bias: &'a wgpu::Buffer,
    /// Outputs: h [T, H] = RMSNorm(x) * norm (the experts' input), idx and wts [T, K] (large
    /// passes), part [partial_max_tokens, slices, E] the decode passes' partial logits.
    pub h: &'a wgpu::Buffer,
    pub part: &'a wgpu::Buffer,
    pub idx: &'a wgpu::Buffer,
    pub wts: &'a wgpu::Buffer,
    pub hidden: u32,
    pub n_experts: u32,
    pub top_k: u32,
    /// Passes of up to this many tokens write partial logits (`partial_max_tokens`).
    pub partial_max_tokens: u32,
    /// Passes of up to this many tokens have the router folded into the attention block
    /// (`router_fold`; 0: none): no dispatch here for them.
    pub folded_max_tokens: u32,
}

/// The largest pass that writes partial logits: PARTIAL_MAX_TOKENS, or the largest that the
/// matrix-vector expert kernels take (`vec_max_tokens`: they route from them).
pub fn partial_max_tokens(vec_max_tokens: u32) -> Result<u32> {
    Ok(crate::gpu::shader::wgsl_const("router.wgsl", "PARTIAL_MAX_TOKENS")?.max(vec_max_tokens))
}

/// Slices of the input a decode pass's router logits are split into, for `hidden` inputs.
pub fn slices(hidden: u32) -> Result<u32> {
    let units = crate::gpu::shader::wgsl_const("router.wgsl", "SLICE_UNITS")?;
    Ok((hidden / 8).div_ceil(units).max(1))
}

/// Two dispatches: the partial logits for decode passes (those not folded), the whole router
/// for larger ones.
pub fn build(gpu: &Gpu, step: &wgpu::Buffer, r: &Router) -> Result<Vec<Dispatch>> {
    let max_e = crate::gpu::shader::wgsl_const("router.wgsl", "MAX_E")?;
    if r.top_k > r.n_experts || r.n_experts > max_e || !r.hidden.is_multiple_of(8) {
        return Err(Error::Unsupported(format!(
            "router top-{} of {} experts over {} inputs (at most {max_e} experts, inputs a multiple of 8)",
            r.top_k, r.n_experts, r.hidden
        )));
    }
    let [w] = &r.w.chunks[..] else {
        return Err(Error::Unsupported(
            "the router matrix must fit one buffer".into(),
        ));
    };
    let p = Params {
        hidden: r.hidden,
        n_experts: r.n_experts,
        top_k: r.top_k,
        eps: r.eps,
    };
    let p = bytemuck::bytes_of(&p);
    let main = super::row_group_key(gpu, "router.wgsl", "main");
    let partial = super::row_group_key(gpu, "router.wgsl", "partial").define_if("PARTIAL", true);
    let common = [r.x, r.norm, &w.buffer, r.bias, r.h];
    let mut out = Vec::new();
    if r.folded_max_tokens < r.partial_max_tokens {
        out.push(
            Dispatch::new(
                gpu,
                &partial,
                step,
                p,
                &[&common[..], &[r.part]].concat(),
                Grid::new(slices(r.hidden)?, Count::Tokens, 1),
            )?
            .only_for(
                Count::Tokens,
                r.folded_max_tokens + 1..=r.partial_max_tokens,
            ),
        );
    }
    out.push(
        Dispatch::new(
            gpu,
            &main,
            step,
            p,
            &[&common[..], &[r.idx, r.wts]].concat(),
            Grid::new(1, Count::Tokens, 1),
        )?
        .only_for(Count::Tokens, r.partial_max_tokens + 1..=u32::MAX),
    );
    Ok(out)
}

/// The reference: top-k by value (lower index first on ties), softmax over the k values.
pub fn reference(logits: &[f32], top_k: usize) -> (Vec<u32>, Vec<f32>) {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let chosen = &order[..top_k];
    let m = logits[chosen[0]];
    let e: Vec<f64> = chosen
        .iter()
        .map(|&i| ((logits[i] - m) as f64).exp())
        .collect();
    let s: f64 = e.iter().sum();
    (
        chosen.iter().map(|&i| i as u32).collect(),
        e.iter().map(|v| (v / s) as f32).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::testing::*;

    gpu_test!(router_norms_projects_picks_top_k_and_softmaxes);
    async fn router_norms_projects_picks_top_k_and_softmaxes() {
        let mut rng = seeded("router");
        for gpu in gpus().await {
            // Passes of up to 8 tokens write partial logits (hidden 600 makes three slices, the
            // last one short), larger ones pick.
            for &(t, hd, e, k) in &[
                (1usize, 64usize, 4usize, 2usize),
                (70, 32, 32, 4),
                (3, 96, 128, 4),
                (5, 600, 7, 3),
                (9, 600, 40, 4),
            ] {
                let x = random(&mut rng, t * hd, 2.0);
                let g = random(&mut rng, hd, 1.0);
                let (mut w, mut wb) = random_bf16(&mut rng, e * hd, 0.5);
                let mut bias = random(&mut rng, e, 0.5);
                // Rows of zeros make exact ties: the lower expert index ranks first.
                for ex in (0..e).step_by(3) {
                    w[ex * hd..(ex + 1) * hd].fill(0.0);
                    wb[ex * hd * 2..(ex + 1) * hd * 2].fill(0);
                    bias[ex] = 0.25;
                }
                let split = split_rows(gpu, &wb, e, hd, e);
                let xb = gpu.upload("x", f32_bytes(&x)).unwrap();
                let gb = gpu.upload("g", f32_bytes(&g)).unwrap();
                let bb = gpu.upload("b", f32_bytes(&bias)).unwrap();
                let hb = gpu.storage("h", (t * hd * 4) as u64).unwrap();
                let ib = gpu.storage("i", (t * k * 4) as u64).unwrap();
                let wtb = gpu.storage("w", (t * k * 4) as u64).unwrap();
                let n_slices = slices(hd as u32).unwrap() as usize;
                let pb = gpu.storage("part", (t * n_slices * e * 4) as u64).unwrap();
                let step = step_buffer(gpu);
                let vec_max = 8;
                let r = Router {
                    x: &xb,
                    norm: &gb,
                    eps: 1e-5,
                    w: &split,
                    bias: &bb,
                    h: &hb,
                    part: &pb,
                    idx: &ib,
                    wts: &wtb,
                    hidden: hd as u32,
                    n_experts: e as u32,
                    top_k: k as u32,
                    partial_max_tokens: vec_max,
                    folded_max_tokens: 0,
                };
                let d = build(gpu, &step, &r).unwrap();
                let counts = StepCounts {
                    tokens: t as u32,
                    ..Default::default()
                };
                submit(gpu, &step, &counts, &d);
                let gh = gpu.read_f32(&hb, t * hd).await.unwrap();
                let gi = gpu.read_u32(&ib, t * k).await.unwrap();
                let gw = gpu.read_f32(&wtb, t * k).await.unwrap();
                let gp = gpu.read_f32(&pb, t * n_slices * e).await.unwrap();
                for ti in 0..t {
                    let h = rmsnorm_ref(&x[ti * hd..(ti + 1) * hd], &g, 1e-5);
                    assert!(
                        nmse(&gh[ti * hd..(ti + 1) * hd], &h) < 1e-12,
                        "h of token {ti}"
                    );
                    let logits: Vec<f32> = (0..e)
                        .map(|ex| {
                            let dotp: f64 =
                                (0..hd).map(|i| w[ex * hd + i] as f64 * h[i] as f64).sum();
                            (dotp + bias[ex] as f64) as f32
                        })
                        .collect();
                    if t <= vec_max as usize {
                        let sums: Vec<f32> = (0..e)
                            .map(|ex| {
                                (0..n_slices)
                                    .map(|c| gp[(ti * n_slices + c) * e + ex])
                                    .sum()
                            })
                            .collect();
                        assert!(nmse(&sums, &logits) < 1e-12, "partial logits of token {ti}");
                        continue;
                    }
                    let (ri, rw) = reference(&logits, k);
                    // Ranks may swap only between logits closer than rounding.
                    for (j, (&got, &want)) in gi[ti * k..(ti + 1) * k].iter().zip(&ri).enumerate() {
                        if got != want {
                            let gap = (logits[got as usize] - logits[want as usize]).abs();
                            assert!(gap < 1e-5, "token {ti} pick {j}: {got} vs {want} ({gap})");
                        }
                    }
                    assert!(max_abs(&gw[ti * k..(ti + 1) * k], &rw) < 1e-5, "token {ti}");
                }
            }
        }
    }
}
