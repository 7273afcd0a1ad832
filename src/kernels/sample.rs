//! Token sampling on the GPU (`shaders/sample.wgsl`): greedy, temperature, top-k, top-p, seeded.

use crate::error::Result;
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::shader::wgsl_const;
use crate::gpu::{Count, Dispatch, Gpu, Grid, ShaderKey};

wgsl_mirror! {
    "sample.wgsl", Sampling:
    /// One logits row's sampling settings (`Sampling` in the shader).
    #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct SampleParams {
        /// 0 means greedy.
        pub temperature: f32,
        /// 1 keeps everything.
        pub top_p: f32,
        /// 0 keeps everything; 1 is greedy.
        pub top_k: u32,
        pub seed: u32,
        /// Advances every sampled token so each draw is fresh but replayable.
        pub counter: u32,
        /// The row's logit_bias: entries [bias_start, bias_start + bias_count) of the pass's list.
        pub bias_start: u32,
        pub bias_count: u32,
        /// r + 1 when the row's token is the previous pass's id for its row r, still on the GPU
        /// (its `TokenInfo::fed`; filled in by the model for rows with penalties), which then loses
        /// frequency, plus presence unless an entry of the row is that token marked `GENERATED`
        /// (0: none).
        pub pending: u32,
        pub presence: f32,
        pub frequency: f32,
        pub _pad: u32,
    }
}

/// Set in a `LogitBias` token: that token was generated before (see `SampleParams::pending`).
pub const GENERATED: u32 = 1 << 31;

/// One logit_bias entry: `value` is added to the logit of `token` (without `GENERATED`) before
/// sampling.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LogitBias {
    pub token: u32,
    pub value: f32,
}

/// Most logit_bias entries a request may have (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;

/// Most bias entries one logits row may have, in a context of `max_context` positions: its
/// request's logit_bias and, with presence or frequency penalties, one per distinct token
/// generated so far (fewer than the context holds, at most the vocabulary).
pub fn row_bias_entries(max_context: u32, vocab: u32) -> u64 {
    MAX_LOGIT_BIAS as u64 + max_context.min(vocab) as u64
}

wgsl_mirror! {
    "sample.wgsl", Params:
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub(crate) struct Params {
        vocab: u32,
        chunks: u32,
        _pad: [u32; 2],
    }
}

/// Chunks SCAN cuts a row of `vocab` logits into.
fn chunks(vocab: u32) -> Result<u32> {
    Ok(vocab.div_ceil(wgsl_const("sample.wgsl", "CHUNK")?))
}

/// Bytes of the per-chunk scratch for `outputs` rows of `vocab` logits.
pub fn parts_bytes(outputs: u32, vocab: u32) -> Result<u64> {
    Ok(outputs as u64 * chunks(vocab)? as u64 * wgsl_const("sample.wgsl", "PART")? as u64 * 4)
}

/// What sampling reads and writes: ids \[outputs] u32 drawn from logits [outputs, V] with params
/// \[outputs], after each row's logit_bias entries (in `bias`, [LogitBias]) and pending penalty
/// are applied to its logits (only in passes that have any: `StepCounts::biased`), reading the
/// previous pass's ids; parts is scratch of `parts_bytes`.
pub struct Sample<'a> {
    pub logits: &'a wgpu::Buffer,
    pub params: &'a wgpu::Buffer,
    pub bias: &'a wgpu::Buffer,
    pub parts: &'a wgpu::Buffer,
    pub ids: &'a wgpu::Buffer,
}

