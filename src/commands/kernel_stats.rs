//! `kernel-stats`: what the Vulkan driver compiled each kernel variant into, as it reports it
//! through VK_KHR_pipeline_executable_properties (NVIDIA: registers a thread, code size, local
//! memory; Mesa: instruction counts, spills). A latency-bound kernel's speed follows how many of
//! its warps fit an SM, which timing alone cannot show (PERF.md v0.17, v0.19, v0.25).
//!
//! The kernels go through naga to SPIR-V as wgpu compiles them (the same preprocessed WGSL and
//! entry point, SPIR-V 1.6, index bounds clamped, no loop counters, workgroup memory zeroed by
//! the driver), on a Vulkan device of our own that enables the statistics and every feature the
//! driver offers; each pipeline is created once with statistics captured and then destroyed.

use std::ffi::CStr;

use anyhow::{Context, Result, bail};
use ash::vk;
use clap::Args;
use gpt_oss_wgpu::gpu::ShaderKey;

#[derive(Args)]
pub(crate) struct KernelStatsArgs {
    /// Only the variants whose label contains this text (e.g. `moe_vec.gate_up`).
    #[arg(long)]
    filter: Option<String>,
    /// The Vulkan device, by its index in the list printed first (default: the first whose driver
    /// reports pipeline statistics).
    #[arg(long)]
    device: Option<usize>,
}

pub(crate) fn kernel_stats(a: &KernelStatsArgs) -> Result<()> {
    // SAFETY: loads the system's Vulkan loader; nothing else runs Vulkan in this process.
    let entry = unsafe { ash::Entry::load() }.context("no Vulkan loader (libvulkan.so.1)")?;
    let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_3);
    let info = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: a plain instance; destroyed below after every object made from it.
    let instance = unsafe { entry.create_instance(&info, None) }.context("vkCreateInstance")?;
    let r = with_instance(&instance, a);
    // SAFETY: with_instance destroyed its device; nothing else uses the instance.
    unsafe { instance.destroy_instance(None) };
    r
}

fn with_instance(instance: &ash::Instance, a: &KernelStatsArgs) -> Result<()> {
    // SAFETY: queries on a live instance.
    let devices = unsafe { instance.enumerate_physical_devices() }?;
    let stats = ash::khr::pipeline_executable_properties::NAME;
    // Each device's extensions, read once.
    let mut extensions = Vec::new();
    let mut offers = Vec::new();
    for (i, &pd) in devices.iter().enumerate() {
        let props = unsafe { instance.get_physical_device_properties(pd) };
        let name = props.device_name_as_c_str().unwrap_or(c"?");
        let exts = unsafe { instance.enumerate_device_extension_properties(pd) }?;
        offers.push(
            exts.iter()
                .any(|e| e.extension_name_as_c_str() == Ok(stats)),
        );
        extensions.push(exts);
        let note = if offers[i] {
            ""
        } else {
            " (no pipeline statistics)"
        };
        println!("[{i}] {}{note}", name.to_string_lossy());
    }
    let stats_name = stats.to_string_lossy();
    let i = match a.device {
        Some(i) if i >= devices.len() => bail!("no Vulkan device {i} ({} found)", devices.len()),
        Some(i) if !offers[i] => bail!("device {i}'s driver does not offer {stats_name}"),
        Some(i) => i,
        None => offers.iter().position(|&o| o).with_context(|| {
            format!("no Vulkan device's driver offers {stats_name} (Mesa's lavapipe does not)")
        })?,
    };
    let pd = devices[i];
    let has = |n: &CStr| {
        extensions[i]
            .iter()
            .any(|e| e.extension_name_as_c_str() == Ok(n))
    };
    let mut names = vec![stats.as_ptr()];
    let coop = has(ash::khr::cooperative_matrix::NAME);
    if coop {
        names.push(ash::khr::cooperative_matrix::NAME.as_ptr());
    }
    // Every feature the device has, so that any capability a variant's SPIR-V declares is on.
    let mut f11 = vk::PhysicalDeviceVulkan11Features::default();
    let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
    let mut f13 = vk::PhysicalDeviceVulkan13Features::default();
    let mut f_exe = vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default();
    let mut f_coop = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default();
    let mut features = vk::PhysicalDeviceFeatures2::default()
        .push_next(&mut f11)
        .push_next(&mut f12)
        .push_next(&mut f13)
        .push_next(&mut f_exe);
    if coop {
        features = features.push_next(&mut f_coop);
    }
    unsafe { instance.get_physical_device_features2(pd, &mut features) };
    let families = unsafe { instance.get_physical_device_queue_family_properties(pd) };
    let family = families
        .iter()
        .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
        .context("no compute queue")? as u32;
    let queue = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(family)
        .queue_priorities(&[1.0])];
    let info = vk::DeviceCreateInfo::default()
        .queue_create_infos(&queue)
        .enabled_extension_names(&names)
        .push_next(&mut features);
    // SAFETY: the extensions and features were read from this device.
    let device = unsafe { instance.create_device(pd, &info, None) }.context("vkCreateDevice")?;
    let r = report(instance, &device, a);
    // SAFETY: report destroyed every object it made.
    unsafe { device.destroy_device(None) };
    r
}

