//! The Harmony chat format gpt-oss speaks: rendering conversations to token ids, the OpenAI
//! chat-completions mapping, and a streaming parser for the model's output. No GPU code here.

pub mod harmony;
pub mod openai;
pub mod parser;
pub mod schema;
pub mod session;
pub mod stop;

pub use harmony::{
    Content, DeveloperContent, Harmony, Message, ReasoningEffort, ResponseFormat, Role,
    SystemContent, ToolDescription,
};
pub use openai::{AssistantMessage, ChatRequest};
pub use parser::{ParsedMessage, StreamParser};
pub use session::{ChatSession, TurnEvent, TurnResult};
pub use stop::StopText;
