//! What `/metrics` reports, kept by the engine loop: gauges of the batch and the KV cache,
//! counters, and latency histograms, rendered in Prometheus' text format.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::engine::Engine;

/// Bucket bounds (seconds) of the time to first token and request latency.
const LATENCY_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
];
/// Bucket bounds (seconds) of the time between two tokens of a request.
const ITL_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
];

/// A Prometheus histogram: counts per bucket (not cumulative), sum and count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(
            out,
            "# HELP gpt_oss:{name} {help}\n# TYPE gpt_oss:{name} histogram"
        );
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            let le = self.bounds.get(i).map_or("+Inf".into(), |b| b.to_string());
            let _ = writeln!(out, "gpt_oss:{name}_bucket{{le=\"{le}\"}} {seen}");
        }
        let _ = writeln!(
            out,
            "gpt_oss:{name}_sum {}\ngpt_oss:{name}_count {seen}",
            self.sum
        );
    }
}

/// Request latencies in seconds.
#[derive(Debug)]
pub struct Latency {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            ttft: Histogram::new(LATENCY_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
            e2e: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

/// Everything /metrics reports.
#[derive(Default)]
pub struct Stats {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    /// KV-cache blocks of full-attention and sliding-window layers: in the pool, held by
    /// running sequences, cached (held by none, kept for prefix reuse).
    pub blocks: [[AtomicU64; 3]; 2],
    pub prefix_queried: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub preemptions: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub requests_finished: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub latency: Mutex<Latency>,
}

impl Stats {
    /// Copies the engine's gauges and counters.
    pub fn update(&self, engine: &Engine) {
        self.running.store(engine.running() as u64, Relaxed);
        self.waiting.store(engine.waiting() as u64, Relaxed);
        for (kind, u) in self.blocks.iter().zip(engine.model.cache().usage()) {
            for (s, v) in kind.iter().zip([u.total, u.used, u.cached]) {
                s.store(v as u64, Relaxed);
            }
        }
        let e = engine.stats;
        self.prefix_queried.store(e.prefix_queried, Relaxed);
        self.prefix_hits.store(e.prefix_hits, Relaxed);
        self.preemptions.store(e.preemptions, Relaxed);
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP gpt_oss:{name} {help}\n# TYPE gpt_oss:{name} {kind}\ngpt_oss:{name} {v}"
            );
        };
        let n = |a: &AtomicU64| a.load(Relaxed).to_string();
        put(
            "num_requests_running",
            "gauge",
            "Requests holding a sequence slot.",
            n(&self.running),
        );
        put(
            "num_requests_waiting",
            "gauge",
            "Requests waiting for a slot or KV-cache blocks.",
            n(&self.waiting),
        );
        let mut usage: f64 = 0.0;
        for (kind, b) in ["full", "window"].iter().zip(&self.blocks) {
            let [total, used, cached] = b.each_ref().map(|a| a.load(Relaxed));
            let what = format!("KV-cache blocks of {kind}-attention layers");
            put(
                &format!("kv_cache_blocks_{kind}"),
                "gauge",
                &format!("{what} in the pool."),
                total.to_string(),
            );
            put(
                &format!("kv_cache_used_blocks_{kind}"),
                "gauge",
                &format!("{what} held by running requests."),
                used.to_string(),
            );
            put(
                &format!("kv_cache_free_blocks_{kind}"),
                "gauge",
                &format!("{what} no running request holds (cached ones included)."),
                (total - used).to_string(),
            );
            put(
                &format!("kv_cache_cached_blocks_{kind}"),
                "gauge",
                &format!("{what} kept only for prefix reuse."),
                cached.to_string(),
            );
            if total > 0 {
                usage = usage.max(used as f64 / total as f64);
            }
        }
        put(
            "kv_cache_usage_perc",
            "gauge",
            "Fraction of the fuller KV-cache pool held by running requests.",
            usage.to_string(),
        );
        put(
            "prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            n(&self.prefix_queried),
        );
        put(
            "prefix_cache_hits_total",
            "counter",
            "Prompt tokens found in the prefix cache.",
            n(&self.prefix_hits),
        );
        put(
            "num_preemptions_total",
            "counter",
            "Requests sent back to wait because the KV cache was full.",
            n(&self.preemptions),
        );
        put(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of accepted requests.",
            n(&self.prompt_tokens),
        );
        put(
            "generation_tokens_total",
            "counter",
            "Tokens generated.",
            n(&self.generated_tokens),
        );
        put(
            "request_success_total",
            "counter",
            "Requests that ran to their end.",
            n(&self.requests_finished),
        );
        put(
            "request_cancelled_total",
            "counter",
            "Requests whose client went away.",
            n(&self.requests_cancelled),
        );
        if let Ok(l) = self.latency.lock() {
            l.ttft.render(
                &mut out,
                "time_to_first_token_seconds",
                "Time from arrival to the first token.",
            );
            l.itl.render(
                &mut out,
                "inter_token_latency_seconds",
                "Time between two tokens of a request.",
            );
            l.e2e.render(
                &mut out,
                "e2e_request_latency_seconds",
                "Time from arrival to the last token.",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "X.");
        assert!(out.contains("gpt_oss:x_bucket{le=\"0.1\"} 2\n"), "{out}");
        assert!(out.contains("gpt_oss:x_bucket{le=\"1\"} 3\n"), "{out}");
        assert!(out.contains("gpt_oss:x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("gpt_oss:x_count 4\n"), "{out}");
        assert!(out.contains("gpt_oss:x_sum 3.65\n"), "{out}");
    }
}
