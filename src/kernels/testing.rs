//! Helpers for kernel tests: the devices to test on (default and portable), fresh seeds, error
//! measures and bf16 packing.
//!
//! On lavapipe (CI's device) an invocation's loops stop after about 65535 trips in all (llvmpipe's
//! loop limiter), so a test shape must keep every invocation's loop trips well under that (a
//! workgroup striding over rows, a lane walking k), or it tests the limiter (PERF.md v0.25).

use crate::gpu::{Gpu, GpuOptions, Rows, Split};
use crate::rng::Rng;

/// Declares the async fn of the same name as a kernel test: natively a `#[test]` that blocks on
/// it, in the browser (`cargo test --target wasm32-unknown-unknown`) a wasm-bindgen test that
/// awaits it, since nothing may block there.
macro_rules! gpu_test {
    ($name:ident) => {
        mod $name {
            #[cfg(not(target_arch = "wasm32"))]
            #[test]
            fn run() {
                pollster::block_on(super::$name())
            }

            #[cfg(target_arch = "wasm32")]
            #[wasm_bindgen_test::wasm_bindgen_test]
            async fn run() {
                super::$name().await
            }
        }
    };
}
pub(crate) use gpu_test;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// The devices every kernel test runs on: the adapter's fast path (subgroups where it has them)
/// and the portable path. Empty when there is no adapter, unless GPT_OSS_REQUIRE_GPU is set.
pub async fn gpus() -> &'static [Gpu] {
    #[cfg(not(target_arch = "wasm32"))]
    {
        // Opened once for all tests (blocking is fine natively; it also keeps parallel tests
        // from each opening their own).
        static GPUS: std::sync::OnceLock<Vec<Gpu>> = std::sync::OnceLock::new();
        GPUS.get_or_init(|| pollster::block_on(open_all()))
    }
    #[cfg(target_arch = "wasm32")]
    {
        // One thread in the browser; the devices live as long as the test page.
        thread_local!(static GPUS: std::cell::Cell<Option<&'static [Gpu]>> = const { std::cell::Cell::new(None) });
        if let Some(g) = GPUS.with(|g| g.get()) {
            return g;
        }
        let found: &'static [Gpu] = Box::leak(open_all().await.into_boxed_slice());
        GPUS.with(|g| g.set(Some(found)));
        found
    }
}

async fn open_all() -> Vec<Gpu> {
    let mut out = Vec::new();
    for portable in [false, true] {
        let opts = GpuOptions {
            portable,
            ..Default::default()
        };
        match Gpu::new(&opts).await {
            Ok(g) => out.push(g),
            Err(e) => {
                assert!(
                    std::env::var("GPT_OSS_REQUIRE_GPU").is_err(),
                    "GPT_OSS_REQUIRE_GPU is set but no device: {e}"
                );
                eprintln!("skipping GPU test: {e}");
            }
        }
    }
    out
}

/// A fresh seed per run (or GPT_OSS_SEED to replay), printed so a failure can be reproduced.
pub fn seeded(test: &str) -> Rng {
    let seed = std::env::var("GPT_OSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_nanos);
    eprintln!("{test}: GPT_OSS_SEED={seed}");
    Rng::new(seed)
}

fn now_nanos() -> u64 {
    #[cfg(not(target_arch = "wasm32"))]
    return std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    #[cfg(target_arch = "wasm32")]
    return (js_sys::Date::now() * 1e6) as u64;
}

/// Normalized mean squared error of `got` against `want`.
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    num / den.max(1e-30)
}

/// Largest absolute difference.
pub fn max_abs(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max)
}

pub fn random(rng: &mut Rng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| rng.symmetric(a)).collect()
}

/// v rounded to the nearest f16 (clamped to its range first, as the kernels clamp).
pub fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_f32()
}

/// Random values already rounded to bf16, with their packed bytes.
pub fn random_bf16(rng: &mut Rng, n: usize, a: f32) -> (Vec<f32>, Vec<u8>) {
    let v: Vec<half::bf16> = (0..n)
        .map(|_| half::bf16::from_f32(rng.symmetric(a)))
        .collect();
    let f = v.iter().map(|x| x.to_f32()).collect();
    (f, bytemuck::cast_slice(&v).to_vec())
}

pub fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// bf16 rows [n, k] (packed bytes) uploaded in buffers of `split` rows, as the model splits
/// matrices over buffers.
pub fn split_rows(gpu: &Gpu, bytes: &[u8], n: usize, k: usize, split: usize) -> Split {
    let chunks = (0..n)
        .step_by(split)
        .map(|s| {
            let c = split.min(n - s);
            Rows {
                buffer: gpu
                    .upload("rows", &bytes[s * k * 2..(s + c) * k * 2])
                    .unwrap(),
                start: s as u32,
                count: c as u32,
            }
        })
        .collect();
    Split { chunks }
}

/// RMSNorm(x) * g of one row, computed in f64: the reference for plain and fused norms.
pub fn rmsnorm_ref(x: &[f32], g: &[f32], eps: f64) -> Vec<f32> {
    let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(g)
        .map(|(v, w)| (*v as f64 * inv * *w as f64) as f32)
        .collect()
}

/// RoPE on one head by halves (dims i and i + D/2 pair up) with (cos, sin) per pair.
pub fn rotate_halves(v: &mut [f32], cs: &[[f32; 2]]) {
    let half = v.len() / 2;
    for i in 0..half {
        let (x1, x2) = (v[i], v[i + half]);
        v[i] = x1 * cs[i][0] - x2 * cs[i][1];
        v[i + half] = x2 * cs[i][0] + x1 * cs[i][1];
    }
}

/// A random (cos, sin) table of `n` pairs, scaled as YaRN's attention factor scales it.
pub fn random_rope_table(rng: &mut Rng, n: usize) -> Vec<[f32; 2]> {
    (0..n)
        .map(|_| {
            let a = rng.symmetric(3.0);
            [a.cos() * 1.3, a.sin() * 1.3]
        })
        .collect()
}

/// A KV-cache pool read back as f32 (`len` elements, stored in f16 or f32).
pub async fn read_kv(gpu: &Gpu, buf: &wgpu::Buffer, len: usize, f16: bool) -> Vec<f32> {
    if f16 {
        let raw = gpu.read(buf, len as u64 * 2).await.unwrap();
        let h: Vec<half::f16> = bytemuck::pod_collect_to_vec(&raw);
        h.iter().map(|v| v.to_f32()).collect()
    } else {
        gpu.read_f32(buf, len).await.unwrap()
    }
}

/// Checks cached keys or values against the exact values they were computed from: each is
/// the kernel's f32 result, whose sums round differently from the reference's (allowed: 1e-5 of
/// the values' rms, far above f32 rounding and far below any wrong value), rounded to f16 when
/// the cache is f16 (half an f16 step: unit roundoff 2^-11, subnormal steps 2^-24).
pub fn assert_kv_close(got: &[f32], want: &[f32], f16: bool) {
    assert_eq!(got.len(), want.len());
    let rms = (want.iter().map(|w| (w * w) as f64).sum::<f64>() / want.len().max(1) as f64).sqrt();
    let sums = 1e-5 * rms as f32;
    let (rel, abs) = if f16 {
        (2f32.powi(-11), 2f32.powi(-25))
    } else {
        (0.0, 0.0)
    };
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= w.abs() * rel + abs + sums,
            "cached {g} for {w} (f16 {f16}, rms {rms})"
        );
    }
}
