//! The tokenizer: the model directory's tokenizer.json through the `tokenizers` crate, incremental
//! detokenization that never emits half a character, and (native) the gpt-oss tokenizer.json built
//! from the o200k_base ranks that `tiktoken-rs` ships, for synthetic checkpoints.

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_bytes(json: &[u8]) -> Result<Tokenizer> {
        let inner =
            tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokenizer { inner })
    }

    #[cfg(feature = "native")]
    pub fn from_file(path: &std::path::Path) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Encodes ordinary text: a special token spelled inside it is text, never a special id (the
    /// added-token pass is skipped; only the split pattern and the BPE model run).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        use tokenizers::{Model, OffsetType, PreTokenizedString, PreTokenizer};
        let err = |e: tokenizers::Error| Error::Tokenizer(e.to_string());
        let mut pts = PreTokenizedString::from(text);
        if let Some(pre) = self.inner.get_pre_tokenizer() {
            pre.pre_tokenize(&mut pts).map_err(err)?;
        }
        let model = self.inner.get_model();
        pts.tokenize(|piece| model.tokenize(piece.get()))
            .map_err(err)?;
        let enc = pts.into_encoding(None, 0, OffsetType::Byte).map_err(err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// The id of a special token such as `<|start|>`.
    pub fn special_id(&self, token: &str) -> Result<u32> {
        self.inner
            .token_to_id(token)
            .ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no `{token}`")))
    }

    /// Encodes text, turning spelled special tokens into their ids (raw-text generation).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The bytes a token stands for (a special token's text for special ids).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        piece
            .chars()
            .flat_map(|c| match byte_of_char(c) {
                Some(b) => vec![b],
                None => c.to_string().into_bytes(),
            })
            .collect()
    }

    /// The bytes of a sequence of tokens.
    pub fn token_bytes_of(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter().flat_map(|&i| self.token_bytes(i)).collect()
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Whether `id` is a token of this vocabulary.
    pub fn contains(&self, id: u32) -> bool {
        self.inner.id_to_token(id).is_some()
    }

    /// An error naming the first of `ids` outside the vocabulary (`decode` would skip it
    /// silently), if any.
    pub fn check_known(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&t| !self.contains(t)) {
            Some(bad) => Err(Error::Request(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab_size()
            ))),
            None => Ok(()),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Byte-level BPE writes byte b as a printable character: itself for printable Latin-1, else
/// U+0100 onwards in byte order. This is the inverse.
fn byte_of_char(c: char) -> Option<u8> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let u = c as u32;
    if u < 256 && printable(u) {
        return Some(u as u8);
    }
    let k = u.checked_sub(256)?;
    (0..256u32)
        .filter(|b| !printable(*b))
        .nth(k as usize)
        .map(|b| b as u8)
}

/// Turns a growing list of token ids into text pieces. A token that ends mid-character is held
/// back until the character completes (the decoded text would end in U+FFFD).
#[derive(Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Text already emitted is decode(ids[prefix..read]); new text is what decode(ids[prefix..])
    /// adds after it.
    prefix: usize,
    read: usize,
}

impl StreamDecoder {
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let done = tok.decode(&self.ids[self.prefix..self.read])?;
        let all = tok.decode(&self.ids[self.prefix..])?;
        if all.len() > done.len() && !all.ends_with('\u{fffd}') && all.is_char_boundary(done.len())
        {
            let piece = all[done.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }
}

/// Harmony's special tokens with ids; every other id from 200000 up is `<|reserved_N|>`.
pub const SPECIAL_TOKENS: &[(u32, &str)] = &[
    (199998, "<|startoftext|>"),
    (199999, "<|endoftext|>"),
    (200002, "<|return|>"),
    (200003, "<|constrain|>"),
    (200005, "<|channel|>"),
    (200006, "<|start|>"),
    (200007, "<|end|>"),
    (200008, "<|message|>"),
    (200012, "<|call|>"),
];

/// Ids from here up are special tokens.
pub const FIRST_SPECIAL: u32 = 199998;

/// The text of special id `id`.
pub fn special_name(id: u32) -> String {
    SPECIAL_TOKENS
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("<|reserved_{id}|>"))
}

#[cfg(feature = "native")]
pub use build::gpt_oss_tokenizer_json;

