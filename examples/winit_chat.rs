//! gpt-oss inside an app's render loop: a winit window animates its own rendering while the model,
//! on the same `wgpu::Device`, streams an answer into the window title. The render loop never
//! waits for the model: each frame polls the device once and the current step's future once
//! (`Gpu::set_host_polls`), so frames keep coming while tokens are computed.
//!
//!     cargo run --release --example winit_chat -- --model models/tiny --prompt "Hello"
//!
//! `--frames N` exits once N frames are drawn and the answer is complete, printing frame times
//! (for tests: `xvfb-run` gives it a display on a machine without one).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gpt_oss_wgpu::{Engine, Event, Gpu, ModelOptions, Request, Sampling, StreamDecoder};
use winit::application::ApplicationHandler;
use winit::event::WindowEvent;
use winit::event_loop::{ActiveEventLoop, EventLoop};
use winit::window::{Window, WindowId};

struct Args {
    model: String,
    prompt: String,
    max_tokens: u32,
    frames: Option<u64>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        model: String::new(),
        prompt: "Hello".into(),
        max_tokens: 32,
        frames: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--model" => a.model = value()?,
            "--prompt" => a.prompt = value()?,
            "--max-tokens" => a.max_tokens = value()?.parse()?,
            "--frames" => a.frames = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!(
                    "usage: winit_chat --model DIR [--prompt TEXT] [--max-tokens N] [--frames N]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other} (see --help)"),
        }
    }
    anyhow::ensure!(!a.model.is_empty(), "--model DIR is required (see --help)");
    Ok(a)
}

/// The model between frames: ready for the next step, or one step in flight (the engine moves
/// into the step's future and comes back with its events).
enum Model {
    Idle(Box<Engine>),
    Stepping(Step),
    Taken,
}

type Step = Pin<Box<dyn Future<Output = (Box<Engine>, gpt_oss_wgpu::Result<Vec<Event>>)>>>;

/// What the window owns: its surface, the shared device, and the model.
struct Scene {
    window: Arc<Window>,
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    gpu: Arc<Gpu>,
    model: Model,
    text: StreamDecoder,
    answer: String,
    started: Instant,
}

#[derive(Default)]
struct Stats {
    frames: u64,
    frames_generating: u64,
    tokens: u64,
    steps: u64,
    generating_frame_times: Vec<Duration>,
    last_frame: Option<Instant>,
    done: bool,
}

struct App {
    args: Args,
    scene: Option<Scene>,
    stats: Stats,
    error: Option<anyhow::Error>,
}

impl App {
    fn open(&mut self, el: &ActiveEventLoop) -> anyhow::Result<Scene> {
        let window = Arc::new(
            el.create_window(
                Window::default_attributes()
                    .with_title("gpt-oss")
                    .with_inner_size(winit::dpi::LogicalSize::new(640, 360)),
            )?,
        );
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if std::env::var_os("WGPU_BACKEND").is_none() {
            desc.backends = wgpu::Backends::PRIMARY;
        }
        let instance = wgpu::Instance::new(desc);
        let surface = instance.create_surface(window.clone())?;
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            compatible_surface: Some(&surface),
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))?;
        // One device for the app's rendering and the model: ask for what the kernels can use.
        let wanted =
            wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) =
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                required_features: adapter.features() & wanted,
                required_limits: adapter.limits(),
                ..Default::default()
            }))?;
        let size = window.inner_size();
        let config = surface
            .get_default_config(&adapter, size.width.max(1), size.height.max(1))
            .ok_or_else(|| anyhow::anyhow!("the adapter cannot present to this window"))?;
        surface.configure(&device, &config);
        println!("adapter: {}", adapter.get_info().name);

        let mut gpu = Gpu::from_device(device, queue, adapter.get_info());
        pollster::block_on(gpu.probe_f16())?;
        let gpu = Arc::new(gpu);
        gpu.set_host_polls(true);
        let opts = ModelOptions {
            max_seqs: 1,
            max_context: 1024,
            max_tokens: 128,
            ..Default::default()
        };
        let mut engine =
            Engine::load_dir(gpu.clone(), self.args.model.as_ref(), opts, &mut |_, _| {})?;
        let tokenizer = engine
            .tokenizer
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{} has no tokenizer.json", self.args.model))?;
        engine.submit(Request {
            prompt: tokenizer.encode(&self.args.prompt)?,
            max_tokens: self.args.max_tokens,
            // The answer continues even past an end-of-text id: the demo is the streaming.
            ignore_eos: true,
            sampling: Sampling {
                seed: 7,
                ..Sampling::default()
            },
            ..Default::default()
        })?;
        Ok(Scene {
            window,
            surface,
            config,
            gpu,
            model: Model::Idle(Box::new(engine)),
            text: StreamDecoder::default(),
            answer: String::new(),
            started: Instant::now(),
        })
    }

    /// One frame: the app's own drawing, then a look at the model without waiting for it.
    fn frame(&mut self) -> anyhow::Result<()> {
        let Some(s) = self.scene.as_mut() else {
            return Ok(());
        };
        draw(s);
        let generating = match std::mem::replace(&mut s.model, Model::Taken) {
            Model::Idle(mut engine) if engine.has_work() => {
                // Start the next step; its GPU work is queued behind this frame's.
                s.model = Model::Stepping(Box::pin(async move {
                    let events = engine.step().await;
                    (engine, events)
                }));
                true
            }
            Model::Stepping(mut step) => {
                let _ = s.gpu.device.poll(wgpu::PollType::Poll);
                match step.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                    Poll::Pending => s.model = Model::Stepping(step),
                    Poll::Ready((engine, events)) => {
                        self.stats.steps += 1;
                        for ev in events? {
                            if let Event::Token { token, .. } = ev {
                                self.stats.tokens += 1;
                                if let Some(t) = &engine.tokenizer
                                    && let Some(piece) = s.text.push(t, token)?
                                {
                                    print!("{piece}");
                                    s.answer.push_str(&piece);
                                    let tail: String = s.answer.chars().rev().take(60).collect();
                                    let tail: String = tail.chars().rev().collect();
                                    s.window.set_title(&format!("gpt-oss: {tail}"));
                                }
                            }
                        }
                        s.model = Model::Idle(engine);
                    }
                }
                true
            }
            idle => {
                s.model = idle;
                self.stats.done = true;
                false
            }
        };
        let now = Instant::now();
        if let (true, Some(last)) = (generating, self.stats.last_frame) {
            self.stats.frames_generating += 1;
            self.stats.generating_frame_times.push(now - last);
        }
        self.stats.last_frame = Some(now);
        self.stats.frames += 1;
        Ok(())
    }
}

