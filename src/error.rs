//! The library's error type. Every failure a user can cause (bad checkpoint, bad request, missing
//! adapter feature) maps to one variant with a message that names the file, tensor or limit.

/// What a JSON document that failed to deserialize got wrong: the path of the field at fault
/// (`messages[0].content`; a missing field's own, `messages[0].role`, where its parent is known)
/// and serde's message. The path is None at the top level, and where serde lost it (inside a
/// flattened or untagged part).
pub(crate) fn json_fault<E: std::fmt::Display>(
    e: serde_path_to_error::Error<E>,
) -> (Option<String>, String) {
    let parent = (e.path().iter().next().is_some()).then(|| e.path().to_string());
    let message = e.into_inner().to_string();
    let path = match (parent, missing_field(&message)) {
        (Some(p), Some(name)) => Some(format!("{p}.{name}")),
        (p, _) => p,
    };
    (path, message)
}

/// The field a serde message says is missing. serde names it only in the message, and the path
/// stops at its parent, or is lost inside a flattened or untagged part.
pub(crate) fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Errors from loading, building and running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor whose shape disagrees with the config.
    #[error("{file}: tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        /// Where the tensor came from (a file, or the kernel that checked it).
        file: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// Something the adapter cannot hold or do.
    #[error("{what} needs {needed}, but the adapter allows at most {max}")]
    Limit { what: String, needed: u64, max: u64 },
    /// A feature of the checkpoint or request that this crate does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A checkpoint that is missing, truncated or malformed.
    #[error("checkpoint: {0}")]
    Weights(String),
    /// A config.json value that is missing or invalid (the message names the file where known).
    #[error("{0}")]
    Config(String),
    /// A shader that failed to preprocess or compile.
    #[error("shader `{key}`: {msg}")]
    Shader { key: String, msg: String },
    /// The GPU device could not be created, was lost, or reported an error.
    #[error("GPU: {0}")]
    Device(String),
    /// A request that cannot be served as given (the message says which value and why).
    #[error("{0}")]
    Request(String),
    /// The same for a value of a named request field (an API's error body names it).
    #[error("{message}")]
    Field {
        field: &'static str,
        message: String,
    },
    /// Tokenizer loading or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model could not be loaded (serve loads it after opening its port).
    #[error("loading the model: {0}")]
    Load(String),
    /// A file could not be read or written. The OS error is part of the message, not a separate
    /// source, so that error chains do not print it twice.
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A refusal of the request field `field` (an API's error body names it).
    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        Error::Field {
            field,
            message: message.into(),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<std::path::Path>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            err,
        }
    }
}
