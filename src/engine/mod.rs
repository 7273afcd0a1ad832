//! The engine: requests in, token events out. Each `step` schedules one forward pass over the
//! running sequences (prompt chunks and decode tokens together), runs it, samples on the GPU and
//! reports what each request produced.

mod logprobs;
mod scheduler;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::sample::{GENERATED, LogitBias, MAX_LOGIT_BIAS, SampleParams};
use crate::model::weights::WeightSource;
use crate::model::{Batch, Model, ModelConfig, ModelOptions, Pass, TokenInfo};
use crate::tokenizer::Tokenizer;

pub use logprobs::{MAX_TOP as MAX_TOP_LOGPROBS, TokenLogprobs};
use scheduler::plan;

/// How to pick each next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1.0 keeps all.
    pub top_p: f32,
    /// 0 keeps all.
    pub top_k: u32,
    pub seed: u64,
    /// OpenAI's penalties, from -2 to 2: before each draw, a token generated c > 0 times so far
    /// loses c * frequency_penalty + presence_penalty from its logit (0 and 0 change nothing).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Whether the draws depend on the tokens generated so far.
    pub fn penalized(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    /// What a token generated `count` times so far loses from its logit.
    fn penalty(&self, count: u32) -> f32 {
        if count == 0 {
            0.0
        } else {
            count as f32 * self.frequency_penalty + self.presence_penalty
        }
    }
}

/// A completion request over token ids (`..Default::default()` fills what a caller leaves out;
/// max_tokens must be set).
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Ids that end generation besides the model's end-of-sequence ids.
    pub stop: Vec<u32>,
    /// Keep going past end-of-sequence ids (benchmarks).
    pub ignore_eos: bool,
    /// Report each sampled token's log-probability with this many alternatives (at most
    /// `MAX_TOP_LOGPROBS`).
    pub logprobs: Option<u32>,
    /// Report each prompt token's log-probability given the tokens before it (all but the
    /// first: `Event::PromptLogprobs`, before the first token) with this many alternatives (at
    /// most `MAX_TOP_LOGPROBS`). With it, max_tokens may be 0: the prompt is scored, nothing is
    /// generated. The prompt is computed in full (no prefix cache), at most a pass's logits
    /// rows at a time.
    pub prompt_logprobs: Option<u32>,
    /// Added to these tokens' logits before each draw (OpenAI's logit_bias: distinct tokens, at
    /// most `MAX_LOGIT_BIAS`).
    pub logit_bias: Vec<(u32, f32)>,
}

pub type RequestId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop id was sampled (it is reported as the last token).
    Stop,
    /// max_tokens or the context limit was reached.
    Length,
    Cancelled,
}

impl FinishReason {
    /// The OpenAI name: `stop`, `length` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Token {
        id: RequestId,
        token: u32,
        /// When the request asked for them.
        logprobs: Option<TokenLogprobs>,
    },
    /// The prompt's log-probabilities, once, for a request that asked for them: entry i is
    /// prompt token i + 1's, given tokens 0..=i.
    PromptLogprobs {
        id: RequestId,
        logprobs: Vec<TokenLogprobs>,
    },
    Finished {
        id: RequestId,
        reason: FinishReason,
        prompt_tokens: u32,
        /// Prompt tokens whose KV came from the prefix cache.
        cached_tokens: u32,
        generated: u32,
    },
}

/// A request being served.
pub(crate) struct Sequence {
    pub id: RequestId,
    pub req: Request,
    /// Prompt then generated ids.
    pub tokens: Vec<u32>,
    /// How many of `tokens` are in the KV cache.
    pub cached: usize,
    pub slot: u32,
    pub generated: u32,
    /// Prompt tokens found in the prefix cache when the request first ran.
    pub prompt_cached: Option<u32>,
    /// When it (last) started running: the newest is preempted first.
    pub started: u64,
    /// With penalties: each token's logit_bias and how many times it was generated so far.
    pub penalized: Option<HashMap<u32, (f32, u32)>>,
    /// With prompt_logprobs, until they are reported: those of the positions computed so far.
    pub prompt_scores: Option<Vec<TokenLogprobs>>,
}