/// The app's own rendering: a background that slowly cycles through colours.
fn draw(s: &mut Scene) {
    let frame = match s.surface.get_current_texture() {
        wgpu::CurrentSurfaceTexture::Success(f) | wgpu::CurrentSurfaceTexture::Suboptimal(f) => f,
        wgpu::CurrentSurfaceTexture::Outdated | wgpu::CurrentSurfaceTexture::Lost => {
            s.surface.configure(&s.gpu.device, &s.config);
            return;
        }
        _ => return,
    };
    let view = frame.texture.create_view(&Default::default());
    let t = s.started.elapsed().as_secs_f64();
    let wave = |phase: f64| 0.5 + 0.5 * (t * 1.5 + phase).sin();
    let mut enc = s.gpu.device.create_command_encoder(&Default::default());
    enc.begin_render_pass(&wgpu::RenderPassDescriptor {
        label: Some("background"),
        color_attachments: &[Some(wgpu::RenderPassColorAttachment {
            view: &view,
            depth_slice: None,
            resolve_target: None,
            ops: wgpu::Operations {
                load: wgpu::LoadOp::Clear(wgpu::Color {
                    r: 0.1 + 0.3 * wave(0.0),
                    g: 0.1 + 0.3 * wave(2.1),
                    b: 0.2 + 0.3 * wave(4.2),
                    a: 1.0,
                }),
                store: wgpu::StoreOp::Store,
            },
        })],
        ..Default::default()
    });
    s.gpu.queue.submit([enc.finish()]);
    s.gpu.queue.present(frame);
}

impl ApplicationHandler for App {
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.scene.is_some() {
            return;
        }
        match self.open(el) {
            Ok(scene) => self.scene = Some(scene),
            Err(e) => {
                self.error = Some(e);
                el.exit();
            }
        }
    }

    fn window_event(&mut self, el: &ActiveEventLoop, _: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested => el.exit(),
            WindowEvent::Resized(size) => {
                if let Some(s) = self.scene.as_mut() {
                    s.config.width = size.width.max(1);
                    s.config.height = size.height.max(1);
                    s.surface.configure(&s.gpu.device, &s.config);
                }
            }
            WindowEvent::RedrawRequested => {
                if let Err(e) = self.frame() {
                    self.error = Some(e);
                    el.exit();
                    return;
                }
                let enough = self.args.frames.is_some_and(|n| self.stats.frames >= n);
                if enough && self.stats.done {
                    el.exit();
                } else if let Some(s) = &self.scene {
                    s.window.request_redraw();
                }
            }
            _ => {}
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut app = App {
        args: args()?,
        scene: None,
        stats: Stats::default(),
        error: None,
    };
    EventLoop::new()?.run_app(&mut app)?;
    if let Some(e) = app.error {
        return Err(e);
    }
    let st = &mut app.stats;
    st.generating_frame_times.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let n = st.generating_frame_times.len();
    println!();
    println!(
        "frames {} ({} while generating), tokens {}, steps {}; frame time while generating: \
         median {:.1} ms, max {:.1} ms",
        st.frames,
        st.frames_generating,
        st.tokens,
        st.steps,
        ms(st.generating_frame_times.get(n / 2)),
        ms(st.generating_frame_times.last()),
    );
    Ok(())
}
