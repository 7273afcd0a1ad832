//! Device setup, shader variants, buffers and dispatch recording.
pub mod buffer;
pub mod context;
pub mod dispatch;
pub(crate) mod mirror;
pub mod shader;

pub use buffer::{Rows, Split};
pub use context::{Caps, Gpu, GpuOptions};
pub use dispatch::{Count, Dispatch, Grid, StepCounts};
pub use shader::ShaderKey;
