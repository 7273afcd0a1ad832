//! The gpt-oss model: config, checkpoint loading, the forward graph and its KV cache.
pub mod config;
pub mod gpt_oss;
#[cfg(feature = "native")]
pub mod hub;
pub mod inputs;
pub mod kv_cache;
pub mod tensors;
pub mod upload;
pub mod weights;

pub use config::{HfConfig, ModelConfig};
pub use gpt_oss::{Batch, Model, ModelOptions, Pass};
pub use inputs::TokenInfo;
