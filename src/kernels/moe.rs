//! MoE expert projections with MXFP4 weights and the clamped SwiGLU (`shaders/moe.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::{Count, Dispatch, Gpu, ShaderKey};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    hidden: u32,
    inter: u32,
    top_k: u32,
    e_start: u32,
    e_count: u32,
    limit: f32,
    alpha: f32,
    _pad: u32,
}

/// Rows per workgroup (R in the shader).
const R: u32 = 8;

/// The packed weights of experts [start, start + count) of one projection.
pub struct ExpertChunk {
    pub start: u32,
    pub count: u32,
    /// [count, rows, cols/32, 16] u8.
    pub blocks: wgpu::Buffer,
    /// [count, rows, cols/32] u8.
    pub scales: wgpu::Buffer,
}

/// Shapes and constants of one MoE layer.
#[derive(Clone, Copy)]
pub struct MoeShape {
    pub hidden: u32,
    pub inter: u32,
    pub top_k: u32,
    pub limit: f32,
    pub alpha: f32,
}

fn params(s: &MoeShape, c: &ExpertChunk) -> Params {
    Params {
        hidden: s.hidden,
        inter: s.inter,
        top_k: s.top_k,
        e_start: c.start,
        e_count: c.count,
        limit: s.limit,
        alpha: s.alpha,
        _pad: 0,
    }
}

fn check(s: &MoeShape) -> Result<()> {
    if s.hidden % 32 != 0 || s.inter % 32 != 0 {
        return Err(Error::Unsupported(format!(
            "MXFP4 experts need hidden ({}) and intermediate ({}) sizes that are multiples of 32",
            s.hidden, s.inter
        )));
    }
    Ok(())
}

/// One dispatch per expert chunk of `key`, binding `buffers(chunk)`.
fn per_chunk<'a>(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    s: &MoeShape,
    key: ShaderKey,
    chunks: &'a [ExpertChunk],
    buffers: impl Fn(&'a ExpertChunk) -> Vec<&'a wgpu::Buffer>,
    x: u32,
    count: Count,
) -> Result<Vec<Dispatch>> {
    check(s)?;
    chunks
        .iter()
        .map(|c| {
            Dispatch::new(
                gpu,
                &key,
                step,
                bytemuck::bytes_of(&params(s, c)),
                &buffers(c),
                x,
                count,
                1,
            )
        })
        .collect()
}

/// act: [T*K, I] = SwiGLU(gate_up[idx](h) + bias) for h: [T, H], idx: [T*K], bias: [E, 2I].
#[allow(clippy::too_many_arguments)]
pub fn gate_up<'a>(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    s: &MoeShape,
    h: &'a wgpu::Buffer,
    idx: &'a wgpu::Buffer,
    chunks: &'a [ExpertChunk],
    bias: &'a wgpu::Buffer,
    act: &'a wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let key = super::key(gpu, "moe.wgsl", "gate_up").define_if("GATE_UP", true);
    let buffers = |c: &'a ExpertChunk| vec![h, idx, &c.blocks, &c.scales, bias, act];
    per_chunk(
        gpu,
        step,
        s,
        key,
        chunks,
        buffers,
        s.inter.div_ceil(R / 2),
        Count::Slots,
    )
}

/// x: [T, H] += sum_k wts[t, k] * (down[idx](act) + bias) for act: [T*K, I], bias: [E, H].
#[allow(clippy::too_many_arguments)]
pub fn down<'a>(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    s: &MoeShape,
    act: &'a wgpu::Buffer,
    idx: &'a wgpu::Buffer,
    wts: &'a wgpu::Buffer,
    chunks: &'a [ExpertChunk],
    bias: &'a wgpu::Buffer,
    x: &'a wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let key = super::key(gpu, "moe.wgsl", "down").define_if("DOWN", true);
    let buffers = |c: &'a ExpertChunk| vec![act, idx, wts, &c.blocks, &c.scales, bias, x];
    per_chunk(
        gpu,
        step,
        s,
        key,
        chunks,
        buffers,
        s.hidden.div_ceil(R),
        Count::Tokens,
    )
}

