//! Attention with sinks, sliding window and GQA over the KV cache (`shaders/attention.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::{Count, Dispatch, Gpu, ShaderKey};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub n_heads: u32,
    pub n_kv: u32,
    pub head_dim: u32,
    pub cap: u32,
    /// Keys visible to a query: 0 for all earlier positions, else the sliding window.
    pub window: u32,
    pub scale: f32,
    pub _pad: [u32; 2],
}

/// Largest head dim the kernel's shared q buffer holds (MAX_D in the shader).
pub const MAX_HEAD_DIM: u32 = 256;

/// out: [T, NH * D] from q in qkv: [T, (NH + 2 NKV) * D] and the caches [seqs, cap, NKV, D].
pub struct Attention<'a> {
    pub tokens: &'a wgpu::Buffer,
    pub qkv: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub sinks: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
}

/// `kv_f16` reads a cache stored in f16.
pub(crate) fn build(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    a: &Attention,
    p: Params,
    kv_f16: bool,
) -> Result<Dispatch> {
    if p.head_dim > MAX_HEAD_DIM || p.head_dim % 4 != 0 || p.n_kv == 0 || p.n_heads % p.n_kv != 0 {
        return Err(Error::Unsupported(format!(
            "attention with {} heads, {} kv heads, head dim {}",
            p.n_heads, p.n_kv, p.head_dim
        )));
    }
    let key = ShaderKey::new("attention.wgsl", "main").define_if("KV_F16", kv_f16);
    Dispatch::new(
        gpu,
        &key,
        step,
        bytemuck::bytes_of(&p),
        &[a.tokens, a.qkv, a.k_cache, a.v_cache, a.sinks, a.out],
        p.n_heads,
        Count::Tokens,
        1,
    )
}

#[cfg(test)]
mod tests {
    //! RoPE, the cache write and attention together against a plain reference, over two steps
    //! (a prefill, then decode tokens) and two sequences, with a window smaller than the context.
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::rope::{self, Rope};
    use crate::kernels::testing::*;
    use crate::model::inputs::TokenInfo;

    fn rotate(v: &mut [f32], cs: &[[f32; 2]]) {
        let half = v.len() / 2;
        for i in 0..half {
            let (x1, x2) = (v[i], v[i + half]);
            v[i] = x1 * cs[i][0] - x2 * cs[i][1];
            v[i + half] = x2 * cs[i][0] + x1 * cs[i][1];
        }
    }

