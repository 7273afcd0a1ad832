//! Checkpoints whose greedy output is a chosen token sequence, to drive tool calls, reasoning
//! and content through `serve` end to end (random weights never emit Harmony messages).
//!
//! One layer. The MoE's down projections are zero, so the residual is the embedding plus one
//! attention head, and lm_head over it is a successor table: script token t embeds as
//! `e0 + e[dim(t)]` (every other token as `e0`), and lm_head's row for u holds `e[dim(t)]` for
//! each t that u follows. A token may be followed by different tokens before and after a
//! marker token (Harmony repeats `<|channel|>` and `<|message|>` in every message): the head
//! attends to the marker alone (its key is +B, every other key -B, the sink 0), so its output,
//! copied into dim 1, is 1 once the marker has been generated and 0 before; lm_head rows of
//! tokens that follow only after the marker add `0.5 e1 - 0.25 e0`, which wins exactly then.

use std::collections::HashMap;
use std::path::Path;

use super::{Entry, SynthSpec, write_with};
use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, gpt_oss_tokenizer_json};

const HIDDEN: usize = 128;
const HEAD_DIM: usize = 64;
/// |key| of the marker and of every other token; with the query below the scores are about
/// +-29, so the marker takes all the attention once present and nothing takes any before.
const KEY: f32 = 16.0;
const QUERY: f32 = 8.0;
/// lm_head's weight on dim 1 and dim 0 for tokens that follow only after the marker.
const AFTER: f32 = 0.5;
const BEFORE: f32 = 0.25;

/// Writes into `dir` a one-layer checkpoint (full vocabulary and tokenizer) whose greedy
/// continuation of any prompt ending in the first token of `script` is the rest of it. `script`
/// is text with Harmony's special tokens, e.g. `assistant<|channel|>final<|message|>Hi<|return|>`.
/// Each token must have one successor, or one before and one after `marker` (a word that is one
/// token, which must not occur in the prompt). At most 126 distinct tokens.
pub fn write_scripted(dir: &Path, script: &str, marker: Option<&str>) -> Result<()> {
    let spec = SynthSpec {
        hidden: HIDDEN as u32,
        inter: 64,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        head_dim: HEAD_DIM as u32,
        experts: 4,
        top_k: 2,
        sliding_window: 128,
        ..SynthSpec::preset("tiny")?
    };
    let tok = Tokenizer::from_bytes(gpt_oss_tokenizer_json(spec.vocab)?.as_bytes())?;
    let ids = tok.encode(script)?;
    let marker = match marker {
        None => None,
        Some(m) => match tok.encode(m)?[..] {
            [id] => Some(id),
            _ => {
                return Err(Error::Config(format!(
                    "script: the marker `{m}` is not a single token"
                )));
            }
        },
    };
    let table = Table::new(&ids, marker, spec.vocab)?;
    write_with(dir, &spec, &|t: &Entry| table.tensor(t), &mut |_, _| {})
}

/// The successor table the weights encode.
struct Table {
    /// Token -> its one-hot dimension (2..HIDDEN).
    dims: HashMap<u32, usize>,
    /// (token, successor, before the marker, after it): both flags when the successor is the
    /// same either side.
    pairs: Vec<(u32, u32, bool, bool)>,
    marker: Option<u32>,
    vocab: usize,
}

