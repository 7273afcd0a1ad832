//! `bench-serve`: a load generator for an OpenAI-compatible server (ours or any other), as
//! `vllm bench serve` is: concurrent streaming completions of random token prompts, then
//! requests/s, output tokens/s, time to first token and inter-token latency percentiles.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use gpt_oss_wgpu::rng::Rng;
use serde_json::{Value, json};

use super::count_bar;

#[derive(Args)]
pub(crate) struct BenchServeArgs {
    /// The server: http://HOST:PORT (a trailing /v1 is fine).
    #[arg(long)]
    url: String,
    /// Model name to send (default: the first one /v1/models lists).
    #[arg(long)]
    model: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    max_concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 64)]
    num_prompts: usize,
    /// Prompt tokens per request (random ids, different for every request and run, so that no
    /// prefix cache serves them).
    #[arg(long, default_value_t = 128)]
    random_input_len: usize,
    /// Tokens generated per request (end-of-sequence ignored).
    #[arg(long, default_value_t = 128)]
    random_output_len: u32,
    /// Requests per second with Poisson arrivals (default: all at once, --max-concurrency at a
    /// time).
    #[arg(long)]
    request_rate: Option<f64>,
    /// Seed of the arrival times (prompts always differ).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "GPT_OSS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One request's timing.
struct Outcome {
    start: Instant,
    /// When each piece of text arrived.
    pieces: Vec<Instant>,
    end: Instant,
    output_tokens: u64,
}

/// The server's address (host:port) from a URL.
fn address(url: &str) -> Result<String> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url must start with http:// (got {url})");
    };
    let host = rest.trim_end_matches('/').trim_end_matches("/v1");
    if host.is_empty() || host.contains('/') {
        bail!("--url must be http://HOST:PORT (got {url})");
    }
    Ok(if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    })
}

/// Sends one request and returns the status and a reader at the start of the body (whose
/// chunk-size lines, when chunked, are skipped by the callers: they read `data:` lines or JSON).
fn send(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> Result<(u16, BufReader<TcpStream>)> {
    let mut c = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer from {addr}: {line:?}"))?;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    Ok((status, r))
}

/// The first JSON object in a (possibly chunked) body.
fn json_body(mut r: BufReader<TcpStream>) -> Result<Value> {
    let mut text = String::new();
    r.read_to_string(&mut text)?;
    let start = text.find('{').context("no JSON in the answer")?;
    let end = text.rfind('}').context("no JSON in the answer")?;
    Ok(serde_json::from_str(&text[start..=end])?)
}

/// Streams one completion and times its pieces.
fn run_one(addr: &str, key: Option<&str>, body: &Value) -> Result<Outcome> {
    let start = Instant::now();
    let (status, r) = send(addr, "POST", "/v1/completions", &body.to_string(), key)?;
    if status != 200 {
        let v = json_body(r).unwrap_or(Value::Null);
        bail!("HTTP {status}: {}", v["error"]["message"]);
    }
    let mut pieces = Vec::new();
    let mut output_tokens = None;
    for line in r.lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data)?;
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            output_tokens = Some(n);
        } else if v["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            pieces.push(Instant::now());
        }
    }
    Ok(Outcome {
        start,
        end: Instant::now(),
        output_tokens: output_tokens.unwrap_or(pieces.len() as u64),
        pieces,
    })
}

/// (mean, p50, p90, p99) in milliseconds.
fn summary(mut v: Vec<f64>) -> [f64; 4] {
    if v.is_empty() {
        return [0.0; 4];
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((p * v.len() as f64) as usize).min(v.len() - 1)] * 1e3;
    [
        v.iter().sum::<f64>() / v.len() as f64 * 1e3,
        q(0.5),
        q(0.9),
        q(0.99),
    ]
}

