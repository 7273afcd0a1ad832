//! Where tensor bytes come from: the shards' safetensors headers (`ShardIndex`: every tensor's
//! type, shape and byte range, no data), the `WeightSource` trait that adds the bytes, and on
//! native targets a checkpoint directory (config.json, safetensors shards, tokenizer.json) read
//! through memory maps, so the bytes go from the page cache to the GPU without a second host copy.
//! The browser reads the same headers and streams the ranges itself (`web`).

use std::collections::HashMap;
use std::ops::Range;

use crate::error::{Error, Result};

/// Element types the checkpoint may hold; any other is kept by its safetensors name, for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    BF16,
    U8,
    F32,
    Other(&'static str),
}

/// The safetensors element types the model never holds.
const OTHER_DTYPES: &[&str] = &[
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U16", "U32", "U64", "I8", "I16", "I32", "I64", "F8_E5M2",
    "F8_E4M3", "F8_E8M0", "F16", "F64", "C64",
];

impl DType {
    fn parse(s: &str) -> DType {
        match s {
            "BF16" => DType::BF16,
            "U8" => DType::U8,
            "F32" => DType::F32,
            other => DType::Other(
                OTHER_DTYPES
                    .iter()
                    .find(|n| **n == other)
                    .copied()
                    .unwrap_or("an unknown type"),
            ),
        }
    }

    /// Bytes per element (None for types the model never holds).
    fn size(self) -> Option<u64> {
        match self {
            DType::BF16 => Some(2),
            DType::U8 => Some(1),
            DType::F32 => Some(4),
            DType::Other(_) => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            DType::BF16 => "BF16",
            DType::U8 => "U8",
            DType::F32 => "F32",
            DType::Other(name) => name,
        })
    }
}

/// One tensor as its shard's header describes it.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Index of its file in [`ShardIndex::files`].
    pub file: usize,
    /// Its bytes within that file (header included in the offsets).
    pub range: Range<u64>,
}

impl TensorInfo {
    pub fn bytes(&self) -> u64 {
        self.range.end - self.range.start
    }
}

/// The safetensors headers of a checkpoint's shards: where every tensor lies.
#[derive(Default, Debug)]
pub struct ShardIndex {
    pub files: Vec<String>,
    tensors: HashMap<String, TensorInfo>,
}

/// Largest header accepted (safetensors' own limit).
const MAX_HEADER: u64 = 100 << 20;

impl ShardIndex {
    /// The length of the header JSON, from a file's first 8 bytes.
    pub fn header_len(file: &str, first: &[u8]) -> Result<u64> {
        let n: [u8; 8] = first
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Weights(format!("{file}: shorter than a safetensors header")))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER {
            return Err(Error::Weights(format!(
                "{file}: not a valid safetensors file: header of {n} bytes"
            )));
        }
        Ok(n)
    }

    /// Adds one shard: `head` holds at least its first 8 + header-length bytes, `file_len` is the
    /// whole file's size. A corrupt header, or tensors that run past the end of the file (a
    /// truncated download), are errors naming the file.
    pub fn add(&mut self, file: &str, head: &[u8], file_len: u64) -> Result<()> {
        let bad = |m: String| Error::Weights(format!("{file}: not a valid safetensors file: {m}"));
        let n = Self::header_len(file, head)?;
        let data_start = 8 + n;
        let json = head
            .get(8..data_start as usize)
            .ok_or_else(|| bad(format!("header of {n} bytes, only {} read", head.len())))?;
        if data_start > file_len {
            return Err(bad(format!("header of {n} bytes in a file of {file_len}")));
        }
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let index = self.files.len();
        let mut found = Vec::new();
        for (name, t) in v {
            if name == "__metadata__" {
                continue;
            }
            let desc: Header =
                serde_json::from_value(t).map_err(|e| bad(format!("`{name}`: {e}")))?;
            let [a, b] = desc.data_offsets;
            let dtype = DType::parse(&desc.dtype);
            let elems = desc
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let expected = dtype.size().zip(elems).and_then(|(s, e)| s.checked_mul(e));
            if b < a || expected.is_some_and(|e| e != b - a) {
                return Err(bad(format!(
                    "`{name}` has data_offsets [{a}, {b}] for shape {:?} {}",
                    desc.shape, desc.dtype
                )));
            }
            let range = data_start + a..data_start + b;
            if range.end > file_len {
                return Err(Error::Weights(format!(
                    "{file}: truncated: tensor `{name}` ends at byte {} but the file has {file_len} \
                     (an interrupted download?)",
                    range.end
                )));
            }
            found.push((
                name,
                TensorInfo {
                    dtype,
                    shape: desc.shape,
                    file: index,
                    range,
                },
            ));
        }
        self.files.push(file.to_string());
        self.tensors.extend(found);
        Ok(())
    }

    /// The tensor's description, or an error naming what is missing and where it was looked for.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| {
            Error::Weights(format!(
                "tensor `{name}` is missing (looked in {})",
                self.files.join(", ")
            ))
        })
    }

    /// The file a tensor came from, for messages.
    pub fn file_of(&self, t: &TensorInfo) -> &str {
        &self.files[t.file]
    }
}