fn report(instance: &ash::Instance, device: &ash::Device, a: &KernelStatsArgs) -> Result<()> {
    let exe = ash::khr::pipeline_executable_properties::Device::new(instance, device);
    let keys: Vec<ShaderKey> = gpt_oss_wgpu::kernels::all_variants()
        .into_iter()
        .filter(|k| {
            a.filter
                .as_ref()
                .is_none_or(|f| k.label().contains(f.as_str()))
        })
        .collect();
    if keys.is_empty() {
        bail!("no kernel variant matches {:?}", a.filter);
    }
    for key in keys {
        match stats(device, &exe, &key) {
            Ok(lines) => println!("{}: {}", key.label(), lines.join(", ")),
            Err(e) => println!("{}: not compiled ({e:#})", key.label()),
        }
    }
    Ok(())
}

/// The driver's statistics of `key`'s pipeline, "name value" each.
fn stats(
    device: &ash::Device,
    exe: &ash::khr::pipeline_executable_properties::Device,
    key: &ShaderKey,
) -> Result<Vec<String>> {
    let (spv, bindings) = spirv(key)?;
    // SAFETY: every object below is made from `device` and destroyed before returning.
    unsafe {
        let module =
            device.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&spv), None)?;
        let set = device.create_descriptor_set_layout(
            &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
            None,
        )?;
        let sets = [set];
        let layout = device.create_pipeline_layout(
            &vk::PipelineLayoutCreateInfo::default().set_layouts(&sets),
            None,
        )?;
        let entry = std::ffi::CString::new(key.entry)?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .flags(vk::PipelineShaderStageCreateFlags::ALLOW_VARYING_SUBGROUP_SIZE)
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(&entry);
        let info = vk::ComputePipelineCreateInfo::default()
            .flags(vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR)
            .stage(stage)
            .layout(layout);
        let made = device.create_compute_pipelines(vk::PipelineCache::null(), &[info], None);
        let out = match made {
            Ok(p) => {
                let lines = read_stats(exe, p[0]);
                device.destroy_pipeline(p[0], None);
                lines
            }
            Err((_, e)) => Err(anyhow::anyhow!("vkCreateComputePipelines: {e}")),
        };
        device.destroy_pipeline_layout(layout, None);
        device.destroy_descriptor_set_layout(set, None);
        device.destroy_shader_module(module, None);
        out
    }
}

