//! gpt-oss on any GPU: OpenAI's gpt-oss models run as WGSL compute shaders on wgpu.
//!
//! The [`Engine`] loads a Hugging Face checkpoint directory and generates tokens; the modules
//! below it are the pieces: `gpu` (device, shaders, buffers), `kernels` (one per WGSL family),
//! `model` (config, weights, forward graph), `engine` (requests, sampling, the step loop),
//! `chat` (the Harmony format, the OpenAI mapping, chat sessions) and `tokenizer`.

#[cfg(feature = "native")]
pub mod bench;
pub mod chat;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod rng;
#[cfg(feature = "native")]
pub mod serve;
#[cfg(feature = "native")]
pub mod synth;
pub mod tokenizer;
#[cfg(all(target_arch = "wasm32", feature = "web"))]
pub mod web;

pub use engine::{Engine, Event, FinishReason, Request, RequestId, Sampling};
pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions};
pub use model::{ModelConfig, ModelOptions};
pub use tokenizer::{StreamDecoder, Tokenizer};