impl Table {
    fn new(script: &[u32], marker: Option<u32>, vocab: u32) -> Result<Table> {
        let bad = |m: String| Err(Error::Config(format!("script: {m}")));
        let phase_from = match marker {
            Some(m) => match script.iter().position(|&t| t == m) {
                Some(i) => i,
                None => return bad(format!("the marker {m} is not in the script")),
            },
            None => script.len(),
        };
        let mut dims = HashMap::new();
        for &t in script {
            if t >= vocab {
                return bad(format!("token {t} is outside the vocabulary"));
            }
            let next = dims.len() + 2;
            dims.entry(t).or_insert(next);
        }
        if dims.len() + 2 > HIDDEN {
            return bad(format!(
                "{} distinct tokens; at most {}",
                dims.len(),
                HIDDEN - 2
            ));
        }
        // successor[(token, after)] = next token
        let mut succ: HashMap<(u32, bool), u32> = HashMap::new();
        for (i, w) in script.windows(2).enumerate() {
            let after = i >= phase_from;
            if let Some(&other) = succ.get(&(w[0], after))
                && other != w[1]
            {
                return bad(format!(
                    "token {} is followed by both {other} and {} (add a marker between them)",
                    w[0], w[1]
                ));
            }
            succ.insert((w[0], after), w[1]);
        }
        let mut pairs = Vec::new();
        for (&(t, after), &u) in &succ {
            match succ.get(&(t, !after)) {
                // The same successor either side: one unconditional pair, listed once.
                Some(&v) if v == u => {
                    if !after {
                        pairs.push((t, u, true, true));
                    }
                }
                Some(_) => pairs.push((t, u, !after, after)),
                None => pairs.push((t, u, true, true)),
            }
        }
        // A token whose successor changes at the marker must see the earlier one without the
        // later-only weights, or the two tie before the marker.
        let later: Vec<u32> = pairs.iter().filter(|p| !p.2).map(|p| p.1).collect();
        if let Some(p) = pairs.iter().find(|p| !p.3 && later.contains(&p.1)) {
            return bad(format!(
                "token {} follows {} before the marker and another token after it",
                p.1, p.0
            ));
        }
        Ok(Table {
            dims,
            pairs,
            marker,
            vocab: vocab as usize,
        })
    }

    /// The bytes of one tensor (bf16 or MXFP4), zero unless set below.
    fn tensor(&self, t: &Entry) -> Vec<u8> {
        let n: usize = t.shape.iter().product();
        if t.dtype() == "U8" {
            // MXFP4: code 0 is +0 whatever the scale; scales 127 are 2^0.
            let fill = if t.name.ends_with("_scales") { 127 } else { 0 };
            return vec![fill; n];
        }
        let mut w = vec![0f32; n];
        let name = t.name.as_str();
        let h = HIDDEN;
        // Normalized, a script token's embedding is sqrt(H / 2) on each of its two dims.
        let unit = (h as f32 / 2.0).sqrt();
        let marker_dim = self.marker.and_then(|m| self.dims.get(&m)).copied();
        // The rotary pair that turns slowest (dims d/2 - 1 and d - 1): over a short context
        // its rotation leaves the query-key product unchanged.
        let slow = HEAD_DIM / 2 - 1;
        if name.ends_with("norm.weight") || name.ends_with("layernorm.weight") {
            w.fill(1.0);
        } else if name == "model.embed_tokens.weight" {
            for v in 0..self.vocab {
                w[v * h] = 1.0;
            }
            for (&tok, &d) in &self.dims {
                w[tok as usize * h + d] = 1.0;
            }
        } else if name == "lm_head.weight" {
            for &(t, u, before, after) in &self.pairs {
                w[u as usize * h + self.dims[&t]] = 1.0;
                if after && !before {
                    w[u as usize * h + 1] = AFTER;
                    w[u as usize * h] = -BEFORE;
                }
            }
        } else if let Some(md) = marker_dim {
            // Head 0 reads the marker; head 1 (sharing its key and value head) is switched off
            // by a zero query and zero output columns.
            if name.ends_with("q_proj.bias") {
                w[slow] = QUERY;
            } else if name.ends_with("k_proj.bias") {
                w[slow] = -KEY;
            } else if name.ends_with("k_proj.weight") {
                w[slow * h + md] = 2.0 * KEY / unit;
            } else if name.ends_with("v_proj.weight") {
                w[md] = 1.0 / unit;
            } else if name.ends_with("o_proj.weight") {
                w[2 * HEAD_DIM] = 1.0; // row 1 (hidden dim 1), column 0 (head 0, value dim 0)
            }
        }
        w.iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect()
    }
}
