//! Router top-k and softmax over the chosen logits (`shaders/router.wgsl`).

use crate::error::Result;
use crate::gpu::{Count, Dispatch, Gpu, ShaderKey};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_experts: u32,
    top_k: u32,
    _pad: [u32; 2],
}

/// idx, wts: [T, K] from logits: [T, E].
pub fn build(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    logits: &wgpu::Buffer,
    idx: &wgpu::Buffer,
    wts: &wgpu::Buffer,
    n_experts: u32,
    top_k: u32,
) -> Result<Dispatch> {
    let p = Params {
        n_experts,
        top_k,
        _pad: [0; 2],
    };
    let key = ShaderKey::new("router.wgsl", "main");
    Dispatch::new(
        gpu,
        &key,
        step,
        bytemuck::bytes_of(&p),
        &[logits, idx, wts],
        1,
        Count::Tokens,
        64,
    )
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

    #[test]
    fn router_picks_top_k_and_softmaxes() {
        let mut rng = seeded("router");
        for gpu in gpus() {
            for &(t, e, k) in &[
                (1usize, 4usize, 2usize),
                (70, 32, 4),
                (3, 128, 4),
                (5, 7, 3),
            ] {
                let mut logits = random(&mut rng, t * e, 3.0);
                // Exact ties: the lower expert index ranks first.
                for v in logits.iter_mut().step_by(3) {
                    *v = 0.5;
                }
                let lb = gpu.upload("l", f32_bytes(&logits)).unwrap();
                let ib = gpu.storage("i", (t * k * 4) as u64).unwrap();
                let wb = gpu.storage("w", (t * k * 4) as u64).unwrap();
                let step = step_buffer(gpu);
                let d = build(gpu, &step, &lb, &ib, &wb, e as u32, k as u32).unwrap();
                submit(
                    gpu,
                    &step,
                    &StepCounts {
                        tokens: t as u32,
                        ..Default::default()
                    },
                    &[d],
                );
                let gi = gpu.read_u32(&ib, t * k).unwrap();
                let gw = gpu.read_f32(&wb, t * k).unwrap();
                for ti in 0..t {
                    let (ri, rw) = reference(&logits[ti * e..(ti + 1) * e], k);
                    assert_eq!(&gi[ti * k..(ti + 1) * k], &ri[..], "token {ti}");
                    assert!(max_abs(&gw[ti * k..(ti + 1) * k], &rw) < 1e-6);
                }
            }
        }
    }
}
