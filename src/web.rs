//! The browser build's interface to JavaScript (wasm-bindgen). `web/gpt-oss.js` wraps it into
//! the public API (`loadModel`, `generate`, `chat`); this side keeps everything the native build
//! also runs: header parsing and validation, the weight layout, the engine, the Harmony format.
//!
//! Loading goes: `Loader.open(config)`, `add_shard` for each shard's header, `plan()` (the byte
//! ranges to fetch), `write` for each piece fetched, then `Loader.finish` builds the model. A
//! model runs requests one step at a time: `submit_*` queues one, each `step()` runs one forward
//! pass and returns what every request produced, so the page's event loop is never held for a
//! whole generation. Values cross as JSON strings: a small, explicit boundary.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;

use crate::chat::harmony::Harmony;
use crate::chat::harmony::ReasoningEffort;
use crate::chat::openai::ChatRequest;
use crate::chat::parser::ParsedMessage;
use crate::chat::session::{ChatSession, TurnEvent, TurnOutput};
use crate::chat::stop::StopText;
use crate::engine::{Engine, Event, Request, RequestId, Sampling};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions};
use crate::model::config::{HfConfig, Ids, ModelConfig};
use crate::model::upload::{self, WeightWriter, Weights};
use crate::model::weights::ShardIndex;
use crate::model::{ModelOptions, tensors};
use crate::tokenizer::{StreamDecoder, Tokenizer};

fn js(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

fn bad_json(what: &str, e: serde_json::Error) -> JsError {
    JsError::new(&format!("{what}: {e}"))
}

/// Loading options from JavaScript (all optional).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadOptions {
    /// Longest sequence, prompt included.
    max_context: Option<u32>,
    /// Most tokens in one forward pass (prompt chunks).
    max_tokens: Option<u32>,
    /// Use only the portable kernels even where the adapter has f16 and subgroups.
    portable: Option<bool>,
}

/// A model being loaded: the GPU, the config, the shard headers, then the planned buffers.
#[wasm_bindgen]
pub struct Loader {
    gpu: Arc<Gpu>,
    cfg: ModelConfig,
    opts: ModelOptions,
    index: ShardIndex,
    planned: Option<(Weights, WeightWriter)>,
    tokenizer: Option<Tokenizer>,
    eos: Vec<u32>,
}

#[wasm_bindgen]
impl Loader {
    /// Opens the browser's GPU for the model config.json describes. `generation_config` may be
    /// empty; `options` is a JSON object (`maxContext`, `maxTokens`, `portable`).
    pub async fn open(
        config: String,
        generation_config: String,
        options: String,
    ) -> std::result::Result<Loader, JsError> {
        let o: LoadOptions = if options.is_empty() {
            LoadOptions::default()
        } else {
            serde_json::from_str(&options).map_err(|e| bad_json("options", e))?
        };
        let cfg = HfConfig::from_json(&config)
            .and_then(|c| c.validate())
            .map_err(|e| JsError::new(&format!("config.json: {e}")))?;
        let mut eos = cfg.eos.clone();
        if !generation_config.is_empty() {
            let v: Value = serde_json::from_str(&generation_config)
                .map_err(|e| bad_json("generation_config.json", e))?;
            if let Some(ids) = v.get("eos_token_id").filter(|v| !v.is_null()) {
                let ids: Ids = serde_json::from_value(ids.clone())
                    .map_err(|e| bad_json("generation_config.json: eos_token_id", e))?;
                eos.extend(ids.to_vec());
            }
        }
        eos.sort();
        eos.dedup();
        let gpu = Gpu::new(&GpuOptions {
            portable: o.portable.unwrap_or(false),
            ..Default::default()
        })
        .await
        .map_err(js)?;
        let defaults = ModelOptions::default();
        let max_context = o.max_context.unwrap_or(4096).min(cfg.max_positions);
        let opts = ModelOptions {
            max_tokens: o.max_tokens.unwrap_or(256),
            max_seqs: 1,
            max_context,
            ..defaults
        };
        // The engine takes an Arc<Gpu>; in the browser there is one thread, so it need not be Send.
        #[allow(clippy::arc_with_non_send_sync)]
        let gpu = Arc::new(gpu);
        Ok(Loader {
            gpu,
            cfg,
            opts,
            index: ShardIndex::default(),
            planned: None,
            tokenizer: None,
            eos,
        })
    }

    /// Bytes of the header JSON that follows a shard's first 8 bytes.
    pub fn header_len(file: &str, first: &[u8]) -> std::result::Result<f64, JsError> {
        ShardIndex::header_len(file, first)
            .map(|n| n as f64)
            .map_err(js)
    }

