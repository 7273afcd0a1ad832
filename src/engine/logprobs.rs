//! Log-probabilities of sampled tokens, computed on the CPU from a logits row read back for the
//! requests that ask for them (OpenAI's `logprobs`). They are the model's raw distribution,
//! before temperature, top-k or top-p, as vLLM reports them by default.

/// Most alternatives a token may list.
pub const MAX_TOP: u32 = 20;

/// A sampled token's log-probability and the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// (token, log-probability), most likely first; ties in id order.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// The entry for `token` drawn from `logits` (one row over the vocabulary), with the `top`
    /// most likely tokens.
    pub fn of(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let lse = max as f64 + sum.ln();
        let lp = |l: f32| (l as f64 - lse) as f32;
        // A sorted short list: the vocabulary is scanned once, insertion only when a logit beats
        // the list's last.
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if best.len() == top && l <= best[top - 1].1 {
                    continue;
                }
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i as u32, l));
                best.truncate(top);
            }
        }
        TokenLogprobs {
            logprob: logits
                .get(token as usize)
                .map_or(f32::NEG_INFINITY, |&l| lp(l)),
            top: best.into_iter().map(|(i, l)| (i, lp(l))).collect(),
        }
    }
}

/// `TokenLogprobs::of` for each (logits row, token, top), spread over the machine's cores: a
/// row's softmax over a vocabulary of 2 * 10^5 takes ~1 ms, and a scored prompt has a row a
/// position.
pub fn of_rows(rows: &[(&[f32], u32, usize)]) -> Vec<TokenLogprobs> {
    let one = |&(row, token, top): &(&[f32], u32, usize)| TokenLogprobs::of(row, token, top);
    #[cfg(not(target_arch = "wasm32"))]
    if rows.len() > 1 {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = rows.len().div_ceil(threads.min(rows.len()));
        return std::thread::scope(|sc| {
            let parts: Vec<_> = rows
                .chunks(per)
                .map(|part| sc.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().expect("a log-probability thread panicked"))
                .collect()
        });
    }
    rows.iter().map(one).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_softmax() {
        let mut rng = crate::rng::Rng::new(7);
        let logits: Vec<f32> = (0..1000).map(|_| rng.symmetric(8.0)).collect();
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let expect = |i: usize| ((logits[i] as f64).exp() / z).ln() as f32;
        let e = TokenLogprobs::of(&logits, 17, 5);
        assert!((e.logprob - expect(17)).abs() < 1e-5);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        assert_eq!(e.top.len(), 5);
        for (k, &(id, lp)) in e.top.iter().enumerate() {
            assert_eq!(id as usize, order[k]);
            assert!((lp - expect(order[k])).abs() < 1e-5);
        }
        assert!(TokenLogprobs::of(&logits, 3, 0).top.is_empty());
    }

    #[test]
    fn rows_on_threads_come_back_in_order() {
        let mut rng = crate::rng::Rng::new(8);
        let logits: Vec<Vec<f32>> = (0..7)
            .map(|_| (0..500).map(|_| rng.symmetric(6.0)).collect())
            .collect();
        let rows: Vec<(&[f32], u32, usize)> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (&l[..], 11 * i as u32, i % 3))
            .collect();
        let want: Vec<_> = rows
            .iter()
            .map(|&(l, t, k)| TokenLogprobs::of(l, t, k))
            .collect();
        assert_eq!(of_rows(&rows), want);
        assert!(of_rows(&[]).is_empty());
    }
}
