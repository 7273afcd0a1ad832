//! The GPU handle every kernel uses: device, queue, what the adapter can do, and the pipeline cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::shader::ShaderKey;

/// What the adapter offers that the kernels care about, fixed when the device is created.
#[derive(Clone, Debug)]
pub struct Caps {
    /// `enable f16;` works in shaders.
    pub f16: bool,
    /// Subgroup operations (`subgroupAdd`, ...) work in compute shaders.
    pub subgroups: bool,
    /// The narrowest and widest subgroups the adapter may use (0 when unknown).
    pub subgroup_min: u32,
    pub subgroup_max: u32,
    /// Timestamp queries at pass boundaries work.
    pub timestamps: bool,
    /// Largest storage-buffer binding in bytes.
    pub max_binding: u64,
    /// Weight matrices larger than this are split by rows over several buffers: the binding
    /// limit, unless lowered (tests lower it to exercise splitting on small models).
    pub split_bytes: u64,
    /// Largest buffer in bytes.
    pub max_buffer: u64,
    /// Most invocations in one workgroup.
    pub max_invocations: u32,
    /// Most bytes of workgroup memory one workgroup may use (16 KiB is all WebGPU promises).
    pub workgroup_bytes: u32,
    /// Most workgroups in one dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Most storage buffers one kernel may bind (8 is all WebGPU promises; fused kernels that
    /// need more have an unfused fallback).
    pub storage_buffers: u32,
    /// 16x16x16 cooperative matrices (f16 inputs, f32 accumulators) on subgroups of exactly 32
    /// invocations: the tensor-core kernels of the `fast` precision.
    pub coop: bool,
    /// f16 arithmetic keeps subnormals, as the `fast` precision's f16-pair expert products need
    /// (found by running shaders/f16_probe.wgsl: [`Gpu::probe_f16`]).
    pub f16_subnormals: bool,
    /// The `fast` precision runs decode's expert products in f16 pairs: f16 keeps subnormals and
    /// is the hardware's own (not a CPU adapter's emulation: lavapipe ran those products slower
    /// than f32, batch 8 48 against 54 tok/s on the test model).
    pub f16_products: bool,
}

/// How to pick and set up the device.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Restrict to these backends; `None` means Vulkan, Metal, DX12 and WebGPU (or WGPU_BACKEND).
    pub backends: Option<wgpu::Backends>,
    /// Pick the adapter whose index (as `devices` lists them) or name substring matches.
    pub adapter: Option<String>,
    /// Use only the portable kernels: no f16, no subgroups (what the browser path runs).
    pub portable: bool,
    /// Split weights at this many bytes instead of at the adapter's binding limit (tests use it
    /// to exercise split weights on small models).
    pub split_bytes: Option<u64>,
}

impl GpuOptions {
    /// Options from the environment: `GPT_OSS_PORTABLE=1` forces the portable kernels and
    /// `GPT_OSS_SPLIT_BYTES=<bytes>` lowers the size at which weights are split.
    pub fn from_env() -> Self {
        let portable = std::env::var("GPT_OSS_PORTABLE").is_ok_and(|v| v != "0" && !v.is_empty());
        let split_bytes = std::env::var("GPT_OSS_SPLIT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok());
        GpuOptions {
            portable,
            split_bytes,
            ..Default::default()
        }
    }
}

/// A device with its queue, capabilities and compiled pipelines.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Caps,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// The host application polls the device (see [`Gpu::set_host_polls`]).
    host_polls: std::sync::atomic::AtomicBool,
    /// Error scopes still to be read (browser only: see [`Gpu::checked`]).
    #[cfg(target_arch = "wasm32")]
    pending_checks: Mutex<Vec<(String, PendingCheck)>>,
}

#[cfg(target_arch = "wasm32")]
type PendingCheck = std::pin::Pin<Box<dyn std::future::Future<Output = Option<wgpu::Error>>>>;