impl Sequence {
    pub fn new(id: RequestId, req: Request) -> Sequence {
        let prompt_scores = req.prompt_logprobs.map(|_| Vec::new());
        let penalized = req
            .sampling
            .penalized()
            .then(|| req.logit_bias.iter().map(|&(t, b)| (t, (b, 0))).collect());
        Sequence {
            id,
            tokens: req.prompt.clone(),
            req,
            cached: 0,
            slot: 0,
            generated: 0,
            prompt_cached: None,
            started: 0,
            penalized,
            prompt_scores,
        }
    }

    /// The tokens whose KV may come from the prefix cache: with prompt scores pending, only the
    /// positions already scored (the others need their logits).
    fn reusable(&self) -> &[u32] {
        match &self.prompt_scores {
            Some(done) => &self.tokens[..done.len()],
            None => &self.tokens,
        }
    }

    /// Whether position `p` of the pass gives a prompt-scoring logits row.
    fn scores(&self, p: usize) -> bool {
        self.prompt_scores
            .as_ref()
            .is_some_and(|done| p >= done.len() && p + 1 < self.req.prompt.len())
    }
}

/// Counters of what the engine did since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Prompt tokens of requests that started running.
    pub prefix_queried: u64,
    /// Of those, tokens found in the prefix cache.
    pub prefix_hits: u64,
    /// Sequences sent back to wait because the KV cache ran out of blocks.
    pub preemptions: u64,
}

/// Loads models and serves requests on one GPU.
pub struct Engine {
    pub model: Model,
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Ids that end a sequence.
    pub eos: Vec<u32>,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    free_slots: Vec<u32>,
    next_id: RequestId,
    starts: u64,
    pub stats: EngineStats,
    scratch: StepScratch,
    /// A pass on the GPU whose ids have not come back yet.
    queued: Option<Queued>,
}

/// Per-step buffers kept between steps.
#[derive(Default)]
struct StepScratch {
    work: Vec<scheduler::Work>,
    /// The work as (slot, first position, tokens).
    placed: Vec<(u32, u32, u32)>,
    tokens: Vec<TokenInfo>,
    outputs: Vec<u32>,
    sampling: Vec<SampleParams>,
    bias: Vec<LogitBias>,
    /// Output rows whose logits come back for log-probabilities.
    keep: Vec<u32>,
}

impl Engine {
    pub fn new(model: Model, tokenizer: Option<Tokenizer>, eos: Vec<u32>) -> Engine {
        let free_slots = (0..model.opts.max_seqs).rev().collect();
        Engine {
            model,
            tokenizer: tokenizer.map(Arc::new),
            eos,
            waiting: VecDeque::new(),
            running: Vec::new(),
            free_slots,
            next_id: 0,
            starts: 0,
            stats: EngineStats::default(),
            scratch: StepScratch::default(),
            queued: None,
        }
    }

    /// Loads weights from any source onto `gpu` (the host application's device or our own).
    pub fn load(
        gpu: Arc<Gpu>,
        src: &dyn WeightSource,
        cfg: ModelConfig,
        opts: ModelOptions,
        tokenizer: Option<Tokenizer>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Engine> {
        let mut eos = cfg.eos.clone();
        let model = Model::load(gpu, src, cfg, opts, progress)?;
        eos.sort();
        eos.dedup();
        Ok(Engine::new(model, tokenizer, eos))
    }

    /// Loads a checkpoint directory: config.json, the safetensors shards, the tokenizer and
    /// generation_config.json's end-of-sequence ids.
    #[cfg(feature = "native")]
    pub fn load_dir(
        gpu: Arc<Gpu>,
        dir: &std::path::Path,
        opts: ModelOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Engine> {
        Engine::from_checkpoint(gpu, crate::model::weights::load_dir(dir)?, opts, progress)
    }

    /// Loads an opened checkpoint (see [`crate::model::weights::load_dir`]), so that callers can
    /// check requests against its config and tokenizer before the weights go to the GPU.
    #[cfg(feature = "native")]
    pub fn from_checkpoint(
        gpu: Arc<Gpu>,
        ckpt: crate::model::weights::Checkpoint,
        opts: ModelOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Engine> {
        let mut engine = Engine::load(
            gpu,
            &ckpt.shards,
            ckpt.config,
            opts,
            ckpt.tokenizer,
            progress,
        )?;
        engine.eos.extend(ckpt.eos);
        engine.eos.sort();
        engine.eos.dedup();
        Ok(engine)
    }

    /// Queues a request. Prompts that cannot fit the context are refused here.
    pub fn submit(&mut self, req: Request) -> Result<RequestId> {
        check_request(&self.model.cfg, self.model.opts.max_context, &req)?;
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Sequence::new(id, req));
        Ok(id)
    }

    /// Requests waiting for a sequence slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests holding a sequence slot.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether any request is still waiting or running (or a pass is still on the GPU).
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty() || self.queued.is_some()
    }

    /// Stops a request; its slot is freed and a `Finished { Cancelled }` event is returned.
    pub fn cancel(&mut self, id: RequestId) -> Option<Event> {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            let s = self.waiting.remove(i)?;
            return Some(finished(&s, FinishReason::Cancelled));
        }
        let i = self.running.iter().position(|s| s.id == id)?;
        let s = self.running.swap_remove(i);
        self.model.release(s.slot);
        self.free_slots.push(s.slot);
        Some(finished(&s, FinishReason::Cancelled))
    }