pub fn build(gpu: &Gpu, step: &wgpu::Buffer, b: &Sample, vocab: u32) -> Result<Vec<Dispatch>> {
    let (logits, params, bias, parts, ids) = (b.logits, b.params, b.bias, b.parts, b.ids);
    let p = Params {
        vocab,
        chunks: chunks(vocab)?,
        _pad: [0; 2],
    };
    let p = bytemuck::bytes_of(&p);
    let scan = ShaderKey::new("sample.wgsl", "scan").define_if("SCAN", true);
    let pick = super::key(gpu, "sample.wgsl", "pick");
    Ok(vec![
        Dispatch::new(
            gpu,
            &ShaderKey::new("sample.wgsl", "bias").define_if("BIAS", true),
            step,
            p,
            &[logits, params, bias, ids],
            Grid::new(1, Count::Outputs, 1),
        )?
        .only_for(Count::Biased, 1..=u32::MAX),
        Dispatch::new(
            gpu,
            &scan,
            step,
            p,
            &[logits, params, parts],
            Grid::new(chunks(vocab)?, Count::Outputs, 1),
        )?,
        Dispatch::new(
            gpu,
            &pick,
            step,
            p,
            &[logits, params, parts, ids],
            Grid::new(1, Count::Outputs, 1),
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::testing::*;

    async fn run(gpu: &Gpu, logits: &[f32], vocab: usize, ps: &[SampleParams]) -> Vec<u32> {
        run_biased(gpu, logits, vocab, ps, &[]).await
    }

    /// A test's sampling buffers: `logits` [rows, vocab], the rows' settings, the bias entries
    /// (one unused entry when there are none), the previous pass's `ids`; and its dispatches.
    struct Setup {
        logits: wgpu::Buffer,
        ids: wgpu::Buffer,
        step: wgpu::Buffer,
        dispatches: Vec<Dispatch>,
    }

    impl Setup {
        fn new(
            gpu: &Gpu,
            logits: &[f32],
            vocab: usize,
            ps: &[SampleParams],
            bias: &[LogitBias],
            ids: &[u32],
        ) -> Setup {
            let none = [LogitBias::default()];
            let entries = if bias.is_empty() { &none[..] } else { bias };
            let (logits, ids) = (
                gpu.upload("l", f32_bytes(logits)).unwrap(),
                gpu.upload("ids", bytemuck::cast_slice(ids)).unwrap(),
            );
            let params = gpu.upload("p", bytemuck::cast_slice(ps)).unwrap();
            let bias = gpu.upload("bias", bytemuck::cast_slice(entries)).unwrap();
            let rows = ps.len() as u32;
            let parts = gpu
                .storage("parts", parts_bytes(rows, vocab as u32).unwrap())
                .unwrap();
            let step = step_buffer(gpu);
            let bufs = Sample {
                logits: &logits,
                params: &params,
                bias: &bias,
                parts: &parts,
                ids: &ids,
            };
            let dispatches = build(gpu, &step, &bufs, vocab as u32).unwrap();
            Setup {
                logits,
                ids,
                step,
                dispatches,
            }
        }

        /// Runs the first `n` dispatches for `rows` rows, `biased` as the pass's count.
        fn run(&self, gpu: &Gpu, n: usize, rows: usize, biased: usize) {
            let counts = StepCounts {
                outputs: rows as u32,
                biased: biased as u32,
                ..Default::default()
            };
            submit(gpu, &self.step, &counts, &self.dispatches[..n]);
        }
    }

    /// Every row of `ps` samples from `logits`, with its entries of `bias` added.
    async fn run_biased(
        gpu: &Gpu,
        logits: &[f32],
        vocab: usize,
        ps: &[SampleParams],
        bias: &[LogitBias],
    ) -> Vec<u32> {
        let rows = ps.len();
        let all: Vec<f32> = (0..rows).flat_map(|_| logits.iter().copied()).collect();
        let s = Setup::new(gpu, &all, vocab, ps, bias, &vec![0; rows]);
        s.run(gpu, s.dispatches.len(), rows, bias.len());
        gpu.read_u32(&s.ids, rows).await.unwrap()
    }

    gpu_test!(logit_bias_moves_the_draw);
    async fn logit_bias_moves_the_draw() {
        let mut rng = seeded("bias");
        for gpu in gpus().await {
            let vocab = 5003;
            let l = random(&mut rng, vocab, 5.0);
            let argmax = |l: &[f32]| {
                l.iter()
                    .enumerate()
                    .fold(0, |b, (i, v)| if *v > l[b] { i } else { b })
            };
            let best = argmax(&l);
            let pick = (best + 1 + rng.below(vocab as u64 - 1) as usize) % vocab;
            // Row 0: greedy with no bias; row 1: +100 on `pick`; row 2: -100 on the best
            // (the second best wins) and a small push elsewhere; row 3 as row 1 at temperature 1
            // with top-p (the bias decides before the filters).
            let mut demoted = l.clone();
            demoted[best] -= 100.0;
            demoted[7] += 0.5;
            let second = argmax(&demoted);
            let bias = [
                LogitBias {
                    token: pick as u32,
                    value: 100.0,
                },
                LogitBias {
                    token: best as u32,
                    value: -100.0,
                },
                LogitBias {
                    token: 7,
                    value: 0.5,
                },
                LogitBias {
                    token: pick as u32,
                    value: 100.0,
                },
            ];
            let row = |start, count, temperature| SampleParams {
                temperature,
                top_p: if temperature > 0.0 { 0.9 } else { 1.0 },
                seed: 5,
                bias_start: start,
                bias_count: count,
                ..Default::default()
            };
            let ps = [
                row(0, 0, 0.0),
                row(0, 1, 0.0),
                row(1, 2, 0.0),
                row(3, 1, 1.0),
            ];
            let got = run_biased(gpu, &l, vocab, &ps, &bias).await;
            let want = [best, pick, second, pick].map(|i| i as u32);
            assert_eq!(got, want);
        }
    }

    gpu_test!(pending_tokens_take_their_penalty);
    /// BIAS alone: entries added, and each row's token from the previous pass (still in `ids`)
    /// lowered by frequency, plus presence unless an entry marks it generated before.
    async fn pending_tokens_take_their_penalty() {
        let mut rng = seeded("pending");
        for gpu in gpus().await {
            let vocab = 50usize;
            let l = random(&mut rng, 3 * vocab, 3.0);
            // The previous pass drew tokens 7, 19 and 33 for its rows 2, 0 and 1.
            let prev = [19u32, 33, 7];
            let entry = |token: u32, value: f32| LogitBias { token, value };
            let bias = [
                entry(7 | GENERATED, -1.5),
                entry(40 | GENERATED, -2.0),
                entry(33, 3.0),
            ];
            let row = |start, count, pending, presence, frequency| SampleParams {
                bias_start: start,
                bias_count: count,
                pending,
                presence,
                frequency,
                ..Default::default()
            };
            // Row 0: token 7 (row 2's) generated before; row 1: 19 (row 0's), new; row 2: 33
            // (row 1's), with a logit_bias and new.
            let ps = [
                row(0, 2, 3, 0.5, 1.0),
                row(0, 0, 1, 0.5, 1.0),
                row(2, 1, 2, 0.25, 0.75),
            ];
            let setup = Setup::new(gpu, &l, vocab, &ps, &bias, &prev);
            setup.run(gpu, 1, 3, 6);
            let got = gpu.read_f32(&setup.logits, 3 * vocab).await.unwrap();
            let mut want = l.clone();
            want[7] = (want[7] - 1.5) - 1.0;
            want[40] -= 2.0;
            want[vocab + 19] -= 1.0 + 0.5;
            want[2 * vocab + 33] = (want[2 * vocab + 33] + 3.0) - (0.75 + 0.25);
            assert_eq!(got, want);
        }
    }

    #[test]
    fn generated_mark_agrees_with_the_shader() {
        assert_eq!(wgsl_const("sample.wgsl", "GENERATED").unwrap(), GENERATED);
    }

    gpu_test!(greedy_is_argmax);
    async fn greedy_is_argmax() {
        let mut rng = seeded("greedy");
        for gpu in gpus().await {
            for vocab in [1usize, 7, 1000, 5003, 20000] {
                let l = random(&mut rng, vocab, 5.0);
                let want = l
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, v)| if *v > l[b] { i } else { b });
                let got = run(
                    gpu,
                    &l,
                    vocab,
                    &[SampleParams {
                        top_p: 1.0,
                        ..Default::default()
                    }],
                )
                .await;
                assert_eq!(got[0] as usize, want);
            }
        }
    }

    gpu_test!(draws_follow_the_filtered_distribution);
    async fn draws_follow_the_filtered_distribution() {
        let mut rng = seeded("sampling");
        for gpu in gpus().await {
            let vocab = 3000;
            let mut l = random(&mut rng, vocab, 1.0);
            // A few clear favourites so top-k/top-p sets are well separated.
            let fav = [17usize, 911, 2500, 42, 1234];
            for (i, &f) in fav.iter().enumerate() {
                l[f] = 6.0 - i as f32 * 0.5;
            }
            let temperature = 0.8f32;
            let n = 4000;
            for (top_k, top_p) in [(3u32, 1.0f32), (0, 0.6), (0, 1.0)] {
                let seed = rng.next_u64() as u32;
                let ps: Vec<SampleParams> = (0..n)
                    .map(|c| SampleParams {
                        temperature,
                        top_p,
                        top_k,
                        seed,
                        counter: c,
                        ..Default::default()
                    })
                    .collect();
                let got = run(gpu, &l, vocab, &ps).await;
                // The reference distribution, computed in f64 with a sort.
                let mut order: Vec<usize> = (0..vocab).collect();
                order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
                let mx = l[order[0]] as f64;
                let mut probs: Vec<f64> = order
                    .iter()
                    .map(|&i| ((l[i] as f64 - mx) / temperature as f64).exp())
                    .collect();
                if top_k > 0 {
                    probs.truncate(top_k as usize);
                }
                let z: f64 = probs.iter().sum();
                let mut keep = 0;
                let mut mass = 0.0;
                while keep < probs.len() {
                    mass += probs[keep] / z;
                    keep += 1;
                    if mass >= top_p as f64 {
                        break;
                    }
                }
                probs.truncate(keep);
                let z: f64 = probs.iter().sum();
                let mut counts = vec![0usize; vocab];
                for &g in &got {
                    counts[g as usize] += 1;
                }
                let outside: usize = (0..vocab)
                    .filter(|i| !order[..keep].contains(i))
                    .map(|i| counts[i])
                    .sum();
                assert_eq!(
                    outside, 0,
                    "top_k={top_k} top_p={top_p}: drew outside the kept set"
                );
                for (r, &i) in order[..keep.min(5)].iter().enumerate() {
                    let p = probs[r] / z;
                    let sd = (p * (1.0 - p) / n as f64).sqrt();
                    let f = counts[i] as f64 / n as f64;
                    assert!(
                        (f - p).abs() < 5.0 * sd + 1e-3,
                        "top_k={top_k} top_p={top_p}: token {i} drawn {f}, expected {p}"
                    );
                }
                // Same seed and counter give the same token.
                assert_eq!(run(gpu, &l, vocab, &ps[..3]).await, got[..3]);
            }
        }
    }
}