#[cfg(feature = "native")]
mod build {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    /// o200k_base's pre-tokenization pattern: words with their leading punctuation and
    /// contractions, digit runs of up to 3, punctuation runs, newlines, and whitespace.
    const O200K_PATTERN: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}",
        r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"|\s*[\r\n]+",
        r"|\s+(?!\S)",
        r"|\s+",
    );

    /// GPT-2's reversible map from bytes to printable characters, which byte-level BPE vocabularies use.
    fn byte_chars() -> Vec<char> {
        let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
        let mut map = vec!['\0'; 256];
        let mut extra = 0;
        for b in 0..256u32 {
            if !printable.contains(&b) {
                printable.push(b);
                map[b as usize] = char::from_u32(256 + extra).unwrap_or('?');
                extra += 1;
            } else {
                map[b as usize] = char::from_u32(b).unwrap_or('?');
            }
        }
        map
    }

    /// tokenizer.json for gpt-oss: o200k_base's ranks as a byte-level BPE (ranks become ids and the
    /// merges are derived so that BPE picks the same pieces as tiktoken), the o200k split pattern,
    /// and the Harmony special tokens. Ids at or above `vocab` are left out (small test models).
    pub fn gpt_oss_tokenizer_json(vocab: u32) -> Result<String> {
        let bpe = tiktoken_rs::o200k_base_singleton();
        let chars = byte_chars();
        let encode = |b: &[u8]| -> String { b.iter().map(|x| chars[*x as usize]).collect() };
        let n_ranks = FIRST_SPECIAL.min(vocab);
        if n_ranks < 256 {
            return Err(Error::Tokenizer(format!(
                "a vocabulary of {vocab} cannot hold the 256 byte tokens"
            )));
        }
        let mut bytes_of: Vec<Vec<u8>> = Vec::with_capacity(n_ranks as usize);
        for r in 0..n_ranks {
            bytes_of.push(
                bpe.decode_bytes(&[r])
                    .map_err(|e| Error::Tokenizer(format!("rank {r}: {e}")))?,
            );
        }
        let rank: HashMap<&[u8], u32> = bytes_of
            .iter()
            .enumerate()
            .map(|(r, b)| (b.as_slice(), r as u32))
            .collect();
        if (0..=255u8).any(|b| !rank.contains_key(&[b][..])) {
            return Err(Error::Tokenizer(format!(
                "a vocabulary of {vocab} leaves out some byte tokens"
            )));
        }
        // Every split of a token into two tokens is a merge, ordered by the merged token's rank
        // and then by the parts' ranks: BPE applying them in that order reproduces tiktoken.
        let mut merges: Vec<(u32, u32, u32)> = Vec::new();
        for (r, b) in bytes_of.iter().enumerate() {
            for i in 1..b.len() {
                if let (Some(&a), Some(&c)) = (rank.get(&b[..i]), rank.get(&b[i..])) {
                    merges.push((r as u32, a, c));
                }
            }
        }
        merges.sort();
        let vocab_map: serde_json::Map<String, serde_json::Value> = bytes_of
            .iter()
            .enumerate()
            .map(|(r, b)| (encode(b), json!(r)))
            .collect();
        let merges_json: Vec<serde_json::Value> = merges
            .iter()
            .map(|(_, a, c)| {
                json!([
                    encode(&bytes_of[*a as usize]),
                    encode(&bytes_of[*c as usize])
                ])
            })
            .collect();
        let added: Vec<serde_json::Value> = (FIRST_SPECIAL..vocab.min(201088))
            .map(|id| {
                json!({"id": id, "content": special_name(id), "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let tok = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": O200K_PATTERN},
                 "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                      "vocab": vocab_map, "merges": merges_json}
        });
        serde_json::to_string(&tok).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn built_tokenizer_matches_tiktoken() {
            let json = gpt_oss_tokenizer_json(201088).unwrap();
            let tok = Tokenizer::from_bytes(json.as_bytes()).unwrap();
            let bpe = tiktoken_rs::o200k_base_singleton();
            for text in [
                "Hello, world! How are you?",
                "def f(x):\n    return x**2  # square\n\n\n",
                "Ünïcödé façade naïve — 東京は晴れ。 Привет мир! مرحبا 🙂🚀 12345678 3.14159",
                "   leading and trailing   \t\n",
                "한국어 문장입니다. हिन्दी वाक्य। ภาษาไทย עברית Ελληνικά ქართული",
                "emoji: 👩‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 ❤️‍🔥 ✊🏽 and text",
                "numbers 1 12 123 1234 12345 1,234,567.89 -0.5e-10 0x1F 2024-06-28",
                "                                                            long spaces",
                "\n\n\n\n\t\t\t\r\n  \u{a0}\u{2003}mixed whitespace\u{3000}",
                "<|start|>user<|message|>spelled specials<|end|> <|return|><|call|> <|constrain|>json",
                "fn main() { println!(\"{}\", vec![1, 2, 3].iter().map(|x| x * 2).sum::<i32>()); }",
                "SELECT * FROM t WHERE a IN ('x', 'y') AND b >= 10; -- comment",
                "I'm, you're, they'll, we'd, it's, DON'T, CAN'T, o'clock",
                "URL https://example.com/path?q=1&r=two#frag and email a.b@c.io",
                "a\u{301} e\u{301} combining marks, zero\u{200b}width, BOM\u{feff}",
            ] {
                let want: Vec<u32> = bpe.encode_ordinary(text);
                assert_eq!(tok.encode_ordinary(text).unwrap(), want, "{text:?}");
                assert_eq!(tok.decode(&want).unwrap(), text);
            }
        }

        #[test]
        fn ordinary_encoding_keeps_special_tokens_as_text() {
            let json = gpt_oss_tokenizer_json(201088).unwrap();
            let tok = Tokenizer::from_bytes(json.as_bytes()).unwrap();
            let text = "hi <|end|> there <|start|>user";
            let want: Vec<u32> = tiktoken_rs::o200k_base_singleton().encode_ordinary(text);
            assert_eq!(tok.encode_ordinary(text).unwrap(), want);
            assert!(tok.encode(text).unwrap().contains(&200007));
            assert_eq!(tok.special_id("<|start|>").unwrap(), 200006);
        }

        #[test]
        fn stream_decoder_holds_back_partial_characters() {
            let json = gpt_oss_tokenizer_json(201088).unwrap();
            let tok = Tokenizer::from_bytes(json.as_bytes()).unwrap();
            let text = "日本語🙂 and more 東京";
            let ids = tok.encode(text).unwrap();
            let mut dec = StreamDecoder::default();
            let mut out = String::new();
            for id in ids {
                if let Some(p) = dec.push(&tok, id).unwrap() {
                    assert!(!p.contains('\u{fffd}'));
                    out.push_str(&p);
                }
            }
            assert_eq!(out, text);
        }
    }
}