pub(crate) fn bench_serve(a: &BenchServeArgs) -> Result<()> {
    if a.max_concurrency == 0 || a.num_prompts == 0 || a.random_input_len == 0 {
        bail!("--max-concurrency, --num-prompts and --random-input-len must be at least 1");
    }
    if a.request_rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--request-rate must be a positive number of requests per second");
    }
    let addr = address(&a.url)?;
    let key = a.api_key.as_deref();
    let model = match &a.model {
        Some(m) => m.clone(),
        None => {
            let (status, r) = send(&addr, "GET", "/v1/models", "", key)?;
            let v = json_body(r)?;
            if status != 200 {
                bail!("GET /v1/models: HTTP {status}: {}", v["error"]["message"]);
            }
            v["data"][0]["id"]
                .as_str()
                .context("/v1/models lists no model")?
                .to_string()
        }
    };
    // Arrival offsets: Poisson at the given rate, else all at zero.
    let mut rng = Rng::new(a.seed);
    let mut t = 0.0;
    let arrivals: Vec<f64> = (0..a.num_prompts)
        .map(|_| {
            if let Some(rate) = a.request_rate {
                t += -(1.0 - rng.uniform() as f64).ln() / rate;
            }
            t
        })
        .collect();
    // Prompts: ids from a range every tokenizer of the family has, offset per run.
    let run = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let body = |i: usize| {
        let base = run.wrapping_add(i as u64 * 7919);
        let prompt: Vec<u64> = (0..a.random_input_len as u64)
            .map(|j| 1000 + base.wrapping_add(j * 31) % 150_000)
            .collect();
        json!({"model": model, "prompt": prompt, "max_tokens": a.random_output_len,
                   "temperature": 0, "ignore_eos": true, "stream": true,
                   "stream_options": {"include_usage": true}})
    };
    let bodies: Vec<Value> = (0..a.num_prompts).map(body).collect();
    eprintln!(
        "{} requests of {} prompt + {} output tokens to {model} at {addr}, {} at a time{}",
        a.num_prompts,
        a.random_input_len,
        a.random_output_len,
        a.max_concurrency,
        a.request_rate
            .map_or(String::new(), |r| format!(", {r} per second"))
    );
    // One request first, as vllm bench serve does: it checks the server answers and keeps
    // one-time costs (pipeline creation, first allocations) out of the figures.
    eprintln!("initial test run...");
    run_one(&addr, key, &body(a.num_prompts)).context("the initial test request failed")?;
    let pb = count_bar(a.num_prompts as u64, "requests");
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Result<Outcome>>> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..a.max_concurrency.min(a.num_prompts) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= a.num_prompts {
                        return;
                    }
                    let due = t0 + Duration::from_secs_f64(arrivals[i]);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let r = run_one(&addr, key, &bodies[i]);
                    pb.inc(1);
                    if let Ok(mut v) = results.lock() {
                        v.push(r);
                    }
                }
            });
        }
    });
    pb.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    let results = results.into_inner().unwrap_or_default();
    let (ok, failed): (Vec<_>, Vec<_>) = results.iter().partition(|r| r.is_ok());
    let ok: Vec<&Outcome> = ok.into_iter().filter_map(|r| r.as_ref().ok()).collect();
    if let Some(Err(e)) = failed.first() {
        eprintln!("{} requests failed; the first: {e:#}", failed.len());
    }
    let output: u64 = ok.iter().map(|o| o.output_tokens).sum();
    let input = (ok.len() * a.random_input_len) as u64;
    let ttft = summary(
        ok.iter()
            .filter_map(|o| o.pieces.first().map(|p| (*p - o.start).as_secs_f64()))
            .collect(),
    );
    let itl = summary(
        ok.iter()
            .flat_map(|o| o.pieces.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()))
            .collect(),
    );
    let latency = summary(ok.iter().map(|o| (o.end - o.start).as_secs_f64()).collect());
    let report = json!({
        "successful_requests": ok.len(), "failed_requests": failed.len(),
        "duration_s": wall, "request_throughput": ok.len() as f64 / wall,
        "output_throughput": output as f64 / wall,
        "total_token_throughput": (input + output) as f64 / wall,
        "total_input_tokens": input, "total_output_tokens": output,
        "max_concurrency": a.max_concurrency, "request_rate": a.request_rate,
        "mean_ttft_ms": ttft[0], "median_ttft_ms": ttft[1], "p90_ttft_ms": ttft[2],
        "p99_ttft_ms": ttft[3],
        "mean_itl_ms": itl[0], "median_itl_ms": itl[1], "p90_itl_ms": itl[2], "p99_itl_ms": itl[3],
        "mean_e2el_ms": latency[0], "median_e2el_ms": latency[1], "p99_e2el_ms": latency[3],
    });
    println!("{:=^50}", " Serving Benchmark Result ");
    let row = |k: &str, v: String| println!("{k:<40}{v:>10}");
    row("Successful requests:", ok.len().to_string());
    row("Failed requests:", failed.len().to_string());
    row("Benchmark duration (s):", format!("{wall:.2}"));
    row("Total input tokens:", input.to_string());
    row("Total generated tokens:", output.to_string());
    row(
        "Request throughput (req/s):",
        format!("{:.2}", ok.len() as f64 / wall),
    );
    row(
        "Output token throughput (tok/s):",
        format!("{:.2}", output as f64 / wall),
    );
    row(
        "Total token throughput (tok/s):",
        format!("{:.2}", (input + output) as f64 / wall),
    );
    for (title, name, s) in [
        ("Time to First Token", "TTFT", ttft),
        ("Inter-token Latency", "ITL", itl),
        ("End-to-end Latency", "E2EL", latency),
    ] {
        println!("{:-^50}", format!(" {title} "));
        for (what, v) in ["Mean", "Median", "P90", "P99"].iter().zip(s) {
            row(&format!("{what} {name} (ms):"), format!("{v:.2}"));
        }
    }
    println!("{:=^50}", "");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if ok.is_empty() {
        bail!("no request succeeded");
    }
    Ok(())
}