    #[test]
    fn attention_matches_reference() {
        let mut rng = seeded("attention");
        for (gpu, kv_f16) in gpus()
            .iter()
            .flat_map(|g| [(g, false), (g, true)])
            .filter(|(g, f)| !f || g.caps.f16)
        {
            // With an f16 cache the reference rounds K and V to f16 too, so the tolerance stays tight.
            let kv_round = |v: f32| {
                if kv_f16 {
                    half::f16::from_f32(v).to_f32()
                } else {
                    v
                }
            };
            let kv_bytes = if kv_f16 { 2 } else { 4 };
            for &(nh, nkv, d, window, cap) in &[
                (4u32, 2u32, 64u32, 0u32, 40u32),
                (6, 3, 32, 5, 5 + 13 - 1),
                (2, 1, 100, 70, 90),
            ] {
                let (nh_, nkv_, d_) = (nh as usize, nkv as usize, d as usize);
                let stride = (nh_ + 2 * nkv_) * d_;
                let max_pos = 40usize;
                let table: Vec<[f32; 2]> = (0..max_pos * d_ / 2)
                    .map(|_| {
                        let a = rng.symmetric(3.0);
                        [a.cos() * 1.3, a.sin() * 1.3]
                    })
                    .collect();
                let seqs = 2usize;
                let sinks = random(&mut rng, nh_, 1.0);
                let tb = gpu.upload("table", bytemuck::cast_slice(&table)).unwrap();
                let sb = gpu.upload("sinks", f32_bytes(&sinks)).unwrap();
                let kc = gpu
                    .storage("k", (seqs * cap as usize * nkv_ * d_ * kv_bytes) as u64)
                    .unwrap();
                let vc = gpu
                    .storage("v", (seqs * cap as usize * nkv_ * d_ * kv_bytes) as u64)
                    .unwrap();
                // Reference cache: every (seq, pos) -> rotated k, v per kv head.
                let mut ref_k = vec![vec![Vec::<f32>::new(); max_pos]; seqs];
                let mut ref_v = vec![vec![Vec::<f32>::new(); max_pos]; seqs];
                let mut next_pos = [0u32; 2];
                // Step 1: 13 tokens of seq 0 and 4 of seq 1; step 2: one token each.
                for plan in [vec![(0usize, 13usize), (1, 4)], vec![(1, 1), (0, 1)]] {
                    let mut toks = Vec::new();
                    for &(s, n) in &plan {
                        for _ in 0..n {
                            toks.push(TokenInfo {
                                id: 0,
                                pos: next_pos[s],
                                seq: s as u32,
                                _pad: 0,
                            });
                            next_pos[s] += 1;
                        }
                    }
                    let t = toks.len();
                    let qkv = random(&mut rng, t * stride, 1.0);
                    let tokb = gpu.upload("tok", bytemuck::cast_slice(&toks)).unwrap();
                    let qb = gpu.upload("qkv", f32_bytes(&qkv)).unwrap();
                    let ob = gpu.storage("out", (t * nh_ * d_ * 4) as u64).unwrap();
                    let step = step_buffer(gpu);
                    let r = rope::build(
                        gpu,
                        &step,
                        &Rope {
                            tokens: &tokb,
                            table: &tb,
                            qkv: &qb,
                            k_cache: &kc,
                            v_cache: &vc,
                        },
                        rope::Params {
                            n_heads: nh,
                            n_kv: nkv,
                            head_dim: d,
                            cap,
                        },
                        kv_f16,
                    )
                    .unwrap();
                    let scale = 1.0 / (d as f32).sqrt();
                    let a = build(
                        gpu,
                        &step,
                        &Attention {
                            tokens: &tokb,
                            qkv: &qb,
                            k_cache: &kc,
                            v_cache: &vc,
                            sinks: &sb,
                            out: &ob,
                        },
                        Params {
                            n_heads: nh,
                            n_kv: nkv,
                            head_dim: d,
                            cap,
                            window,
                            scale,
                            _pad: [0; 2],
                        },
                        kv_f16,
                    )
                    .unwrap();
                    submit(
                        gpu,
                        &step,
                        &StepCounts {
                            tokens: t as u32,
                            ..Default::default()
                        },
                        &[r, a],
                    );
                    let got = gpu.read_f32(&ob, t * nh_ * d_).unwrap();

                    // Reference: rotate, store, then attend.
                    let mut qs = Vec::new();
                    for (ti, tok) in toks.iter().enumerate() {
                        let cs = &table[tok.pos as usize * d_ / 2..(tok.pos as usize + 1) * d_ / 2];
                        let row = &qkv[ti * stride..(ti + 1) * stride];
                        let mut q = row[..nh_ * d_].to_vec();
                        for h in 0..nh_ {
                            rotate(&mut q[h * d_..(h + 1) * d_], cs);
                        }
                        let mut k = row[nh_ * d_..(nh_ + nkv_) * d_].to_vec();
                        for h in 0..nkv_ {
                            rotate(&mut k[h * d_..(h + 1) * d_], cs);
                        }
                        ref_k[tok.seq as usize][tok.pos as usize] =
                            k.into_iter().map(kv_round).collect();
                        ref_v[tok.seq as usize][tok.pos as usize] = row[(nh_ + nkv_) * d_..]
                            .iter()
                            .map(|v| kv_round(*v))
                            .collect();
                        qs.push(q);
                    }
                    let mut want = vec![0.0f32; t * nh_ * d_];
                    for (ti, tok) in toks.iter().enumerate() {
                        let (s, p) = (tok.seq as usize, tok.pos as usize);
                        let start = if window > 0 {
                            (p + 1).saturating_sub(window as usize)
                        } else {
                            0
                        };
                        for h in 0..nh_ {
                            let kvh = h / (nh_ / nkv_);
                            let q = &qs[ti][h * d_..(h + 1) * d_];
                            let scores: Vec<f64> = (start..=p)
                                .map(|j| {
                                    let k = &ref_k[s][j][kvh * d_..(kvh + 1) * d_];
                                    q.iter()
                                        .zip(k)
                                        .map(|(a, b)| *a as f64 * *b as f64)
                                        .sum::<f64>()
                                        * scale as f64
                                })
                                .collect();
                            let m = scores.iter().cloned().fold(sinks[h] as f64, f64::max);
                            let denom: f64 = scores.iter().map(|x| (x - m).exp()).sum::<f64>()
                                + (sinks[h] as f64 - m).exp();
                            for i in 0..d_ {
                                let mut o = 0.0;
                                for (jj, j) in (start..=p).enumerate() {
                                    o += (scores[jj] - m).exp() / denom
                                        * ref_v[s][j][kvh * d_ + i] as f64;
                                }
                                want[ti * nh_ * d_ + h * d_ + i] = o as f32;
                            }
                        }
                    }
                    let e = nmse(&got, &want);
                    assert!(
                        e < 1e-11,
                        "nh={nh} d={d} window={window} kv_f16={kv_f16}: nmse {e}"
                    );
                }
            }
        }
    }
}