    /// Starts waiting requests, oldest first, while sequence slots are free and the KV cache
    /// has the blocks their prompts take (after the prefix cache's) with one to spare per
    /// running sequence.
    fn admit(&mut self) -> Result<()> {
        while let (Some(s), Some(&slot)) = (self.waiting.front(), self.free_slots.last()) {
            let hit = self.model.reuse_prefix(slot, s.reusable())?;
            let rest = s.tokens.len() as u32 + 1 - hit;
            let fits = self
                .model
                .cache()
                .admits(slot, hit, rest, self.running.len());
            if !fits && !self.running.is_empty() {
                self.model.release(slot);
                break;
            }
            let (Some(mut s), Some(slot)) = (self.waiting.pop_front(), self.free_slots.pop())
            else {
                break;
            };
            s.slot = slot;
            s.cached = hit as usize;
            if s.prompt_cached.is_none() {
                let cached = hit.min(s.req.prompt.len() as u32);
                s.prompt_cached = Some(cached);
                self.stats.prefix_queried += s.req.prompt.len() as u64;
                self.stats.prefix_hits += cached as u64;
            }
            self.starts += 1;
            s.started = self.starts;
            self.running.push(s);
        }
        Ok(())
    }

    /// Sends the sequence that started last back to the front of the queue, its blocks given
    /// back (the full ones stay in the prefix cache, so it mostly resumes from them).
    fn preempt_newest(&mut self) {
        let Some(i) = (0..self.running.len()).max_by_key(|&i| self.running[i].started) else {
            return;
        };
        let mut s = self.running.swap_remove(i);
        self.model.release(s.slot);
        self.free_slots.push(s.slot);
        s.cached = 0;
        self.stats.preemptions += 1;
        self.waiting.push_front(s);
    }

    /// Runs one forward pass and returns the tokens it produced. While every running request
    /// decodes and none is waiting, the next pass goes to the GPU before this one's ids come
    /// back (its tokens read them there, `TokenInfo::fed`), so the host's work between passes
    /// overlaps the GPU's; a token that pass computes for a request that has stopped meanwhile
    /// is dropped.
    pub async fn step(&mut self) -> Result<Vec<Event>> {
        let mut cur = match self.queued.take() {
            Some(cur) => cur,
            None => {
                self.admit()?;
                if self.running.is_empty() {
                    return Ok(Vec::new());
                }
                self.submit_planned()?
            }
        };
        let mut next = self.submit_next(&mut cur)?;
        let events = self.finish(cur).await?;
        // A queued pass none of whose requests still runs is only waited for.
        if let Some(n) =
            next.take_if(|n| !n.sampled.iter().any(|&(_, id)| self.index(id).is_some()))
        {
            self.model.collect(n.pass).await?;
        }
        self.queued = next;
        Ok(events)
    }

    /// The running request `id`'s index.
    fn index(&self, id: RequestId) -> Option<usize> {
        self.running.iter().position(|s| s.id == id)
    }

