//! A dispatch prepared once (pipeline, bind group, grid rule) and recorded every step.
//!
//! The forward pass is a fixed list of these built at load time; each step only writes the step
//! counts (how many tokens, outputs) and records the list, so the hot loop creates no bind groups.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::{Gpu, ShaderKey};

wgsl_mirror! {
    "common/step.wgsl", Step:
    /// The per-step counts every kernel reads from binding 0 (`Step` in `common/step.wgsl`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct StepCounts {
        /// Tokens in this forward pass.
        pub tokens: u32,
        /// Rows of logits wanted (one per sequence that samples, or every position).
        pub outputs: u32,
        /// Token-expert slots: tokens times experts per token.
        pub slots: u32,
        /// Split attention: the spans each token's keys are cut into, and their length in
        /// positions.
        pub splits: u32,
        pub span: u32,
        /// logit_bias entries of the pass's rows and rows with a pending penalty, all told
        /// (sampling's BIAS runs when there are any).
        pub biased: u32,
        pub _pad: [u32; 2],
    }
}

impl StepCounts {
    /// The value of one count.
    pub fn get(&self, c: Count) -> u32 {
        match c {
            Count::One => 1,
            Count::Fixed(n) => n,
            Count::Tokens => self.tokens,
            Count::Outputs => self.outputs,
            Count::Slots => self.slots,
            Count::TokenSplits => self.tokens * self.splits,
            Count::Splits => self.splits,
            Count::Biased => self.biased,
        }
    }
}

/// What the second grid dimension scales with.
#[derive(Clone, Copy, Debug)]
pub enum Count {
    One,
    /// A fixed number of rows of workgroups (e.g. one per expert).
    Fixed(u32),
    Tokens,
    Outputs,
    Slots,
    /// Tokens times attention splits.
    TokenSplits,
    /// Attention splits (a condition only, never a grid count).
    Splits,
    /// logit_bias entries (a condition only).
    Biased,
}

/// A dispatch's workgroup grid: x fixed (rows, heads, ...), y = ceil(count / per_wg) for the
/// step's count, z fixed (e.g. one per expert; 1 unless `depth`).
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub x: u32,
    pub count: Count,
    pub per_wg: u32,
    pub z: u32,
}

impl Grid {
    pub fn new(x: u32, count: Count, per_wg: u32) -> Grid {
        Grid {
            x,
            count,
            per_wg: per_wg.max(1),
            z: 1,
        }
    }

    /// Sets the grid's z dimension.
    pub fn depth(self, z: u32) -> Grid {
        Grid { z, ..self }
    }
}

/// One compute dispatch ready to record.
pub struct Dispatch {
    pub label: String,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    pub grid: Grid,
    /// Runs only while each of these counts is in its range (a kernel variant tuned for some
    /// sizes).
    pub active: Vec<(Count, std::ops::RangeInclusive<u32>)>,
    // The uniform holding this dispatch's fixed parameters, kept alive with the bind group.
    _params: wgpu::Buffer,
}

impl Dispatch {
    /// Builds a dispatch: binding 0 is the step uniform, 1 the parameters, then `buffers` in order.
    pub fn new(
        gpu: &Gpu,
        key: &ShaderKey,
        step: &wgpu::Buffer,
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        grid: Grid,
    ) -> Result<Dispatch> {
        let widest = grid.x.max(grid.z);
        if widest > gpu.caps.max_workgroups_per_dim {
            return Err(Error::Limit {
                what: format!("dispatch `{}` workgroups", key.label()),
                needed: widest as u64,
                max: gpu.caps.max_workgroups_per_dim as u64,
            });
        }
        let pipeline = gpu.pipeline(key)?;
        let label = key.label();
        let params_buf = gpu.uniform(&label, params);
        let bound = [step, &params_buf]
            .into_iter()
            .chain(buffers.iter().copied());
        let bind_group = gpu.bind_group(&label, &pipeline, bound)?;
        Ok(Dispatch {
            label,
            pipeline,
            bind_group,
            grid,
            active: Vec::new(),
            _params: params_buf,
        })
    }

    /// The workgroup grid for a step, or `None` when there is nothing to do.
    pub fn workgroups(&self, c: &StepCounts) -> Option<[u32; 3]> {
        let g = &self.grid;
        let y = c.get(g.count).div_ceil(g.per_wg);
        let active = self.active.iter().all(|(n, r)| r.contains(&c.get(*n)));
        (y > 0 && g.x > 0 && g.z > 0 && active).then_some([g.x, y, g.z])
    }

    /// Restricts the dispatch to steps whose `count` is in `range` (and any earlier condition).
    pub fn only_for(mut self, count: Count, range: std::ops::RangeInclusive<u32>) -> Dispatch {
        self.active.push((count, range));
        self
    }

    /// Records the dispatch into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, c: &StepCounts) {
        if let Some([x, y, z]) = self.workgroups(c) {
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &self.bind_group, &[]);
            pass.dispatch_workgroups(x, y, z);
        }
    }
}

/// Records `dispatches` in order into one compute pass, for a step whose counts are `counts`
/// (the caller has written them to the step buffer).
pub fn record_all(enc: &mut wgpu::CommandEncoder, counts: &StepCounts, dispatches: &[Dispatch]) {
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("forward"),
        timestamp_writes: None,
    });
    for d in dispatches {
        d.record(&mut pass, counts);
    }
}

/// The uniform buffer that carries [`StepCounts`].
pub fn step_buffer(gpu: &Gpu) -> wgpu::Buffer {
    gpu.uniform("step", bytemuck::bytes_of(&StepCounts::default()))
}

/// Records and submits one step's dispatches (no waiting), its counts already in the step buffer.
pub fn run(gpu: &Gpu, counts: &StepCounts, dispatches: &[Dispatch]) {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    record_all(&mut enc, counts, dispatches);
    gpu.queue.submit([enc.finish()]);
}

/// Writes the step counts, then `run`s the dispatches.
pub fn submit(gpu: &Gpu, step: &wgpu::Buffer, counts: &StepCounts, dispatches: &[Dispatch]) {
    gpu.queue.write_buffer(step, 0, bytemuck::bytes_of(counts));
    run(gpu, counts, dispatches);
}