/// MXFP4 dequantization on the host: one row of `cols` values from its blocks and scales.
pub fn dequant_row(blocks: &[u8], scales: &[u8]) -> Vec<f32> {
    const LUT: [f32; 16] = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];
    let mut out = Vec::with_capacity(scales.len() * 32);
    for (b, &s) in scales.iter().enumerate() {
        let scale = 2f32.powi(s as i32 - 127);
        for &byte in &blocks[b * 16..(b + 1) * 16] {
            out.push(LUT[(byte & 15) as usize] * scale);
            out.push(LUT[(byte >> 4) as usize] * scale);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::testing::*;
    use crate::rng::Rng;

    fn random_mxfp4(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<u8>, Vec<u8>) {
        let blocks = (0..rows * cols / 2).map(|_| rng.below(256) as u8).collect();
        let scales = (0..rows * cols / 32)
            .map(|_| 120 + rng.below(6) as u8)
            .collect();
        (blocks, scales)
    }

    #[test]
    fn moe_matches_reference() {
        let mut rng = seeded("moe");
        for gpu in gpus() {
            // (tokens, hidden, inter, experts, top_k, experts per buffer)
            for &(t, hd, it, e, k, per) in &[
                (1usize, 64usize, 32usize, 4usize, 2usize, 4usize),
                (7, 96, 64, 6, 3, 4),
                (3, 32, 96, 5, 1, 2),
            ] {
                let s = MoeShape {
                    hidden: hd as u32,
                    inter: it as u32,
                    top_k: k as u32,
                    limit: 7.0,
                    alpha: 1.702,
                };
                let (gu_b, gu_s) = random_mxfp4(&mut rng, e * 2 * it, hd);
                let (dn_b, dn_s) = random_mxfp4(&mut rng, e * hd, it);
                let gu_bias = random(&mut rng, e * 2 * it, 0.5);
                let dn_bias = random(&mut rng, e * hd, 0.5);
                let h = random(&mut rng, t * hd, 1.0);
                let x0 = random(&mut rng, t * hd, 1.0);
                let mut idx: Vec<u32> = Vec::new();
                let mut wts = Vec::new();
                for _ in 0..t {
                    let mut picked: Vec<u32> = Vec::new();
                    while picked.len() < k {
                        let c = rng.below(e as u64) as u32;
                        if !picked.contains(&c) {
                            picked.push(c);
                        }
                    }
                    idx.extend(&picked);
                    let w = random(&mut rng, k, 1.0);
                    wts.extend(w.iter().map(|v| v.abs()));
                }
                let chunk = |b: &[u8], sc: &[u8], rows: usize, cols: usize| -> Vec<ExpertChunk> {
                    (0..e)
                        .step_by(per)
                        .map(|st| {
                            let c = per.min(e - st);
                            let (bb, sb) = (rows * cols / 2, rows * cols / 32);
                            ExpertChunk {
                                start: st as u32,
                                count: c as u32,
                                blocks: gpu.upload("b", &b[st * bb..(st + c) * bb]).unwrap(),
                                scales: gpu.upload("s", &sc[st * sb..(st + c) * sb]).unwrap(),
                            }
                        })
                        .collect()
                };
                let gu = chunk(&gu_b, &gu_s, 2 * it, hd);
                let dn = chunk(&dn_b, &dn_s, hd, it);
                let hb = gpu.upload("h", f32_bytes(&h)).unwrap();
                let xb = gpu.upload("x", f32_bytes(&x0)).unwrap();
                let ib = gpu.upload("idx", bytemuck::cast_slice(&idx)).unwrap();
                let wb = gpu.upload("wts", f32_bytes(&wts)).unwrap();
                let gbb = gpu.upload("gub", f32_bytes(&gu_bias)).unwrap();
                let dbb = gpu.upload("dnb", f32_bytes(&dn_bias)).unwrap();
                let ab = gpu.storage("act", (t * k * it * 4) as u64).unwrap();
                let step = step_buffer(gpu);
                let mut d = gate_up(gpu, &step, &s, &hb, &ib, &gu, &gbb, &ab).unwrap();
                d.extend(down(gpu, &step, &s, &ab, &ib, &wb, &dn, &dbb, &xb).unwrap());
                let c = StepCounts {
                    tokens: t as u32,
                    slots: (t * k) as u32,
                    ..Default::default()
                };
                submit(gpu, &step, &c, &d);
                let got = gpu.read_f32(&xb, t * hd).unwrap();

                let mut want = x0.clone();
                for ti in 0..t {
                    for j in 0..k {
                        let ex = idx[ti * k + j] as usize;
                        let mut act = vec![0.0f64; it];
                        for i in 0..it {
                            let mut g = [0.0f64; 2];
                            for (q, gq) in g.iter_mut().enumerate() {
                                let row = ex * 2 * it + 2 * i + q;
                                let w = dequant_row(
                                    &gu_b[row * hd / 2..(row + 1) * hd / 2],
                                    &gu_s[row * hd / 32..(row + 1) * hd / 32],
                                );
                                *gq = (0..hd)
                                    .map(|c| w[c] as f64 * h[ti * hd + c] as f64)
                                    .sum::<f64>()
                                    + gu_bias[ex * 2 * it + 2 * i + q] as f64;
                            }
                            let gate = g[0].min(7.0);
                            let up = g[1].clamp(-7.0, 7.0);
                            act[i] = gate / (1.0 + (-1.702 * gate).exp()) * (up + 1.0);
                        }
                        for n in 0..hd {
                            let row = ex * hd + n;
                            let w = dequant_row(
                                &dn_b[row * it / 2..(row + 1) * it / 2],
                                &dn_s[row * it / 32..(row + 1) * it / 32],
                            );
                            let y = (0..it).map(|c| w[c] as f64 * act[c]).sum::<f64>()
                                + dn_bias[row] as f64;
                            want[ti * hd + n] += (wts[ti * k + j] as f64 * y) as f32;
                        }
                    }
                }
                let e2 = nmse(&got, &want);
                assert!(e2 < 1e-11, "t={t} h={hd} i={it}: nmse {e2}");
            }
        }
    }
}