    /// Plans a pass over the running requests (prompt chunks and decode tokens together) and
    /// queues it.
    fn submit_planned(&mut self) -> Result<Queued> {
        // The step's inputs reuse the engine's buffers: no allocation per step once warm.
        // Sequences wait, newest first, until the pass's new positions fit the KV cache.
        loop {
            let sc = &mut self.scratch;
            plan(
                &self.running,
                self.model.opts.max_tokens as usize,
                self.model.max_outputs as usize,
                &mut sc.work,
            );
            sc.placed.clear();
            sc.placed.extend(sc.work.iter().map(|w| {
                let s = &self.running[w.seq];
                (s.slot, w.start as u32, w.len as u32)
            }));
            if self.running.len() <= 1 || self.model.cache().fits(&sc.placed) {
                break;
            }
            self.preempt_newest();
        }
        let sc = &mut self.scratch;
        let (tokens, outputs, sampling, bias, keep) = (
            &mut sc.tokens,
            &mut sc.outputs,
            &mut sc.sampling,
            &mut sc.bias,
            &mut sc.keep,
        );
        tokens.clear();
        outputs.clear();
        sampling.clear();
        bias.clear();
        keep.clear();
        let (mut sampled, mut scored) = (Vec::new(), Vec::new());
        let mut work = Vec::new();
        for w in &sc.work {
            let s = &self.running[w.seq];
            work.push((s.id, w.start + w.len));
            for p in w.start..w.start + w.len {
                tokens.push(TokenInfo::new(s.tokens[p], p as u32, s.slot));
                if s.scores(p) {
                    scored.push((outputs.len() as u32, s.id, p));
                    keep.push(outputs.len() as u32);
                    outputs.push(tokens.len() as u32 - 1);
                    sampling.push(SampleParams {
                        top_p: 1.0,
                        ..Default::default()
                    });
                }
            }
            if w.start + w.len == s.tokens.len() {
                if s.req.logprobs.is_some() {
                    keep.push(outputs.len() as u32);
                }
                sampled.push((outputs.len() as u32, s.id));
                outputs.push(tokens.len() as u32 - 1);
                sampling.push(sample_params(s, s.generated, bias));
            }
        }
        let pass = self.model.submit(
            &Batch {
                tokens,
                outputs,
                sampling,
                bias,
            },
            keep,
        )?;
        Ok(Queued {
            pass,
            sampled,
            scored,
            kept: keep.clone(),
            work,
        })
    }

    /// Queues the pass after `cur` when it can go before `cur`'s ids come back: every running
    /// request decodes in `cur`, none wants log-probabilities, none is waiting to start, and
    /// the next positions' new KV blocks (one per KV block of positions) are free ones (so that
    /// a token computed for a request that then stops never evicts a cached prefix; a pass that
    /// would runs unqueued). Requests that end by length in `cur` are left out.
    fn submit_next(&mut self, cur: &mut Queued) -> Result<Option<Queued>> {
        if !self.waiting.is_empty()
            || !cur.kept.is_empty()
            || self.running.iter().any(|s| s.req.logprobs.is_some())
        {
            return Ok(None);
        }
        let ctx = self.model.opts.max_context as usize;
        let sc = &mut self.scratch;
        let (tokens, outputs, sampling, bias) = (
            &mut sc.tokens,
            &mut sc.outputs,
            &mut sc.sampling,
            &mut sc.bias,
        );
        tokens.clear();
        outputs.clear();
        sampling.clear();
        bias.clear();
        sc.placed.clear();
        let mut sampled = Vec::new();
        let mut work = Vec::new();
        for s in &self.running {
            // Its token from `cur` goes at position `pos`.
            let Some(&(row, _)) = cur.sampled.iter().find(|&&(_, id)| id == s.id) else {
                return Ok(None);
            };
            let pos = s.tokens.len();
            if s.generated + 1 >= s.req.max_tokens || pos + 1 >= ctx {
                continue;
            }
            sampled.push((outputs.len() as u32, s.id));
            outputs.push(tokens.len() as u32);
            tokens.push(TokenInfo::fed(row, pos as u32, s.slot));
            sampling.push(sample_params(s, s.generated + 1, bias));
            sc.placed.push((s.slot, pos as u32, 1));
            work.push((s.id, pos + 1));
        }
        if tokens.is_empty() || self.model.cache().evicts(&sc.placed) {
            return Ok(None);
        }
        // `cur`'s full blocks go into the prefix cache before the next placement slides the
        // window past them (their ids are all known; no request can start before `cur` ends).
        commit(
            &mut self.running,
            &self.model,
            &std::mem::take(&mut cur.work),
        );
        let pass = self.model.submit(
            &Batch {
                tokens,
                outputs,
                sampling,
                bias,
            },
            &[],
        )?;
        Ok(Some(Queued {
            pass,
            sampled,
            scored: Vec::new(),
            kept: Vec::new(),
            work,
        }))
    }

