//! Stop strings on streamed text: text is released as soon as it cannot be the start of a stop
//! string, and generation ends at the first complete one (which is not shown). Works on `&str`
//! pieces, so a cut never falls inside a UTF-8 character.

use crate::error::{Error, Result};

/// Watches streamed text for any of a set of stop strings.
#[derive(Clone, Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    /// Text that may be the beginning of a stop string, held back until it is decided.
    held: String,
    stopped: bool,
}

impl StopText {
    /// A matcher for `stops`; an empty stop string is refused (it would stop at once).
    pub fn new(stops: Vec<String>) -> Result<StopText> {
        if stops.iter().any(|s| s.is_empty()) {
            return Err(Error::Request("a stop string must not be empty".into()));
        }
        Ok(StopText {
            stops,
            ..Default::default()
        })
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds a piece of text and returns what can be shown now. After a stop string, returns
    /// the text before it and nothing more.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        if self.stops.is_empty() {
            return piece.to_string();
        }
        self.held.push_str(piece);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.stopped = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep_from);
        std::mem::replace(&mut self.held, rest)
    }

    /// Ends the stream: text held back is released (it never completed a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: the whole text cut at the first occurrence of any stop string.
    fn whole(text: &str, stops: &[&str]) -> (String, bool) {
        match stops.iter().filter_map(|s| text.find(s)).min() {
            Some(at) => (text[..at].to_string(), true),
            None => (text.to_string(), false),
        }
    }

    #[test]
    fn streamed_pieces_cut_where_the_whole_text_would() {
        let mut rng = crate::kernels::testing::seeded("stop_text");
        let alphabet = ["a", "b", "é", "ab", "</", "s>", "\n", "💡"];
        let stops = ["</s>", "ba", "é\n", "💡💡"];
        for _ in 0..2000 {
            let n = rng.below(12) as usize;
            let pieces: Vec<&str> = (0..n)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect();
            let k = 1 + rng.below(stops.len() as u64) as usize;
            let stops: Vec<&str> = stops[..k].to_vec();
            let mut st = StopText::new(stops.iter().map(|s| s.to_string()).collect()).unwrap();
            let mut shown: String = pieces.iter().map(|p| st.push(p)).collect();
            if !st.stopped() {
                shown.push_str(&st.finish());
            }
            let (want, stopped) = whole(&pieces.concat(), &stops);
            assert_eq!(
                (shown, st.stopped()),
                (want, stopped),
                "{pieces:?} {stops:?}"
            );
        }
    }

    #[test]
    fn text_that_cannot_start_a_stop_is_released_at_once() {
        let mut st = StopText::new(vec!["STOP".into()]).unwrap();
        assert_eq!(st.push("hello S"), "hello ");
        assert_eq!(st.push("TO"), "");
        assert_eq!(st.push("x"), "STOx");
        assert_eq!(st.push("ST"), "");
        assert_eq!(st.push("OP and more"), "");
        assert!(st.stopped());
        assert!(StopText::new(vec![String::new()]).is_err());
    }
}
