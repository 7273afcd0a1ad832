//! `devices`: the adapters wgpu sees.

use anyhow::{Result, bail};

use super::*;

pub(crate) fn devices(d: &DeviceArgs) -> Result<()> {
    let o = gpu_options(d)?;
    let list = pollster::block_on(gpt_oss_wgpu::gpu::context::adapters(o.backends));
    if list.is_empty() {
        bail!(
            "no GPU adapters found (on Linux, install a Vulkan driver such as mesa-vulkan-drivers)"
        );
    }
    for (i, a) in list.iter().enumerate() {
        println!("[{i}] {}", gpt_oss_wgpu::gpu::context::describe_adapter(a));
    }
    Ok(())
}
