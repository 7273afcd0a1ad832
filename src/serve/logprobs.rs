//! Log-probabilities in the two shapes OpenAI's API returns them: chat's `logprobs.content`
//! entries (token, logprob, bytes, top_logprobs) and completions' parallel lists.

use serde_json::{Map, Value, json};

use crate::engine::TokenLogprobs;
use crate::tokenizer::Tokenizer;

/// A generated token with its log-probabilities, waiting for the piece of text it belongs to.
pub(super) type Scored = (u32, TokenLogprobs);

fn text(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_bytes(id);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

fn chat_entry(tok: &Tokenizer, id: u32, logprob: f32) -> Value {
    let (token, bytes) = text(tok, id);
    json!({"token": token, "logprob": logprob, "bytes": bytes})
}

/// `{"content": [...]}` for a chat choice or chunk.
pub(super) fn chat(tok: &Tokenizer, scored: &[Scored]) -> Value {
    let content: Vec<Value> = scored
        .iter()
        .map(|(id, lp)| {
            let mut e = chat_entry(tok, *id, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|&(t, l)| chat_entry(tok, t, l)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

/// Completions' `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}` for `entries`,
/// each a token and its log-probabilities (None for a prompt's first token, which has none:
/// null in both lists); `offset` is the length in characters of the text before these tokens,
/// advanced past them.
pub(super) fn text_completion<'a>(
    tok: &Tokenizer,
    entries: impl IntoIterator<Item = (u32, Option<&'a TokenLogprobs>)>,
    offset: &mut usize,
) -> Value {
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (id, lp) in entries {
        let t = text(tok, id).0;
        offsets.push(*offset);
        *offset += t.chars().count();
        tokens.push(t);
        lps.push(lp.map(|lp| lp.logprob));
        tops.push(lp.map(|lp| {
            let top: Map<String, Value> = lp
                .top
                .iter()
                .map(|&(t, l)| (text(tok, t).0, json!(l)))
                .collect();
            Value::Object(top)
        }));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// Generated tokens as `text_completion` entries.
pub(super) fn generated(scored: &[Scored]) -> impl Iterator<Item = (u32, Option<&TokenLogprobs>)> {
    scored.iter().map(|(id, lp)| (*id, Some(lp)))
}

/// A prompt's tokens as `text_completion` entries: the first has no log-probability, token
/// i + 1 has `scores[i]` (the engine's `PromptLogprobs`).
pub(super) fn prompt<'a>(
    ids: &'a [u32],
    scores: &'a [TokenLogprobs],
) -> impl Iterator<Item = (u32, Option<&'a TokenLogprobs>)> {
    ids.iter()
        .enumerate()
        .map(|(i, &id)| (id, i.checked_sub(1).and_then(|j| scores.get(j))))
}