/// Adapter description for listings such as `gpt-oss-wgpu devices`.
pub fn describe_adapter(adapter: &wgpu::Adapter) -> String {
    let info = adapter.get_info();
    let f = adapter.features();
    let l = adapter.limits();
    format!(
        "{} ({:?}, {:?}, driver {} {})\n  shader-f16: {}  subgroups: {} (size {}..{})  timestamps: {}  \
         cooperative-matrix: {}\n  max binding {} MiB, max buffer {} MiB, {} invocations and {} KiB of memory a workgroup",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        f.contains(wgpu::Features::SHADER_F16),
        f.contains(wgpu::Features::SUBGROUP),
        info.subgroup_min_size,
        info.subgroup_max_size,
        f.contains(wgpu::Features::TIMESTAMP_QUERY),
        f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
        l.max_storage_buffer_binding_size >> 20,
        l.max_buffer_size >> 20,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroup_storage_size >> 10,
    )
}

/// The instance settings: the given backends, else WGPU_BACKEND, else the primary backends (GL
/// lacks the compute features the kernels want and only adds noise when probed).
fn instance_descriptor(backends: Option<wgpu::Backends>) -> wgpu::InstanceDescriptor {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    match backends {
        Some(b) => desc.backends = b,
        None if std::env::var_os("WGPU_BACKEND").is_none() => {
            desc.backends = wgpu::Backends::PRIMARY
        }
        None => {}
    }
    desc
}

/// All adapters the instance can see, in a stable order (the order `--adapter N` counts in).
pub async fn adapters(backends: Option<wgpu::Backends>) -> Vec<wgpu::Adapter> {
    let instance = wgpu::Instance::new(instance_descriptor(backends));
    instance.enumerate_adapters(wgpu::Backends::all()).await
}

/// Whether the adapter runs the COOP kernels: 16x16x16 f16 x f16 + f32 matrices, f16 shaders and
/// subgroups of exactly 32 (the kernels count subgroups by invocation index) with barriers
/// (attention.wgsl's subgroups share their own rows of workgroup memory).
fn coop_fits(adapter: &wgpu::Adapter) -> bool {
    let f = adapter.features();
    let need = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::SUBGROUP_BARRIER;
    let info = adapter.get_info();
    f.contains(need)
        && info.subgroup_min_size == 32
        && info.subgroup_max_size == 32
        && adapter.cooperative_matrix_properties().iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
}