#[derive(serde::Deserialize)]
struct Header {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// A checkpoint's tensors with their bytes at hand.
pub trait WeightSource {
    fn index(&self) -> &ShardIndex;
    /// The bytes of a tensor the index lists.
    fn data(&self, t: &TensorInfo) -> &[u8];
}

/// Safetensors files held in memory (or memory-mapped), indexed by tensor name.
pub struct Shards<B: AsRef<[u8]>> {
    data: Vec<B>,
    index: ShardIndex,
}

/// One tensor's description and bytes.
pub struct TensorRef<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl<B: AsRef<[u8]>> Shards<B> {
    /// Parses each file's header; a corrupt header or data that runs past the end of the file is
    /// an error naming the file.
    pub fn new(files: Vec<(String, B)>) -> Result<Self> {
        let mut index = ShardIndex::default();
        let mut data = Vec::new();
        for (name, bytes) in files {
            let b = bytes.as_ref();
            index.add(&name, b, b.len() as u64)?;
            data.push(bytes);
        }
        Ok(Shards { data, index })
    }

    /// A tensor and its bytes.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let t = self.index.info(name)?;
        Ok(TensorRef {
            dtype: t.dtype,
            shape: &t.shape,
            data: self.data(t),
        })
    }
}

impl<B: AsRef<[u8]>> WeightSource for Shards<B> {
    fn index(&self) -> &ShardIndex {
        &self.index
    }

    fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.data[t.file].as_ref()[t.range.start as usize..t.range.end as usize]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard's header as safetensors writes it: length, JSON, no data needed beyond `len`.
    fn header(json: &str) -> Vec<u8> {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b
    }

    #[test]
    fn element_types_the_model_never_holds_keep_their_names() {
        let h = header(
            r#"{"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
                "b": {"dtype": "Q4_K", "shape": [2], "data_offsets": [16, 18]},
                "c": {"dtype": "BF16", "shape": [2], "data_offsets": [18, 22]}}"#,
        );
        let mut index = ShardIndex::default();
        index.add("s.safetensors", &h, h.len() as u64 + 22).unwrap();
        let name = |t: &str| index.info(t).unwrap().dtype.to_string();
        assert_eq!(name("a"), "F64");
        assert_eq!(name("b"), "an unknown type");
        assert_eq!(name("c"), "BF16");
        // A known type's sizes are checked against the shape.
        let bad = header(r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}"#);
        let e = ShardIndex::default()
            .add("s.safetensors", &bad, bad.len() as u64 + 4)
            .unwrap_err();
        assert!(e.to_string().contains("data_offsets [0, 4]"), "{e}");
    }
}