    /// Waits for a queued pass and reports what it produced for the requests still running.
    async fn finish(&mut self, cur: Queued) -> Result<Vec<Event>> {
        let (ids, logits) = self.model.collect(cur.pass).await?;
        let vocab = self.model.cfg.vocab as usize;
        // The logits of output row `row`, when it was kept (in `kept`'s order).
        let kept = |row: u32| {
            let at = cur.kept.iter().position(|&k| k == row)?;
            logits.get(at * vocab..(at + 1) * vocab)
        };
        // (Nothing left when it was recorded as the next pass was queued.)
        commit(&mut self.running, &self.model, &cur.work);
        // The prompt positions this pass scored, in order, for the requests still running:
        // (request index, position), and what each is scored from.
        let (mut at, mut rows) = (Vec::new(), Vec::new());
        for &(row, id, p) in &cur.scored {
            if let (Some(i), Some(row)) = (self.index(id), kept(row)) {
                let s = &self.running[i];
                let top = s.req.prompt_logprobs.unwrap_or(0) as usize;
                at.push((i, p));
                rows.push((row, s.req.prompt[p + 1], top));
            }
        }
        for ((i, p), lp) in at.into_iter().zip(logprobs::of_rows(&rows)) {
            let s = &mut self.running[i];
            if let Some(done) = s.prompt_scores.as_mut().filter(|d| d.len() == p) {
                done.push(lp);
            }
        }
        let mut events = Vec::new();
        let mut done = Vec::new();
        let ctx = self.model.opts.max_context as usize;
        for &(row, id) in &cur.sampled {
            let Some(i) = self.index(id) else {
                continue;
            };
            let s = &mut self.running[i];
            if let Some(logprobs) = s.prompt_scores.take() {
                events.push(Event::PromptLogprobs { id, logprobs });
            }
            if s.req.max_tokens == 0 {
                done.push((id, FinishReason::Length));
                continue;
            }
            let tok = ids[row as usize];
            s.tokens.push(tok);
            s.generated += 1;
            if let Some(counts) = &mut s.penalized {
                counts.entry(tok).or_insert((0.0, 0)).1 += 1;
            }
            // (`check_request` bounded `top` by MAX_TOP_LOGPROBS.)
            let logprobs = s
                .req
                .logprobs
                .and_then(|top| Some(TokenLogprobs::of(kept(row)?, tok, top as usize)));
            events.push(Event::Token {
                id: s.id,
                token: tok,
                logprobs,
            });
            let stop = (!s.req.ignore_eos && self.eos.contains(&tok)) || s.req.stop.contains(&tok);
            if stop {
                done.push((id, FinishReason::Stop));
            } else if s.generated >= s.req.max_tokens || s.tokens.len() >= ctx {
                done.push((id, FinishReason::Length));
            }
        }
        for (id, reason) in done {
            let Some(i) = self.index(id) else { continue };
            let s = self.running.swap_remove(i);
            self.model.release(s.slot);
            self.free_slots.push(s.slot);
            events.push(finished(&s, reason));
        }
        Ok(events)
    }
}

/// Records what a pass puts in the KV cache (each request's cached length; full blocks go to the
/// prefix cache) for the requests still running.
fn commit(running: &mut [Sequence], model: &Model, work: &[(RequestId, usize)]) {
    for &(id, cached) in work {
        if let Some(s) = running.iter_mut().find(|s| s.id == id) {
            s.cached = cached;
            model.cache().commit(s.slot, &s.tokens, cached);
        }
    }
}

/// What sampling takes for request `s`'s token number `counter` (its random stream's position);
/// its logit_bias entries, penalties of the tokens generated so far included, go onto the pass's
/// `bias` (one entry a token, marked `GENERATED` where counted; a token fed from the previous
/// pass, not counted yet, is penalized on the GPU: `SampleParams::pending`).
fn sample_params(s: &Sequence, counter: u32, bias: &mut Vec<LogitBias>) -> SampleParams {
    let sp = &s.req.sampling;
    let bias_start = bias.len() as u32;
    match &s.penalized {
        None => bias.extend(
            s.req
                .logit_bias
                .iter()
                .map(|&(token, value)| LogitBias { token, value }),
        ),
        Some(counts) => bias.extend(counts.iter().map(|(&token, &(b, count))| LogitBias {
            token: if count > 0 { token | GENERATED } else { token },
            value: b - sp.penalty(count),
        })),
    }
    SampleParams {
        temperature: sp.temperature,
        top_p: sp.top_p,
        top_k: sp.top_k,
        seed: (sp.seed ^ (sp.seed >> 32)) as u32,
        counter,
        bias_start,
        bias_count: bias.len() as u32 - bias_start,
        presence: sp.presence_penalty,
        frequency: sp.frequency_penalty,
        // (`pending`: the model's.)
        ..Default::default()
    }
}

