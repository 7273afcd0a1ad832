//! Token embedding lookup (`shaders/embed.wgsl`).

use crate::error::Result;
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::shader::wgsl_const;
use crate::gpu::{Count, Dispatch, Gpu, Grid, ShaderKey, Split};

wgsl_mirror! {
    "embed.wgsl", Params:
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub(crate) struct Params {
        hidden: u32,
        row_start: u32,
        rows: u32,
        _pad: u32,
    }
}

/// x: [T, H] f32 = `table[id]` for table: [V, H] bf16 split by rows, id = `tokens[t].id` or, for a
/// token fed from the previous pass, that pass's `sampled` id of its output row.
pub fn build(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    tokens: &wgpu::Buffer,
    table: &Split,
    x: &wgpu::Buffer,
    sampled: &wgpu::Buffer,
    hidden: u32,
) -> Result<Vec<Dispatch>> {
    let key = ShaderKey::new("embed.wgsl", "main");
    // A lane per pair of a row's values.
    let x_groups = (hidden / 2).div_ceil(wgsl_const("embed.wgsl", "WG")?);
    table
        .chunks
        .iter()
        .map(|c| {
            let p = Params {
                hidden,
                row_start: c.start,
                rows: c.count,
                _pad: 0,
            };
            Dispatch::new(
                gpu,
                &key,
                step,
                bytemuck::bytes_of(&p),
                &[tokens, &c.buffer, x, sampled],
                Grid::new(x_groups, Count::Tokens, 1),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::testing::*;
    use crate::model::inputs::TokenInfo;

    gpu_test!(embed_gathers_rows_across_split_table);
    async fn embed_gathers_rows_across_split_table() {
        let mut rng = seeded("embed");
        for gpu in gpus().await {
            // Rows of 600 values: two workgroups a row.
            let (v, h, split) = (23usize, 600usize, 10usize);
            let (table, bytes) = random_bf16(&mut rng, v * h, 1.0);
            let table_split = split_rows(gpu, &bytes, v, h, split);
            let ids: Vec<u32> = (0..9).map(|_| rng.below(v as u64) as u32).collect();
            // Tokens 2 and 5 come from the previous pass's sampled ids (rows 3 and 0 of them).
            let sampled: Vec<u32> = (0..4).map(|_| rng.below(v as u64) as u32).collect();
            let mut ids = ids;
            ids[2] = sampled[3];
            ids[5] = sampled[0];
            let toks: Vec<TokenInfo> = ids
                .iter()
                .enumerate()
                .map(|(t, &id)| match t {
                    2 => TokenInfo::fed(3, 0, 0),
                    5 => TokenInfo::fed(0, 0, 0),
                    _ => TokenInfo::new(id, 0, 0),
                })
                .collect();
            let tb = gpu.upload("tok", bytemuck::cast_slice(&toks)).unwrap();
            let sb = gpu
                .upload("sampled", bytemuck::cast_slice(&sampled))
                .unwrap();
            let xb = gpu.storage("x", (ids.len() * h * 4) as u64).unwrap();
            let step = step_buffer(gpu);
            let d = build(gpu, &step, &tb, &table_split, &xb, &sb, h as u32).unwrap();
            submit(
                gpu,
                &step,
                &StepCounts {
                    tokens: ids.len() as u32,
                    ..Default::default()
                },
                &d,
            );
            let got = gpu.read_f32(&xb, ids.len() * h).await.unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&i| table[i as usize * h..(i as usize + 1) * h].to_vec())
                .collect();
            assert_eq!(got, want);
        }
    }
}
