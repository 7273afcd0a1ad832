//! Where tensor bytes come from: the `WeightSource` trait, and on native targets a checkpoint
//! directory (config.json, safetensors shards, tokenizer.json) read through memory maps, so the
//! bytes go from the page cache to the GPU without a second host copy.

use crate::error::{Error, Result};

/// Element types the checkpoint may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    BF16,
    U8,
    F32,
    Other,
}

/// One tensor's description and bytes.
pub struct TensorRef<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
    /// The file it came from, for error messages.
    pub file: &'a str,
}

/// A set of named tensors.
pub trait WeightSource {
    /// The tensor, or an error naming what is missing.
    fn tensor(&self, name: &str) -> Result<TensorRef<'_>>;
}

fn dtype_of(d: safetensors::Dtype) -> DType {
    match d {
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::U8 => DType::U8,
        safetensors::Dtype::F32 => DType::F32,
        _ => DType::Other,
    }
}

/// Safetensors files held in memory (or memory-mapped), indexed by tensor name.
pub struct Shards<B: AsRef<[u8]>> {
    files: Vec<(String, B)>,
    index: std::collections::HashMap<String, (usize, DType, Vec<usize>, std::ops::Range<usize>)>,
}

impl<B: AsRef<[u8]>> Shards<B> {
    /// Parses each file's header; a corrupt header or data that runs past the end of the file is
    /// an error naming the file.
    pub fn new(files: Vec<(String, B)>) -> Result<Self> {
        let mut index = std::collections::HashMap::new();
        for (i, (name, bytes)) in files.iter().enumerate() {
            let st = safetensors::SafeTensors::deserialize(bytes.as_ref()).map_err(|e| {
                Error::Weights(format!("{name}: not a valid safetensors file: {e}"))
            })?;
            let base = bytes.as_ref().as_ptr() as usize;
            for (tname, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - base;
                let range = start..start + view.data().len();
                index.insert(
                    tname,
                    (i, dtype_of(view.dtype()), view.shape().to_vec(), range),
                );
            }
        }
        Ok(Shards { files, index })
    }
}

impl<B: AsRef<[u8]>> WeightSource for Shards<B> {
    fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let (i, dtype, shape, range) = self.index.get(name).ok_or_else(|| {
            let files: Vec<&str> = self.files.iter().map(|(n, _)| n.as_str()).collect();
            Error::Weights(format!(
                "tensor `{name}` is missing (looked in {})",
                files.join(", ")
            ))
        })?;
        let (file, bytes) = &self.files[*i];
        Ok(TensorRef {
            dtype: *dtype,
            shape: shape.clone(),
            data: &bytes.as_ref()[range.clone()],
            file,
        })
    }
}

#[cfg(feature = "native")]
pub use native::{Checkpoint, load_dir, shard_names};

#[cfg(feature = "native")]
mod native {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::model::config::{HfConfig, Ids, ModelConfig};
    use crate::tokenizer::Tokenizer;

    /// A checkpoint directory opened for loading: everything but the tensor bytes is read.
    pub struct Checkpoint {
        pub dir: PathBuf,
        pub config: ModelConfig,
        pub shards: Shards<memmap2::Mmap>,
        /// tokenizer.json, or the built-in gpt-oss tokenizer when the directory has none.
        pub tokenizer: Option<Tokenizer>,
        /// True when `tokenizer` is the built-in one.
        pub builtin_tokenizer: bool,
        /// generation_config.json's `eos_token_id`, if any.
        pub eos: Vec<u32>,
    }

    fn read(path: &Path) -> Result<String> {
        std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
    }

    /// The shard files model.safetensors.index.json names (each once, in order; names that would
    /// leave the folder are dropped), or None when `dir` has no index.
    pub fn shard_names(dir: &Path) -> Result<Option<Vec<String>>> {
        let index_path = dir.join("model.safetensors.index.json");
        if !index_path.exists() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_str(&read(&index_path)?)
            .map_err(|e| Error::Weights(format!("{}: {e}", index_path.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Weights(format!("{}: no `weight_map`", index_path.display())))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .filter(|n| !n.contains('/') && !n.contains(".."))
            .collect();
        files.sort();
        files.dedup();
        Ok(Some(files))
    }

    /// Opens `dir`: validates config.json, finds the shards (through model.safetensors.index.json
    /// or a single model.safetensors), maps them and checks their headers, and reads the
    /// tokenizer and generation_config.json. No tensor data is read.
    pub fn load_dir(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(Error::Weights(format!(
                "{} is not a directory (--model takes a checkpoint directory holding \
                 config.json and the safetensors shards)",
                dir.display()
            )));
        }
        let config_path = dir.join("config.json");
        let config = HfConfig::from_json(&read(&config_path)?)
            .and_then(|c| c.validate())
            .map_err(|e| Error::Config(format!("{}: {e}", config_path.display())))?;
        let names = match shard_names(dir)? {
            Some(names) => names,
            None if dir.join("model.safetensors").exists() => vec!["model.safetensors".into()],
            None => {
                return Err(Error::Weights(format!(
                    "{}: neither model.safetensors.index.json nor model.safetensors found",
                    dir.display()
                )));
            }
        };
        let mut files = Vec::new();
        for n in names {
            let path = dir.join(&n);
            let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the map is read-only; a file truncated while mapped would fault, which is
            // the usual caveat of memory-mapped checkpoints in every runtime.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(&path, e))?;
            files.push((path.display().to_string(), map));
        }
        let shards = Shards::new(files)?;
        let tok_path = dir.join("tokenizer.json");
        let (tokenizer, builtin_tokenizer) = if tok_path.exists() {
            (Some(Tokenizer::from_file(&tok_path)?), false)
        } else {
            // The released models all use o200k_base plus the Harmony ids; a vocabulary too
            // small for its byte tokens (a test model) simply has no tokenizer.
            match crate::tokenizer::gpt_oss_tokenizer_json(config.vocab) {
                Ok(json) => (Some(Tokenizer::from_bytes(json.as_bytes())?), true),
                Err(_) => (None, false),
            }
        };
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            eos: generation_eos(&dir.join("generation_config.json"))?,
            config,
            shards,
            tokenizer,
            builtin_tokenizer,
        })
    }

    /// `eos_token_id` of generation_config.json (none when the file is absent).
    fn generation_eos(path: &Path) -> Result<Vec<u32>> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(Vec::new());
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))?;
        match v.get("eos_token_id") {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(ids) => serde_json::from_value::<Ids>(ids.clone())
                .map(|ids| ids.to_vec())
                .map_err(|e| Error::Config(format!("{}: eos_token_id: {e}", path.display()))),
        }
    }
}