    /// Adds a shard from its first 8 + header-length bytes and its whole size (a file whose
    /// tensors run past that size is refused as truncated).
    pub fn add_shard(
        &mut self,
        file: &str,
        head: &[u8],
        size: f64,
    ) -> std::result::Result<(), JsError> {
        self.index.add(file, head, size as u64).map_err(js)
    }

    /// Sets tokenizer.json's contents.
    pub fn set_tokenizer(&mut self, json: &[u8]) -> std::result::Result<(), JsError> {
        self.tokenizer = Some(Tokenizer::from_bytes(json).map_err(js)?);
        Ok(())
    }

    /// Checks the shards against the model, creates the GPU buffers, and returns the byte ranges
    /// to fetch as JSON: `{total, files: [{file, tensors: [{name, start, end}]}]}`, tensors in
    /// file order so each file streams front to back.
    pub fn plan(&mut self) -> std::result::Result<String, JsError> {
        tensors::check(&self.index, &self.cfg).map_err(js)?;
        let (weights, writer) = upload::plan(&self.gpu, &self.index, &self.cfg).map_err(js)?;
        let mut files: Vec<Vec<Value>> = vec![Vec::new(); self.index.files.len()];
        let mut order: Vec<_> = writer
            .tensors()
            .into_iter()
            .map(|n| self.index.info(&n).map(|t| (n, t.clone())))
            .collect::<Result<_>>()
            .map_err(js)?;
        order.sort_by_key(|(_, t)| (t.file, t.range.start));
        for (name, t) in order {
            files[t.file].push(json!({"name": name, "start": t.range.start, "end": t.range.end}));
        }
        let files: Vec<Value> = self
            .index
            .files
            .iter()
            .zip(files)
            .map(|(f, tensors)| json!({"file": f, "tensors": tensors}))
            .collect();
        let plan = json!({"total": writer.total(), "files": files});
        self.planned = Some((weights, writer));
        Ok(plan.to_string())
    }

    /// Writes a piece of a tensor's bytes, starting `offset` bytes into the tensor (a multiple
    /// of 4).
    pub fn write(
        &mut self,
        tensor: &str,
        offset: f64,
        bytes: &[u8],
    ) -> std::result::Result<(), JsError> {
        let (_, writer) = self
            .planned
            .as_mut()
            .ok_or_else(|| JsError::new("plan() must come before write()"))?;
        writer
            .write(&self.gpu, tensor, offset as u64, bytes)
            .map_err(js)
    }

    /// Builds the model once every tensor is written; shader and binding errors surface here.
    pub async fn finish(loader: Loader) -> std::result::Result<Model, JsError> {
        let Loader {
            gpu,
            cfg,
            opts,
            planned,
            tokenizer,
            eos,
            ..
        } = loader;
        let (weights, writer) = planned.ok_or_else(|| JsError::new("nothing was planned"))?;
        writer.finish(&gpu).map_err(js)?;
        let info = json!({
            "adapter": gpu.info.name,
            "backend": format!("{:?}", gpu.info.backend),
            "shaderF16": gpu.caps.f16,
            "subgroups": gpu.caps.subgroups,
            "maxBindingBytes": gpu.caps.max_binding,
            "weightBytes": weights.bytes,
            "maxContext": opts.max_context,
            "layers": cfg.layers,
            "experts": cfg.experts,
            "vocab": cfg.vocab,
        });
        let model = crate::model::Model::new(gpu.clone(), weights, cfg, opts).map_err(js)?;
        gpu.settle().await.map_err(js)?;
        let mut info = info;
        info["kvCacheBytes"] = json!(model.cache_bytes());
        let engine = Engine::new(model, tokenizer, eos);
        Ok(Model {
            inner: Rc::new(RefCell::new(Inner {
                engine,
                outputs: HashMap::new(),
            })),
            info: info.to_string(),
        })
    }
}

/// What a request's tokens turn into for JavaScript.
enum Output {
    /// `generate`: each id with the text it completes.
    Text(StreamDecoder),
    /// `chat`: Harmony parsed into reasoning, content and tool calls.
    Chat(Box<TurnOutput>),
}

struct Inner {
    engine: Engine,
    outputs: HashMap<RequestId, Output>,
}

/// A loaded model (`Model` in JavaScript).
#[wasm_bindgen]
pub struct Model {
    inner: Rc<RefCell<Inner>>,
    info: String,
}