/// A pass on the GPU and whose output rows are.
struct Queued {
    pass: Pass,
    /// The output rows sampled for a request's next token.
    sampled: Vec<(u32, RequestId)>,
    /// The output rows that score a prompt position: (row, request, position).
    scored: Vec<(u32, RequestId, usize)>,
    /// Output rows whose logits come back.
    kept: Vec<u32>,
    /// Each request's cached length once the pass is done (until committed).
    work: Vec<(RequestId, usize)>,
}

/// Checks a request against what config.json and the context size allow, so that callers can
/// refuse it before loading any weights: an empty prompt, `max_tokens` 0, a prompt that leaves no
/// room in the context, ids outside the vocabulary, sampling values out of range.
pub fn check_request(cfg: &ModelConfig, max_context: u32, req: &Request) -> Result<()> {
    let ctx = max_context as usize;
    if req.prompt.is_empty() {
        return Err(Error::field("prompt", "the prompt is empty"));
    }
    if req.max_tokens == 0 && req.prompt_logprobs.is_none() {
        return Err(Error::field(
            "max_tokens",
            "max_tokens must be at least 1 (0 only when the prompt's log-probabilities are asked \
             for)",
        ));
    }
    if req.prompt.len() >= ctx {
        return Err(Error::field(
            "prompt",
            format!(
                "the prompt has {} tokens but the context holds {ctx} (including at least one \
             generated token); shorten it or raise --max-context",
                req.prompt.len()
            ),
        ));
    }
    if let Some(bad) = req.prompt.iter().find(|t| **t >= cfg.vocab) {
        return Err(Error::field(
            "prompt",
            format!("token id {bad} is outside the vocabulary of {}", cfg.vocab),
        ));
    }
    if [req.logprobs, req.prompt_logprobs]
        .iter()
        .any(|n| n.is_some_and(|n| n > MAX_TOP_LOGPROBS))
    {
        return Err(Error::field(
            "logprobs",
            format!("at most {MAX_TOP_LOGPROBS} alternatives per token can be reported"),
        ));
    }
    if req.logit_bias.len() > MAX_LOGIT_BIAS {
        return Err(Error::field(
            "logit_bias",
            format!(
                "logit_bias has {} entries (at most {MAX_LOGIT_BIAS})",
                req.logit_bias.len()
            ),
        ));
    }
    for (i, &(token, value)) in req.logit_bias.iter().enumerate() {
        if token >= cfg.vocab {
            return Err(Error::field(
                "logit_bias",
                format!(
                    "logit_bias names token {token}, outside the vocabulary of {}",
                    cfg.vocab
                ),
            ));
        }
        if !(-100.0..=100.0).contains(&value) {
            return Err(Error::field(
                "logit_bias",
                format!("logit_bias for token {token} is {value}; values must be in [-100, 100]"),
            ));
        }
        if req.logit_bias[..i].iter().any(|&(t, _)| t == token) {
            return Err(Error::field(
                "logit_bias",
                format!("logit_bias names token {token} twice"),
            ));
        }
    }
    let s = &req.sampling;
    let valid =
        s.temperature >= 0.0 && s.temperature.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0;
    if !valid {
        return Err(Error::Request(format!(
            "temperature must be >= 0 and top_p in (0, 1]; got {} and {}",
            s.temperature, s.top_p
        )));
    }
    for (name, v) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if !(-2.0..=2.0).contains(&v) {
            return Err(Error::field(
                name,
                format!("{name} is {v}; it must be from -2 to 2"),
            ));
        }
    }
    Ok(())
}

fn finished(s: &Sequence, reason: FinishReason) -> Event {
    Event::Finished {
        id: s.id,
        reason,
        prompt_tokens: s.req.prompt.len() as u32,
        cached_tokens: s.prompt_cached.unwrap_or(0),
        generated: s.generated,
    }
}