/// Every executable's statistics (a compute pipeline has one).
fn read_stats(
    exe: &ash::khr::pipeline_executable_properties::Device,
    pipeline: vk::Pipeline,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let info = vk::PipelineInfoKHR::default().pipeline(pipeline);
    // SAFETY: the pipeline was created with CAPTURE_STATISTICS on a device with the extension.
    let executables = unsafe { exe.get_pipeline_executable_properties(&info) }?;
    for i in 0..executables.len() as u32 {
        let info = vk::PipelineExecutableInfoKHR::default()
            .pipeline(pipeline)
            .executable_index(i);
        for s in unsafe { exe.get_pipeline_executable_statistics(&info) }? {
            let name = s.name_as_c_str().unwrap_or(c"?").to_string_lossy();
            // SAFETY: `format` says which member of the union the driver wrote.
            let value = unsafe {
                match s.format {
                    vk::PipelineExecutableStatisticFormatKHR::BOOL32 => {
                        (s.value.b32 != 0).to_string()
                    }
                    vk::PipelineExecutableStatisticFormatKHR::INT64 => s.value.i64.to_string(),
                    vk::PipelineExecutableStatisticFormatKHR::UINT64 => s.value.u64.to_string(),
                    _ => format!("{:.3}", s.value.f64),
                }
            };
            lines.push(format!("{name} {value}"));
        }
    }
    Ok(lines)
}

/// `key`'s SPIR-V as wgpu-hal writes it for a Vulkan 1.3 device with robust buffer access (with
/// naga's index clamps and division guards, or without them where the key opts out), and its
/// bind group 0's bindings.
fn spirv(key: &ShaderKey) -> Result<(Vec<u32>, Vec<vk::DescriptorSetLayoutBinding<'static>>)> {
    use naga::back::spv;
    let src = key.source()?;
    let module = naga::front::wgsl::parse_str(&src)
        .map_err(|e| anyhow::anyhow!("{}", e.emit_to_string(&src)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)?;
    let checked = !key.checks_left_out();
    let options = spv::Options {
        lang_version: (1, 6),
        bounds_check_policies: if checked {
            naga::proc::BoundsCheckPolicies {
                index: naga::proc::BoundsCheckPolicy::Restrict,
                ..Default::default()
            }
        } else {
            naga::proc::BoundsCheckPolicies::default()
        },
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::Native,
        force_loop_bounding: false,
        emit_int_div_checks: checked,
        ..Default::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: key.entry.to_string(),
    };
    let words = spv::write_vec(&module, &info, &options, Some(&pipeline))?;
    let mut bindings = Vec::new();
    for (_, var) in module.global_variables.iter() {
        let Some(b) = &var.binding else { continue };
        let kind = match var.space {
            naga::AddressSpace::Uniform => vk::DescriptorType::UNIFORM_BUFFER,
            naga::AddressSpace::Storage { .. } => vk::DescriptorType::STORAGE_BUFFER,
            _ => continue,
        };
        if b.group != 0 {
            bail!("binding in group {}: only group 0 is laid out", b.group);
        }
        bindings.push(
            vk::DescriptorSetLayoutBinding::default()
                .binding(b.binding)
                .descriptor_type(kind)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE),
        );
    }
    Ok((words, bindings))
}

#[cfg(test)]
mod tests {
    /// Every kernel variant becomes SPIR-V with its bindings laid out, without a device.
    #[test]
    fn every_variant_writes_spirv() {
        for key in gpt_oss_wgpu::kernels::all_variants() {
            let (words, bindings) =
                super::spirv(&key).unwrap_or_else(|e| panic!("{}: {e:#}", key.label()));
            assert_eq!(words[0], 0x0723_0203, "{}: not SPIR-V", key.label());
            assert!(!bindings.is_empty(), "{}", key.label());
        }
    }

    /// A variant that opts out of naga's runtime checks is written without them: no index
    /// clamps and no division guards, so fewer words than the same source with them.
    #[test]
    fn unchecked_variants_drop_the_checks() {
        let unchecked = gpt_oss_wgpu::kernels::all_variants()
            .into_iter()
            .filter(gpt_oss_wgpu::gpu::ShaderKey::checks_left_out)
            .collect::<Vec<_>>();
        assert!(!unchecked.is_empty());
        for key in unchecked {
            let checked = gpt_oss_wgpu::gpu::ShaderKey {
                runtime_checks: true,
                ..key.clone()
            };
            let (lean, _) = super::spirv(&key).unwrap();
            let (full, _) = super::spirv(&checked).unwrap();
            assert!(
                lean.len() < full.len(),
                "{}: {} >= {} words",
                key.label(),
                lean.len(),
                full.len()
            );
        }
    }
}