impl Gpu {
    /// Opens the adapter the options select (the default high-performance one otherwise).
    pub async fn new(opts: &GpuOptions) -> Result<Gpu> {
        let instance = wgpu::Instance::new(instance_descriptor(opts.backends));
        let adapter = match &opts.adapter {
            Some(sel) => {
                let all = adapters(opts.backends).await;
                let found = match sel.parse::<usize>() {
                    Ok(i) => all.into_iter().nth(i),
                    Err(_) => {
                        let s = sel.to_lowercase();
                        all.into_iter()
                            .find(|a| a.get_info().name.to_lowercase().contains(&s))
                    }
                };
                found.ok_or_else(|| {
                    Error::Device(format!(
                        "no adapter matches `{sel}` (see `gpt-oss-wgpu devices`)"
                    ))
                })?
            }
            None => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::Device(format!("no GPU adapter found: {e}")))?,
        };
        let available = adapter.features();
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY;
        let coop = !opts.portable && coop_fits(&adapter);
        if !opts.portable {
            wanted |= wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        }
        if coop {
            wanted |=
                wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SUBGROUP_BARRIER;
        }
        let features = available & wanted;
        // Ask for everything the adapter allows: weights want the largest bindings and buffers.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("gpt-oss"),
                required_features: features,
                required_limits: limits,
                // SAFETY: the one experimental feature asked for is cooperative matrices, used
                // only by kernels that a test checks against the f32 path on such adapters.
                experimental_features: if coop {
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Device(format!("cannot open {}: {e}", adapter.get_info().name)))?;
        let mut gpu = Gpu::from_device(device, queue, adapter.get_info());
        gpu.caps.coop = coop;
        if opts.portable {
            // What WebGPU promises everywhere: the browser path's binding budget.
            gpu.caps.storage_buffers = gpu.caps.storage_buffers.min(8);
        }
        if let Some(b) = opts.split_bytes {
            gpu.caps.split_bytes = gpu.caps.max_binding.min(b);
        }
        gpu.probe_f16().await?;
        Ok(gpu)
    }

    /// Sets `caps.f16_subnormals` (and from it `f16_products`) by running shaders/f16_probe.wgsl:
    /// eight MXFP4 codes of 0.5 (the subnormal f16 2^-15 in the f16-pair products) against inputs
    /// of 1.0 must sum to exactly 2^-12. [`Gpu::new`] does this; a host that wraps its own device
    /// with [`Gpu::from_device`] may call it to let the `fast` precision use those products.
    pub async fn probe_f16(&mut self) -> Result<()> {
        self.caps.f16_subnormals = false;
        self.caps.f16_products = false;
        if !self.caps.f16 {
            return Ok(());
        }
        let key = ShaderKey::new("f16_probe.wgsl", "main").define_if("F16_PRODUCTS", true);
        // Eight inputs of 1.0, then a word of eight codes 0.5 (e2m1 0b0001) as a checkpoint
        // stores them: the probe moves it to the kernels' layout itself.
        let mut words = vec![1f32.to_bits(); 8];
        words.extend([0x1111_1111, 0]);
        let buf = self.upload("f16 probe", bytemuck::cast_slice(&words))?;
        self.dispatch_once(&key, &[&buf], [1, 1, 1])?;
        let got = self.read_u32(&buf, 10).await?[9];
        self.caps.f16_subnormals = f32::from_bits(got) == 2f32.powi(-12);
        self.caps.f16_products =
            self.caps.f16_subnormals && self.info.device_type != wgpu::DeviceType::Cpu;
        Ok(())
    }

    /// The bind group of `pipeline`'s group 0 with `buffers` at bindings 0, 1, ...; a binding the
    /// shader does not use is an error naming `label`.
    pub fn bind_group<'a>(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        buffers: impl IntoIterator<Item = &'a wgpu::Buffer>,
    ) -> Result<wgpu::BindGroup> {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .into_iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.checked(label, || {
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
        })
        .map_err(|msg| Error::Shader {
            key: label.to_string(),
            msg: format!("binding failed: {msg}"),
        })
    }

    /// Submits one dispatch of `key` outside any forward pass (a one-time job such as a probe or
    /// a layout change), its buffers bound from binding 0 in order.
    pub fn dispatch_once(
        &self,
        key: &ShaderKey,
        buffers: &[&wgpu::Buffer],
        grid: [u32; 3],
    ) -> Result<()> {
        let pipeline = self.pipeline(key)?;
        let bind_group = self.bind_group(&key.label(), &pipeline, buffers.iter().copied())?;
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
        self.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Wraps a device the host application already owns; the kernels use whatever features it was
    /// created with.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Gpu {
        let f = device.features();
        let l = device.limits();
        let caps = Caps {
            f16: f.contains(wgpu::Features::SHADER_F16),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            subgroup_min: info.subgroup_min_size,
            subgroup_max: info.subgroup_max_size,
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_binding: l.max_storage_buffer_binding_size,
            split_bytes: l.max_storage_buffer_binding_size,
            max_buffer: l.max_buffer_size,
            max_invocations: l.max_compute_invocations_per_workgroup,
            workgroup_bytes: l.max_compute_workgroup_storage_size,
            max_workgroups_per_dim: l.max_compute_workgroups_per_dimension,
            storage_buffers: l.max_storage_buffers_per_shader_stage,
            // Only known for adapters we open (the adapter's matrix shapes are needed).
            coop: false,
            // Until probe_f16 runs.
            f16_subnormals: false,
            f16_products: false,
        };
        Gpu {
            device,
            queue,
            info,
            caps,
            pipelines: Mutex::new(HashMap::new()),
            host_polls: Default::default(),
            #[cfg(target_arch = "wasm32")]
            pending_checks: Mutex::new(Vec::new()),
        }
    }

    /// The compute pipeline for a shader key, compiled on first use.
    pub fn pipeline(&self, key: &ShaderKey) -> Result<Arc<wgpu::ComputePipeline>> {
        let label = key.label();
        let mut cache = self
            .pipelines
            .lock()
            .map_err(|_| Error::Device("pipeline cache poisoned".into()))?;
        if let Some(p) = cache.get(&label) {
            return Ok(p.clone());
        }
        let source = key.source()?;
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
        };
        let base = if runtime_checks(key) {
            wgpu::ShaderRuntimeChecks::checked()
        } else {
            wgpu::ShaderRuntimeChecks::unchecked()
        };
        let checks = wgpu::ShaderRuntimeChecks {
            force_loop_bounding: loop_bounding(),
            ..base
        };
        // SAFETY: every loop in our kernels ends: their bounds are shapes and counts checked on
        // the host (kernels/*.rs). Buffer bounds checks stay on unless a measurement turns them
        // off. Without the injected loop counter the driver's compiler can unroll and pipeline
        // the inner loops.
        let pipeline = self
            .checked(&label, || {
                let module = unsafe { self.device.create_shader_module_trusted(desc, checks) };
                self.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&label),
                        layout: None,
                        module: &module,
                        entry_point: Some(key.entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &[],
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    })
            })
            .map_err(|err| Error::Shader {
                key: label.clone(),
                msg: format!("{err}\n--- preprocessed source ---\n{source}"),
            })?;
        let pipeline = Arc::new(pipeline);
        cache.insert(label, pipeline.clone());
        Ok(pipeline)
    }

    /// Runs `f` inside a validation error scope. Natively the scope is read at once and its error
    /// returned; in the browser it resolves only from the event loop, so it is kept and
    /// [`Gpu::settle`] awaits it (nothing here blocks).
    // `what` names the scope's error only where it is read later (the browser).
    #[cfg_attr(not(target_arch = "wasm32"), allow(unused_variables))]
    pub fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(err.to_string());
        }
        #[cfg(target_arch = "wasm32")]
        if let Ok(mut pending) = self.pending_checks.lock() {
            pending.push((what.to_string(), Box::pin(scope.pop())));
        }
        Ok(out)
    }

    /// Waits for the error scopes [`Gpu::checked`] left open (only in the browser) and returns
    /// every error they caught, naming what raised each.
    pub async fn settle(&self) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        {
            let pending = match self.pending_checks.lock() {
                Ok(mut p) => std::mem::take(&mut *p),
                Err(_) => return Err(Error::Device("error-scope list poisoned".into())),
            };
            let mut errors = Vec::new();
            for (what, check) in pending {
                if let Some(err) = check.await {
                    errors.push(format!("`{what}`: {err}"));
                }
            }
            if !errors.is_empty() {
                return Err(Error::Device(format!(
                    "{} pipeline(s) failed:\n{}",
                    errors.len(),
                    errors.join("\n")
                )));
            }
        }
        Ok(())
    }

    /// With `true`, read-backs (the end of every `Engine::step`) no longer wait for the GPU: their
    /// futures complete once the host application's own `device.poll` delivers the result. A
    /// render loop can then poll a step's future once per frame and never stall on the model.
    pub fn set_host_polls(&self, on: bool) {
        self.host_polls
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn host_polls(&self) -> bool {
        self.host_polls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Blocks until the GPU has finished all submitted work (native) or yields (web).
    pub fn wait(&self) -> Result<()> {
        self.poll(None)
    }

    /// Blocks until the GPU has finished submission `index`, not what was queued after it.
    pub fn wait_for(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        self.poll(Some(index))
    }

    fn poll(&self, submission_index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index,
                timeout: None,
            })
            .map(|_| ())
            .map_err(|e| Error::Device(format!("wait failed: {e}")))
    }
}

/// Whether wgpu bounds every shader loop with a counter (its default for untrusted shaders);
/// `GPT_OSS_LOOP_BOUNDING=1` turns it back on to measure what it costs.
fn loop_bounding() -> bool {
    cfg!(target_arch = "wasm32")
        || std::env::var_os("GPT_OSS_LOOP_BOUNDING").is_some_and(|v| v == "1")
}

/// Whether naga clamps every index and guards every integer division against a zero divisor in
/// this kernel: unless the key leaves them out (`ShaderKey::checks_left_out`) or, natively,
/// `GPT_OSS_BOUNDS_CHECKS=0` turns them off everywhere to measure what both cost (PERF.md v0.17,
/// v0.54).
fn runtime_checks(key: &ShaderKey) -> bool {
    !key.checks_left_out()
        && (cfg!(target_arch = "wasm32")
            || std::env::var_os("GPT_OSS_BOUNDS_CHECKS").is_none_or(|v| v != "0"))
}
