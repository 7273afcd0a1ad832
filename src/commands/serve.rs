//! `serve`: the OpenAI-compatible HTTP API.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use gpt_oss_wgpu::serve::ServeConfig;

use super::*;

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port to listen on (0 picks a free one; the address is printed once the model is ready).
    #[arg(long, default_value_t = 8000)]
    pub(crate) port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "GPT_OSS_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// The model name clients send and /v1/models lists (default: --model as given).
    #[arg(long)]
    pub(crate) served_model_name: Option<String>,
    /// Most sequences decoding together (each holds a KV-cache slot).
    #[arg(long, default_value_t = 8, value_parser = positive())]
    pub(crate) max_num_seqs: u32,
    /// Requests that may wait for a free sequence; more get 503.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_queue: usize,
}

pub(crate) fn serve(a: &ServeArgs) -> Result<()> {
    let ckpt = open(&a.model)?;
    let cfg = ServeConfig {
        host: a.host.clone(),
        port: a.port,
        model_name: a
            .served_model_name
            .clone()
            .unwrap_or_else(|| a.model.model.clone()),
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        max_queue: a.max_queue,
        max_body: 32 << 20,
    };
    let name = cfg.model_name.clone();
    let (mut m, seqs) = (a.model.clone(), a.max_num_seqs);
    // Decode tokens wait for the pass that carries a prompt's chunk: shorter passes than one
    // sequence's default keep the other streams' tokens coming (H100, 64 clients: P99
    // inter-token latency 53 ms at 512 against 133 ms at 2048; PERF.md v0.52).
    m.chunk.get_or_insert(512);
    eprintln!(
        "opening {}:{} (503 on /health until the model is loaded)",
        a.host, a.port
    );
    gpt_oss_wgpu::serve::run(
        cfg,
        move || load(&m, ckpt, seqs, None).map_err(|e| gpt_oss_wgpu::Error::Load(format!("{e:#}"))),
        move |addr| {
            println!("serving {name} at http://{addr}/v1 (Ctrl-C to stop)");
            let _ = std::io::stdout().flush();
        },
    )?;
    eprintln!("stopped");
    Ok(())
}
