//! Which tokens go into the next forward pass (pure CPU, no GPU types).
//!
//! Decode tokens first (one per sequence whose prompt is cached, so running requests keep their
//! pace), then prompt chunks in arrival order until the pass is full. A sequence whose chunk
//! reaches the end of its tokens gets a logits row, and one whose prompt is being scored a row
//! for each position; the number of rows is capped too.

use super::Sequence;

/// Tokens [start, start + len) of running sequence `seq` go into the pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    pub seq: usize,
    pub start: usize,
    pub len: usize,
}

/// Fills `out` (cleared first) with the next pass's work.
pub(crate) fn plan(
    running: &[Sequence],
    max_tokens: usize,
    max_outputs: usize,
    out: &mut Vec<Work>,
) {
    out.clear();
    let pending = || {
        running
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.cached, s.tokens.len() - s.cached))
    };
    let mut budget = max_tokens;
    let mut outputs = 0;
    for (seq, start, n) in pending().filter(|p| p.2 == 1) {
        if budget == 0 || outputs == max_outputs {
            break;
        }
        out.push(Work { seq, start, len: n });
        budget -= 1;
        outputs += 1;
    }
    for (seq, start, n) in pending().filter(|p| p.2 > 1) {
        if budget == 0 {
            break;
        }
        let len = if running[seq].prompt_scores.is_some() {
            // Every position a logits row (the prompt's scores, then the next token's).
            let len = n.min(budget).min(max_outputs - outputs);
            outputs += len;
            len
        } else {
            let len = n.min(budget);
            if len == n {
                if outputs == max_outputs {
                    continue;
                }
                outputs += 1;
            }
            len
        };
        if len == 0 {
            continue;
        }
        out.push(Work { seq, start, len });
        budget -= len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Request, Sampling};

    fn seq(prompt: usize, cached: usize) -> Sequence {
        let req = Request {
            prompt: vec![1; prompt],
            max_tokens: 10,
            sampling: Sampling::greedy(),
            ..Default::default()
        };
        Sequence {
            cached,
            ..Sequence::new(0, req)
        }
    }

    #[test]
    fn decode_first_then_prompt_chunks() {
        let running = vec![seq(300, 0), seq(5, 4), seq(20, 0)];
        let mut w = Vec::new();
        plan(&running, 64, 8, &mut w);
        assert_eq!(
            w,
            vec![
                Work {
                    seq: 1,
                    start: 4,
                    len: 1
                },
                Work {
                    seq: 0,
                    start: 0,
                    len: 63
                }
            ]
        );
        // Once the long prompt is mostly cached its tail and the next prompt share a pass.
        let running = vec![seq(300, 290), seq(20, 0)];
        let mut w = Vec::new();
        plan(&running, 64, 8, &mut w);
        assert_eq!(
            w,
            vec![
                Work {
                    seq: 0,
                    start: 290,
                    len: 10
                },
                Work {
                    seq: 1,
                    start: 0,
                    len: 20
                }
            ]
        );
    }

    #[test]
    fn output_rows_are_capped() {
        let running = vec![seq(3, 2), seq(3, 2), seq(4, 0)];
        let mut w = Vec::new();
        plan(&running, 64, 2, &mut w);
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|x| x.len == 1));
    }

    #[test]
    fn a_scored_prompt_takes_a_row_a_position() {
        let mut scored = seq(300, 0);
        scored.prompt_scores = Some(Vec::new());
        // Beside a decode token, the scored prompt fills the other 7 rows; the plain prompt
        // behind it, which would need a row for its end, waits.
        let running = vec![scored, seq(5, 4), seq(20, 0)];
        let mut w = Vec::new();
        plan(&running, 64, 8, &mut w);
        let work = |seq, start, len| Work { seq, start, len };
        assert_eq!(w, vec![work(1, 4, 1), work(0, 0, 7)]);
        // No rows left: nothing of it this pass.
        plan(&running, 64, 1, &mut w);
        assert_eq!(w, vec![work(1, 4, 1)]);
    }
}
