//! RMSNorm (`shaders/rmsnorm.wgsl`), optionally gathering the rows whose logits are wanted.

use crate::error::Result;
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::{Count, Dispatch, Gpu, Grid};

wgsl_mirror! {
    "rmsnorm.wgsl", Params:
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub(crate) struct Params {
        n: u32,
        eps: f32,
        count_which: u32,
        gather: u32,
    }
}

/// out: [count, n] = RMSNorm(`x[src]`) * w, src = `rows[r]` when `rows` is given, else r.
pub struct RmsNorm<'a> {
    pub x: &'a wgpu::Buffer,
    pub w: &'a wgpu::Buffer,
    pub rows: Option<&'a wgpu::Buffer>,
    pub out: &'a wgpu::Buffer,
    pub n: u32,
    pub eps: f32,
    pub count: Count,
}

pub fn build(gpu: &Gpu, step: &wgpu::Buffer, a: &RmsNorm) -> Result<Dispatch> {
    let p = Params {
        n: a.n,
        eps: a.eps,
        count_which: super::count_index(a.count),
        gather: a.rows.is_some() as u32,
    };
    let key = super::key(gpu, "rmsnorm.wgsl", "main");
    // Without gathering the index binding is never read; the weight stands in for it.
    let rows = a.rows.unwrap_or(a.w);
    Dispatch::new(
        gpu,
        &key,
        step,
        bytemuck::bytes_of(&p),
        &[a.x, a.w, rows, a.out],
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
        for gpu in gpus().await {
            for &(t, n, gather) in &[(1usize, 64usize, false), (5, 100, false), (6, 2880, true)] {
                let x = random(&mut rng, t * n, 2.0);
                let w = random(&mut rng, n, 1.0);
                let rows: Vec<u32> = (0..t as u32).rev().collect();
                let xb = gpu.upload("x", f32_bytes(&x)).unwrap();
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
                let mut want = vec![0.0; t * n];
                for r in 0..t {
                    let src = if gather { rows[r] as usize } else { r };
                    let row = rmsnorm_ref(&x[src * n..(src + 1) * n], &w, 1e-5);
                    want[r * n..(r + 1) * n].copy_from_slice(&row);
                }
                let e = nmse(&got, &want);
                assert!(e < 1e-12, "t={t} n={n}: nmse {e}");
            }
        }
    }
}