/// Sampling and length settings shared by `generate` and `chat`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SamplingOptions {
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    seed: Option<u64>,
    greedy: Option<bool>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

impl SamplingOptions {
    fn sampling(&self) -> Sampling {
        let d = Sampling::default();
        Sampling {
            temperature: match self.greedy {
                Some(true) => 0.0,
                _ => self.temperature.unwrap_or(d.temperature),
            },
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            seed: self
                .seed
                .unwrap_or_else(|| (js_sys::Math::random() * 2f64.powi(53)) as u64),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateOptions {
    prompt: Option<String>,
    token_ids: Option<Vec<u32>>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    reasoning_effort: Option<String>,
    /// Today's date for the system message (the page knows the visitor's clock).
    date: String,
    #[serde(flatten)]
    sampling: SamplingOptions,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatOptions {
    #[serde(flatten)]
    request: ChatRequest,
    date: String,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(flatten)]
    sampling: SamplingOptions,
}

#[wasm_bindgen]
impl Model {
    /// Adapter, features and sizes as JSON.
    pub fn info(&self) -> String {
        self.info.clone()
    }

    /// Queues a completion (see `GenerateOptions`) and returns its id. Its events are tokens with
    /// their text, special tokens included, in chat mode too.
    pub fn submit_generate(&self, options: &str) -> std::result::Result<f64, JsError> {
        let o: GenerateOptions =
            serde_json::from_str(options).map_err(|e| bad_json("generate options", e))?;
        let mut inner = self.borrow()?;
        let tok = inner.engine.tokenizer.clone();
        let need_tok = || JsError::new("the model has no tokenizer.json: pass tokenIds");
        let sampling = o.sampling.sampling();
        let raw = |prompt| Request {
            prompt,
            max_tokens: o.sampling.max_tokens.unwrap_or(128),
            sampling,
            ..Default::default()
        };
        let req = match (o.token_ids, o.prompt, o.raw) {
            (Some(ids), None, true) => raw(ids),
            (None, Some(text), true) => raw(tok.ok_or_else(need_tok)?.encode(&text).map_err(js)?),
            // A user message in the Harmony format, as native `generate` renders it.
            (None, Some(text), false) => {
                let mut session = ChatSession::new(o.date);
                if let Some(e) = &o.reasoning_effort {
                    session.effort = ReasoningEffort::parse(e).ok_or_else(|| {
                        JsError::new(&format!("reasoningEffort `{e}` is not low, medium or high"))
                    })?;
                }
                let max_tokens = o.sampling.max_tokens.unwrap_or(2048);
                let tok = tok.ok_or_else(need_tok)?;
                session
                    .request(&tok, &text, sampling, max_tokens)
                    .map_err(js)?
            }
            (Some(_), None, false) => {
                return Err(JsError::new(
                    "tokenIds need raw: true (a chat prompt is text)",
                ));
            }
            _ => return Err(JsError::new("give either prompt or tokenIds")),
        };
        inner.submit(req, Output::Text(StreamDecoder::default()))
    }

    /// Queues a chat turn: `messages` (OpenAI chat format), `tools`, `reasoning_effort`, `date`,
    /// `stop`, and the sampling settings; returns its id.
    pub fn submit_chat(&self, options: &str) -> std::result::Result<f64, JsError> {
        let o: ChatOptions =
            serde_json::from_str(options).map_err(|e| bad_json("chat options", e))?;
        let mut inner = self.borrow()?;
        let tok = inner
            .engine
            .tokenizer
            .clone()
            .ok_or_else(|| JsError::new("the model has no tokenizer.json"))?;
        let h = Harmony::new(&tok).map_err(js)?;
        let msgs = o.request.to_harmony(&o.date).map_err(js)?;
        let req = Request {
            prompt: h.render_for_completion(&msgs).map_err(js)?,
            max_tokens: o.sampling.max_tokens.unwrap_or(2048),
            sampling: o.sampling.sampling(),
            stop: h.stop_ids().to_vec(),
            ..Default::default()
        };
        let stop = StopText::new(o.stop).map_err(js)?;
        inner.submit(req, Output::Chat(Box::new(TurnOutput::new(&h, stop))))
    }

    /// Runs one forward pass; resolves to a JSON list of events, each with the request's `id`:
    /// `token` (`tokenId`, `text`), `reasoning` / `content` (`text`), `tool_call` (`name`,
    /// `arguments`, `recipient`) and `done` (`reason`, `generated`).
    // The borrow spans the step's await on purpose: a second call while it runs gets a clear
    // "already running" error instead of touching the engine (gpt-oss.js never makes one).
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn step(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = inner
                .try_borrow_mut()
                .map_err(|_| JsValue::from(JsError::new("a step is already running")))?;
            let events = guard
                .engine
                .step()
                .await
                .map_err(|e| JsValue::from(js(e)))?;
            let out = guard.translate(events).map_err(|e| JsValue::from(js(e)))?;
            Ok(JsValue::from_str(&Value::Array(out).to_string()))
        })
    }

    /// Whether any request is still queued or running.
    pub fn busy(&self) -> bool {
        self.inner
            .try_borrow()
            .map_or(true, |i| i.engine.has_work())
    }

    /// Stops a request; returns its last events (as `step` does; none when it had ended).
    pub fn cancel(&self, id: f64) -> std::result::Result<String, JsError> {
        let mut inner = self.borrow()?;
        let ev = inner.engine.cancel(id as RequestId);
        let out = inner.translate(ev.into_iter().collect()).map_err(js)?;
        Ok(Value::Array(out).to_string())
    }

    fn borrow(&self) -> std::result::Result<std::cell::RefMut<'_, Inner>, JsError> {
        self.inner
            .try_borrow_mut()
            .map_err(|_| JsError::new("the model is busy with a step: await it first"))
    }
}

