//! The gpt-oss model: config, checkpoint loading, the forward graph and its KV cache.
pub mod inputs;
