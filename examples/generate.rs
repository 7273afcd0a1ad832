//! The smallest program that runs gpt-oss through the library, on a wgpu device the application
//! already owns (as a game or editor would), streaming the completion to stdout.
//!
//!     cargo run --release --example generate -- MODEL_DIR "Once upon a time"

use std::io::Write;
use std::sync::Arc;

use gpt_oss_wgpu::{Engine, Event, Gpu, ModelOptions, Request, Sampling, StreamDecoder};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(prompt)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: generate MODEL_DIR PROMPT");
    };

    // The host application's device. Ask for subgroups and f16 where the adapter has them: the
    // engine uses whatever the device was created with.
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let wanted =
        wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() & wanted,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    let mut gpu = Gpu::from_device(device, queue, adapter.get_info());
    // Lets the `fast` precision run decode's expert products in f16 where the device keeps f16
    // subnormals (a one-dispatch check).
    pollster::block_on(gpu.probe_f16())?;
    let gpu = Arc::new(gpu);

    let mut engine = Engine::load_dir(gpu, dir.as_ref(), ModelOptions::default(), &mut |_, _| {})?;
    let tokenizer = engine
        .tokenizer
        .take()
        .ok_or_else(|| anyhow::anyhow!("{dir} has no tokenizer.json"))?;
    let request = Request {
        prompt: tokenizer.encode(&prompt)?,
        max_tokens: 64,
        sampling: Sampling {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
            seed: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    engine.submit(request)?;
    let mut text = StreamDecoder::default();
    while engine.has_work() {
        for event in pollster::block_on(engine.step())? {
            if let Event::Token { token, .. } = event
                && let Some(piece) = text.push(&tokenizer, token)?
            {
                print!("{piece}");
                std::io::stdout().flush()?;
            }
        }
    }
    println!();
    Ok(())
}