impl Inner {
    fn submit(&mut self, req: Request, output: Output) -> std::result::Result<f64, JsError> {
        let id = self.engine.submit(req).map_err(js)?;
        self.outputs.insert(id, output);
        Ok(id as f64)
    }

    /// Engine events as the JSON events `step` returns.
    fn translate(&mut self, events: Vec<Event>) -> Result<Vec<Value>> {
        let tok = self.engine.tokenizer.clone();
        let mut out = Vec::new();
        for ev in events {
            match ev {
                Event::Token { id, token, .. } => match (self.outputs.get_mut(&id), &tok) {
                    (Some(Output::Text(dec)), Some(tok)) => {
                        // End-of-sequence ids are reported but not shown (as natively).
                        let text = match self.engine.eos.contains(&token) {
                            true => String::new(),
                            false => dec.push(tok, token)?.unwrap_or_default(),
                        };
                        out.push(
                            json!({"id": id, "type": "token", "tokenId": token, "text": text}),
                        );
                    }
                    (Some(Output::Chat(turn)), Some(tok)) => {
                        // The bare token first (pages count tokens and time steps with it).
                        out.push(json!({"id": id, "type": "token", "tokenId": token}));
                        turn.push(tok, token, &mut |e| out.push(turn_event(id, e)))?;
                        // A stop string ended the answer: the request ends here.
                        if turn.stopped()
                            && let Some(done) = self.engine.cancel(id)
                        {
                            out.extend(self.finish(done)?);
                        }
                    }
                    _ => out.push(json!({"id": id, "type": "token", "tokenId": token, "text": ""})),
                },
                // (The page's requests never ask for them.)
                Event::PromptLogprobs { .. } => {}
                done @ Event::Finished { .. } => out.extend(self.finish(done)?),
            }
        }
        Ok(out)
    }

    /// A request's last events: a chat's held-back text and tool calls, then `done`.
    fn finish(&mut self, ev: Event) -> Result<Vec<Value>> {
        let Event::Finished {
            id,
            reason,
            generated,
            ..
        } = ev
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if let (Some(Output::Chat(mut turn)), Some(tok)) =
            (self.outputs.remove(&id), self.engine.tokenizer.clone())
        {
            turn.finish(&tok, &mut |e| out.push(turn_event(id, e)))?;
            out.extend(turn.messages().iter().filter_map(|m| tool_call(id, m)));
        }
        let stopped = reason.as_str();
        out.push(json!({"id": id, "type": "done", "reason": stopped, "generated": generated}));
        Ok(out)
    }
}

fn turn_event(id: RequestId, e: TurnEvent) -> Value {
    match e {
        TurnEvent::Reasoning(t) => json!({"id": id, "type": "reasoning", "text": t}),
        TurnEvent::Answer(t) | TurnEvent::Raw(t) => json!({"id": id, "type": "content", "text": t}),
    }
}

/// A message addressed to a function (`functions.NAME`) as a tool call.
fn tool_call(id: RequestId, m: &ParsedMessage) -> Option<Value> {
    let r = m.recipient.as_deref()?;
    let name = r.strip_prefix("functions.").unwrap_or(r);
    Some(
        json!({"id": id, "type": "tool_call", "name": name, "arguments": m.content, "recipient": r}),
    )
}
