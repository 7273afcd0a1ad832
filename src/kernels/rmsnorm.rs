//! RMSNorm (`shaders/rmsnorm.wgsl`), optionally gathering the rows whose logits are wanted, and
//! optionally first adding the last MoE block's slot outputs into its input (`Combine`).

use crate::error::Result;
use crate::gpu::{Count, Dispatch, Gpu, Grid};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    eps: f32,
    count_which: u32,
    gather: u32,
    top_k: u32,
    _pad: [u32; 3],
}

/// The MoE block's per-slot outputs that the norm adds into x (and stores there) before norming
/// it: `y` [rows of x * top_k, n], each row of x taking its top_k slots in order, as
/// `moe::build`'s combine step would.
pub struct Combine<'a> {
    pub y: &'a wgpu::Buffer,
    pub top_k: u32,
}

/// out: [count, n] = RMSNorm(x[src]) * w, src = rows[r] when `rows` is given, else r.
pub struct RmsNorm<'a> {
    pub x: &'a wgpu::Buffer,
    pub w: &'a wgpu::Buffer,
    pub rows: Option<&'a wgpu::Buffer>,
    pub out: &'a wgpu::Buffer,
    pub n: u32,
    pub eps: f32,
    pub count: Count,
    pub combine: Option<Combine<'a>>,
}

pub fn build(gpu: &Gpu, step: &wgpu::Buffer, a: &RmsNorm) -> Result<Dispatch> {
    let p = Params {
        n: a.n,
        eps: a.eps,
        count_which: super::count_index(a.count),
        gather: a.rows.is_some() as u32,
        top_k: a.combine.as_ref().map_or(0, |c| c.top_k),
        _pad: [0; 3],
    };
    let key = super::key(gpu, "rmsnorm.wgsl", "main").define_if("COMBINE", a.combine.is_some());
    // Without gathering the index binding is never read; the weight stands in for it.
    let rows = a.rows.unwrap_or(a.w);
    let mut bufs = vec![a.x, a.w, rows, a.out];
    if let Some(c) = &a.combine {
        bufs.push(c.y);
    }
    Dispatch::new(
        gpu,
        &key,
        step,
        bytemuck::bytes_of(&p),
        &bufs,
        Grid::new(1, a.count, 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::testing::*;

    gpu_test!(rmsnorm_matches_reference);
    async fn rmsnorm_matches_reference() {
        let mut rng = seeded("rmsnorm");
        let top_k = 3;
        for gpu in gpus().await {
            for &(t, n, gather) in &[(1usize, 64usize, false), (5, 100, false), (6, 2880, true)] {
                for combine in [false, true] {
                    let x = random(&mut rng, t * n, 2.0);
                    let y = random(&mut rng, t * top_k * n, 1.0);
                    let w = random(&mut rng, n, 1.0);
                    let rows: Vec<u32> = (0..t as u32).rev().collect();
                    let xb = gpu.upload("x", f32_bytes(&x)).unwrap();
                    let yb = gpu.upload("y", f32_bytes(&y)).unwrap();
                    let wb = gpu.upload("w", f32_bytes(&w)).unwrap();
                    let rb = gpu.upload("rows", bytemuck::cast_slice(&rows)).unwrap();
                    let ob = gpu.storage("out", (t * n * 4) as u64).unwrap();
                    let step = step_buffer(gpu);
                    let count = if gather {
                        Count::Outputs
                    } else {
                        Count::Tokens
                    };
                    let d = build(
                        gpu,
                        &step,
                        &RmsNorm {
                            x: &xb,
                            w: &wb,
                            rows: gather.then_some(&rb),
                            out: &ob,
                            n: n as u32,
                            eps: 1e-5,
                            count,
                            combine: combine.then_some(Combine {
                                y: &yb,
                                top_k: top_k as u32,
                            }),
                        },
                    )
                    .unwrap();
                    let c = StepCounts {
                        tokens: t as u32,
                        outputs: t as u32,
                        ..Default::default()
                    };
                    submit(gpu, &step, &c, &[d]);
                    let got = gpu.read_f32(&ob, t * n).await.unwrap();
                    // With COMBINE, x plus each row's slots, added in slot order as moe.wgsl's
                    // combine adds them.
                    let mut x_want = x.clone();
                    if combine {
                        for (r, row) in x_want.chunks_mut(n).enumerate() {
                            for (i, v) in row.iter_mut().enumerate() {
                                let mut sum = 0.0f32;
                                for j in 0..top_k {
                                    sum += y[(r * top_k + j) * n + i];
                                }
                                *v += sum;
                            }
                        }
                    }
                    let mut want = vec![0.0; t * n];
                    for r in 0..t {
                        let src = if gather { rows[r] as usize } else { r };
                        let row = rmsnorm_ref(&x_want[src * n..(src + 1) * n], &w, 1e-5);
                        want[r * n..(r + 1) * n].copy_from_slice(&row);
                    }
                    let e = nmse(&got, &want);
                    assert!(e < 1e-12, "t={t} n={n} combine={combine}: nmse {e}");
                    // The combined rows stay in x, bit for bit.
                    let x_got = gpu.read_f32(&xb, t * n).await.unwrap();
                    assert_eq!(x_got, x_want, "t={t} n={n} combine={combine}: x");
                }
            }
        }
    }
}
