//! `serve` end to end on a tiny synthetic checkpoint: the binary is started on a free port and
//! spoken to over plain HTTP/1.1 (a small client below: no HTTP crate needed for tests). Random
//! weights rarely produce Harmony messages, so exact-output checks use raw completions; chat is
//! checked for shape, usage and stream/non-stream agreement.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_gpu() -> bool {
    let ok = Command::new(env!("CARGO_BIN_EXE_gpt-oss-wgpu"))
        .arg("devices")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var("GPT_OSS_REQUIRE_GPU").is_err(),
        "GPT_OSS_REQUIRE_GPU is set but no GPU"
    );
    ok
}

/// A tiny checkpoint (full vocabulary, so the Harmony tokens exist) in a temporary folder.
fn tiny() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_gpt-oss-wgpu"))
        .args(["synth", "--preset", "tiny", "--seed", "5", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success());
    (dir, model.to_str().unwrap().to_string())
}

/// Starts `serve` on a free port and waits for the line that says it is ready.
fn start(model: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpt-oss-wgpu"))
        .args([
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--max-context",
            "256",
        ])
        .args(["--served-model-name", "tiny", "--max-num-seqs", "4"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, addr }
}

/// One raw HTTP/1.1 exchange: the request as written, the whole response back.
fn exchange(s: &str, request: &str) -> String {
    let mut c = TcpStream::connect(s).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

/// One HTTP/1.1 exchange: (status, body), chunked bodies joined.
fn http(s: &str, method: &str, path: &str, body: Option<&str>, key: Option<&str>) -> (u16, String) {
    let body = body.unwrap_or("");
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let text = exchange(
        s,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {s}\r\nContent-Type: application/json\r\n{auth}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn post(s: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http(s, "POST", path, Some(&body.to_string()), None);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A JSON array of numbers (none when it is not an array).
fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The typed events of a streamed response, checked for what a client builds on: numbered in
/// order, created then in_progress first, every item of the final response opened and closed
/// (closed as the response lists it) at output indices 0, 1, ... in turn, every event between an
/// item's opening and closing at that item's index, each text's and arguments' deltas adding up
/// to their `done`. Returns the events.
fn response_events(text: &str) -> Vec<Value> {
    let evs: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "{text}");
    }
    assert_eq!(evs[0]["type"], "response.created", "{text}");
    assert_eq!(evs[1]["type"], "response.in_progress", "{text}");
    let of = |kind: &str| -> Vec<&Value> { evs.iter().filter(|e| e["type"] == kind).collect() };
    let output = evs.last().unwrap()["response"]["output"]
        .as_array()
        .unwrap()
        .clone();
    let done: Vec<Value> = of("response.output_item.done")
        .iter()
        .map(|e| e["item"].clone())
        .collect();
    assert_eq!(done, output, "{text}");
    let added = of("response.output_item.added");
    assert_eq!(added.len(), output.len(), "{text}");
    for (a, item) in added.iter().zip(&output) {
        assert_eq!(a["item"]["id"], item["id"], "{text}");
    }
    let mut open = None;
    let mut opened = 0;
    for e in &evs {
        if e["type"] == "response.output_item.added" {
            assert_eq!(open, None, "an item opened inside another: {text}");
            assert_eq!(e["output_index"], opened, "{text}");
            open = Some(opened);
            opened += 1;
            continue;
        }
        if let Some(index) = e.get("output_index") {
            assert_eq!(Some(index), open.map(Value::from).as_ref(), "{text}");
        }
        if e["type"] == "response.output_item.done" {
            open = None;
        }
    }
    assert_eq!(open, None, "{text}");
    for (delta, finished, field) in [
        (
            "response.output_text.delta",
            "response.output_text.done",
            "text",
        ),
        (
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "text",
        ),
        (
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "arguments",
        ),
    ] {
        for f in of(finished) {
            let joined: String = of(delta)
                .iter()
                .filter(|d| d["item_id"] == f["item_id"])
                .map(|d| d["delta"].as_str().unwrap())
                .collect();
            assert_eq!(f[field].as_str().unwrap(), joined, "{text}");
        }
    }
    evs
}

/// The `data:` payloads of an event stream, up to `[DONE]` (which must come last).
fn events(s: &str, path: &str, body: &Value) -> Vec<Value> {
    let (status, text) = http(s, "POST", path, Some(&body.to_string()), None);
    assert_eq!(status, 200, "{text}");
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn serves_the_openai_api() {
    if !have_gpu() {
        return;
    }
    let (_dir, model) = tiny();
    let server = start(&model, &[]);
    let s = server.addr.as_str();

    assert_eq!(http(s, "GET", "/health", None, None).0, 200);
    let (status, models) = http(s, "GET", "/v1/models", None, None);
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["max_model_len"], 256);
    // Retrieving one model: the same object; another name is not found.
    let (status, one) = http(s, "GET", "/v1/models/tiny", None, None);
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        serde_json::from_str::<Value>(&one).unwrap(),
        models["data"][0]
    );
    assert_eq!(http(s, "GET", "/v1/models/openai/other", None, None).0, 404);

    // Completions at temperature 0: the stream's pieces make the whole answer, usage counts.
    let req = json!({"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0});
    let (status, whole) = post(s, "/v1/completions", &req);
    assert_eq!(status, 200, "{whole}");
    let text = whole["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 12);
    let prompt_tokens = whole["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = events(s, "/v1/completions", &streamed);
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, text);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 12);
    // Every chunk, the usage chunk too, carries the stream's id and model.
    for c in &chunks {
        assert_eq!(c["id"], chunks[0]["id"], "{c}");
        assert_eq!(c["model"], chunks[0]["model"], "{c}");
    }

    // Log-probabilities: one entry per token; greedy draws the most likely token, so its
    // log-probability is the best alternative's; streamed pieces carry the same entries.
    let mut lp_req = req.clone();
    lp_req["logprobs"] = json!(3);
    let (status, v) = post(s, "/v1/completions", &lp_req);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], json!(text));
    let lp = &v["choices"][0]["logprobs"];
    let token_lps = numbers(&lp["token_logprobs"]);
    assert_eq!(token_lps.len(), 12);
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 12);
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let best = top
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            token_lps[i] <= 0.0 && (token_lps[i] - best).abs() < 1e-6,
            "token {i}"
        );
        assert!((1..=3).contains(&top.as_object().unwrap().len()));
    }
    let offsets = numbers(&lp["text_offset"]);
    assert_eq!(offsets[0], 0.0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    let mut lp_stream = lp_req.clone();
    lp_stream["stream"] = json!(true);
    let streamed_lps: Vec<f64> = events(s, "/v1/completions", &lp_stream)
        .iter()
        .flat_map(|c| numbers(&c["choices"][0]["logprobs"]["token_logprobs"]))
        .collect();
    assert_eq!(streamed_lps, token_lps);
    assert_eq!(whole["choices"][0]["logprobs"], Value::Null);

    // echo with logprobs (prompt scoring): the prompt's tokens first, the first with nulls (no
    // context), each other at most its position's best alternative; then the generated tokens'
    // entries as without echo. max_tokens 0 gives the prompt alone; streamed, the same entries.
    let n_prompt = prompt_tokens as usize;
    let mut echoed = lp_req.clone();
    echoed["echo"] = json!(true);
    let (status, v) = post(s, "/v1/completions", &echoed);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["text"],
        json!(format!("The quick brown fox{text}"))
    );
    let lp = &v["choices"][0]["logprobs"];
    let entries = lp["token_logprobs"].as_array().unwrap().clone();
    assert_eq!(entries.len(), n_prompt + 12);
    assert!(
        entries[0].is_null() && lp["top_logprobs"][0].is_null(),
        "{lp}"
    );
    assert_eq!(numbers(&json!(entries[n_prompt..])), token_lps);
    for i in 1..n_prompt {
        let best = numbers(&json!(
            lp["top_logprobs"][i]
                .as_object()
                .unwrap()
                .values()
                .collect::<Vec<_>>()
        ));
        let l = entries[i].as_f64().unwrap();
        assert!(l <= 0.0 && l <= best.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)) + 1e-6);
        assert_eq!(best.len(), 3);
    }
    let offsets = numbers(&lp["text_offset"]);
    assert_eq!(offsets.len(), n_prompt + 12);
    assert!(offsets[0] == 0.0 && offsets.windows(2).all(|w| w[0] <= w[1]));
    let mut zero = echoed.clone();
    zero["max_tokens"] = json!(0);
    let (status, v0) = post(s, "/v1/completions", &zero);
    assert_eq!(status, 200, "{v0}");
    assert_eq!(v0["choices"][0]["text"], "The quick brown fox");
    assert_eq!(v0["choices"][0]["finish_reason"], "length");
    assert_eq!(v0["usage"]["completion_tokens"], 0);
    let scored = |v: &Value| numbers(&json!(v.as_array().unwrap()[1..]));
    let prompt_only = &v0["choices"][0]["logprobs"]["token_logprobs"];
    assert_eq!(prompt_only.as_array().unwrap().len(), n_prompt);
    for (a, b) in scored(prompt_only)
        .iter()
        .zip(scored(&json!(entries[..n_prompt])))
    {
        assert!((a - b).abs() < 1e-5, "{a} {b}");
    }
    // A prompt longer than a pass's logits rows (4 here: --max-num-seqs) is scored over passes.
    let long = "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun";
    let (status, vl) = post(
        s,
        "/v1/completions",
        &json!({"prompt": long, "max_tokens": 0, "echo": true, "logprobs": 1}),
    );
    assert_eq!(status, 200, "{vl}");
    let n_long = post(s, "/tokenize", &json!({ "prompt": long })).1["count"]
        .as_u64()
        .unwrap();
    let lps = &vl["choices"][0]["logprobs"]["token_logprobs"];
    assert!(
        n_long > 8 && lps.as_array().unwrap().len() as u64 == n_long,
        "{vl}"
    );
    assert_eq!(
        numbers(&json!(lps.as_array().unwrap()[1..])).len() as u64,
        n_long - 1
    );
    let mut echo_stream = echoed.clone();
    echo_stream["stream"] = json!(true);
    let chunks = events(s, "/v1/completions", &echo_stream);
    let streamed: Vec<Value> = chunks
        .iter()
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["token_logprobs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(streamed, entries);
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, v["choices"][0]["text"].as_str().unwrap());

    // A list of prompts: n answers each, prompt i's j-th at index i * n + j, each what that
    // prompt gets alone; usage counts every prompt once.
    let hello =
        json!({"model": "tiny", "prompt": "Hello world", "max_tokens": 12, "temperature": 0});
    let (_, alone) = post(s, "/v1/completions", &hello);
    let listed = json!({"prompt": ["The quick brown fox", "Hello world"], "n": 2,
                        "max_tokens": 12, "temperature": 0});
    let (status, v) = post(s, "/v1/completions", &listed);
    assert_eq!(status, 200, "{v}");
    let texts: Vec<(u64, Value)> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["index"].as_u64().unwrap(), c["text"].clone()))
        .collect();
    let a = alone["choices"][0]["text"].clone();
    assert_eq!(
        texts,
        vec![(0, json!(text)), (1, json!(text)), (2, a.clone()), (3, a)]
    );
    assert_eq!(
        v["usage"]["prompt_tokens"],
        prompt_tokens + alone["usage"]["prompt_tokens"].as_u64().unwrap()
    );

    // Several requests at once each get exactly what they get alone.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (addr, req) = (s.to_string(), req.clone());
            std::thread::spawn(move || {
                post(&addr, "/v1/completions", &req).1["choices"][0]["text"].clone()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), json!(text));
    }

    // A stop string cuts the text before it and ends with finish_reason stop.
    let cut_at = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(0, |c| c.0);
    let stop: String = text[cut_at..].chars().take(3).collect();
    if !stop.trim().is_empty() {
        let mut r = req.clone();
        r["stop"] = json!([stop]);
        let (status, v) = post(s, "/v1/completions", &r);
        assert_eq!(status, 200);
        let want = &text[..text.find(&stop).unwrap()];
        assert_eq!(v["choices"][0]["text"], want);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    // The same seed draws the same tokens.
    let seeded = json!({"prompt": "Once", "max_tokens": 8, "temperature": 1.0, "seed": 11});
    let a = post(s, "/v1/completions", &seeded).1;
    let b = post(s, "/v1/completions", &seeded).1;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    // Seeds are 64-bit integers, negative ones too (OpenAI's and vLLM's range).
    let negative = json!({"prompt": "Once", "max_tokens": 8, "temperature": 1.0, "seed": -11});
    let (status, c) = post(s, "/v1/completions", &negative);
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        c["choices"][0]["text"],
        post(s, "/v1/completions", &negative).1["choices"][0]["text"]
    );

    // n completions: each choice is the seeded draw that choice's seed gives alone; streamed,
    // each choice's pieces carry its index and join to its text.
    let two = json!({"prompt": "Once", "max_tokens": 6, "temperature": 1.0, "seed": 5, "n": 2,
                     "echo": true});
    let (status, whole_two) = post(s, "/v1/completions", &two);
    assert_eq!(status, 200, "{whole_two}");
    assert_eq!(whole_two["choices"].as_array().unwrap().len(), 2);
    assert_eq!(whole_two["usage"]["completion_tokens"], 12);
    for (i, seed) in [5, 6].iter().enumerate() {
        let c = &whole_two["choices"][i];
        assert_eq!(c["index"], i);
        assert!(c["text"].as_str().unwrap().starts_with("Once"), "{c}");
        let one = json!({"prompt": "Once", "max_tokens": 6, "temperature": 1.0, "seed": seed,
                         "echo": true});
        assert_eq!(
            post(s, "/v1/completions", &one).1["choices"][0]["text"],
            c["text"]
        );
    }
    let mut streamed_two = two.clone();
    streamed_two["stream"] = json!(true);
    let chunks = events(s, "/v1/completions", &streamed_two);
    for i in 0..2 {
        let text: String = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(
            text,
            whole_two["choices"][i]["text"].as_str().unwrap(),
            "choice {i}"
        );
    }

    // A prompt that starts like an earlier one reuses its KV blocks: reported as cached
    // tokens, with the same answer.
    let long = "Some words to make a prompt longer than a few KV-cache blocks. ".repeat(12);
    let req_long = json!({"prompt": long, "max_tokens": 6, "temperature": 0});
    let (_, first) = post(s, "/v1/completions", &req_long);
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (_, second) = post(s, "/v1/completions", &req_long);
    let n = second["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(cached, (n - 1) / 16 * 16, "{second}");
    assert_eq!(first["choices"][0]["text"], second["choices"][0]["text"]);
    let convo = |last: &str| {
        json!({"messages": [{"role": "system", "content": long},
                            {"role": "user", "content": last}],
               "max_tokens": 4, "temperature": 0})
    };
    post(s, "/v1/chat/completions", &convo("First question"));
    let (_, next) = post(s, "/v1/chat/completions", &convo("Second question"));
    assert!(
        next["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            >= 128,
        "{next}"
    );

    // bench-serve drives it: every request streams its tokens (end-of-sequence ignored).
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gpt-oss-wgpu"))
        .args(["bench-serve", "--url", &format!("http://{s}/v1")])
        .args(["--max-concurrency", "2", "--num-prompts", "4"])
        .args([
            "--random-input-len",
            "16",
            "--random-output-len",
            "8",
            "--json",
        ])
        .arg(report.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    assert_eq!(r["successful_requests"], 4, "{r}");
    assert_eq!(r["total_output_tokens"], 32, "{r}");
    assert!(r["median_ttft_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Output token throughput"));

    // Chat: the answer's shape and usage; the stream carries the same text.
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10,
                      "temperature": 0, "reasoning_effort": "low"});
    let (status, whole) = post(s, "/v1/chat/completions", &chat);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(whole["usage"]["completion_tokens"], 10);
    let mut sc = chat.clone();
    sc["stream"] = json!(true);
    let chunks = events(s, "/v1/chat/completions", &sc);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let field = |name: &str| -> String {
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"][name].as_str())
            .collect()
    };
    let msg = &whole["choices"][0]["message"];
    assert_eq!(field("content"), msg["content"].as_str().unwrap_or(""));
    assert_eq!(
        field("reasoning_content"),
        msg["reasoning_content"].as_str().unwrap_or("")
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    // With usage asked: one more chunk, with no choices, under the stream's id and model.
    sc["stream_options"] = json!({"include_usage": true});
    let chunks = events(s, "/v1/chat/completions", &sc);
    let last = chunks.last().unwrap();
    for n in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(last["usage"][n], whole["usage"][n], "{last}");
    }
    assert_eq!(last["choices"], json!([]));
    for c in &chunks {
        assert_eq!(c["id"], chunks[0]["id"], "{c}");
        assert_eq!(c["model"], whole["model"], "{c}");
    }

    // n choices: at temperature 0 each is the single answer; streamed, each choice's pieces
    // carry its index.
    let mut multi = chat.clone();
    multi["n"] = json!(3);
    let (status, three) = post(s, "/v1/chat/completions", &multi);
    assert_eq!(status, 200, "{three}");
    let choices = three["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"], whole["choices"][0]["message"]);
    }
    assert_eq!(three["usage"]["completion_tokens"], 30);
    multi["stream"] = json!(true);
    let chunks = events(s, "/v1/chat/completions", &multi);
    for i in 0..3 {
        let finishes = chunks
            .iter()
            .filter(|c| {
                c["choices"][0]["index"] == i && !c["choices"][0]["finish_reason"].is_null()
            })
            .count();
        assert_eq!(finishes, 1, "choice {i}");
    }

    // Responses: input items (text parts, a function call and its output) become the same
    // prompt as chat messages would; output items and typed events come back.
    let resp = json!({"model": "tiny", "instructions": "Be brief.", "max_output_tokens": 6,
        "temperature": 0, "reasoning": {"effort": "low"},
        "tools": [{"type": "function", "name": "get", "description": "Get it.",
                   "parameters": {"type": "object", "properties": {}}}],
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
                  {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c1", "output": "42"}]});
    let (status, answer) = post(s, "/v1/responses", &resp);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "incomplete");
    assert_eq!(answer["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(answer["usage"]["output_tokens"], 6);
    // The item max_output_tokens cut off is incomplete, as OpenAI marks it.
    let last = answer["output"].as_array().and_then(|o| o.last()).unwrap();
    assert_eq!(last["status"], "incomplete", "{answer}");
    let mut rs = resp.clone();
    rs["stream"] = json!(true);
    let (status, text) = http(s, "POST", "/v1/responses", Some(&rs.to_string()), None);
    assert_eq!(status, 200);
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.last(), Some(&"response.incomplete"), "{text}");
    let final_event = response_events(&text).pop().unwrap();
    // The same items as the answer answer (ids are fresh per response).
    let strip = |items: &Value| -> Value {
        let mut v = items.clone();
        for item in v.as_array_mut().into_iter().flatten() {
            item.as_object_mut().map(|o| o.remove("id"));
        }
        v
    };
    assert_eq!(
        strip(&final_event["response"]["output"]),
        strip(&answer["output"])
    );

    // /tokenize renders messages exactly as the chat endpoint prompts (reasoning effort
    // included), and /detokenize inverts plain text.
    let (status, t) = post(s, "/tokenize", &chat);
    assert_eq!(status, 200);
    assert_eq!(
        t["count"].as_u64(),
        whole["usage"]["prompt_tokens"].as_u64()
    );
    let (_, plain) = post(s, "/tokenize", &json!({"prompt": "Hello there"}));
    let (_, back) = post(s, "/detokenize", &json!({"tokens": plain["tokens"]}));
    assert_eq!(back["prompt"], "Hello there");
    let (_, high) = post(
        s,
        "/detokenize",
        &json!({"tokens": post(s, "/tokenize", &json!({"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "high"})).1["tokens"]}),
    );
    assert!(high["prompt"].as_str().unwrap().contains("Reasoning: high"));

    // logit_bias: +100 on a token makes it every greedy draw, and every sampled one.
    let hello = plain["tokens"][0].clone();
    let four = post(
        s,
        "/detokenize",
        &json!({"tokens": [hello, hello, hello, hello]}),
    )
    .1;
    for temperature in [0.0, 1.0] {
        let biased = json!({"prompt": "The quick brown fox", "max_tokens": 4,
                            "temperature": temperature, "logit_bias": {hello.to_string(): 100}});
        let (status, v) = post(s, "/v1/completions", &biased);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], four["prompt"], "{v}");
    }
    // frequency_penalty 2 takes 2 per draw back from that +100: the token leads ~50 draws
    // (the model's own logits spread far less than 20), then others win.
    let hellos = |n: usize| {
        let tokens = vec![hello.clone(); n];
        post(s, "/detokenize", &json!({ "tokens": tokens })).1["prompt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let penalized = json!({"prompt": "The quick brown fox", "max_tokens": 64, "temperature": 0,
                           "frequency_penalty": 2, "logit_bias": {hello.to_string(): 100}});
    let (status, v) = post(s, "/v1/completions", &penalized);
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with(&hellos(40)) && !text.starts_with(&hellos(60)),
        "{v}"
    );

    // Bad requests: each gets its status and an OpenAI error body; the server stays up.
    let user = json!([{"role": "user", "content": "x"}]);
    let many: serde_json::Map<String, Value> =
        (0..301).map(|t| (t.to_string(), json!(1))).collect();
    let cases: Vec<(&str, &str, String, u16)> = vec![
        ("POST", "/v1/chat/completions", json!({"messages": user, "presence_penalty": 2.5}).to_string(), 400),
        ("POST", "/v1/completions", json!({"prompt": "x", "frequency_penalty": -3}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "logit_bias": {"abc": 1}}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "logit_bias": {"5": 101}}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "logit_bias": {"5": "x"}}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "logit_bias": {"999999999": 1}}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "logit_bias": many}).to_string(), 400),
        ("POST", "/v1/chat/completions", "not json".into(), 400),
        ("POST", "/v1/chat/completions", "[1, 2]".into(), 400),
        ("POST", "/v1/chat/completions", "{}".into(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": []}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": "hi"}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "temperature": -1}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "temperature": "hot"}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "top_p": 0}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "top_p": 1.5}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "top_k": -5}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "max_tokens": 0}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "max_tokens": 100000}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "max_completion_tokens": -3}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "n": 0}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "n": 17}).to_string(), 400),
        ("POST", "/v1/completions", json!({"prompt": "x", "n": 0}).to_string(), 400),
        ("POST", "/v1/completions", json!({"prompt": "x", "n": 17}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "stop": ""}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "reasoning_effort": "max"}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "model": "other"}).to_string(), 404),
        ("POST", "/v1/chat/completions", json!({"messages": user, "tool_choice": {"type": "function", "function": {"name": "nope"}}}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "tools": [{"type": "function"}]}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": [{"role": "tool", "content": "42"}]}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hello ".repeat(400)}]}).to_string(), 400),
        ("POST", "/v1/completions", json!({"prompt": ""}).to_string(), 400),
        ("POST", "/v1/completions", json!({"prompt": []}).to_string(), 400),
        ("POST", "/v1/completions", json!({"prompt": ["a", ""]}).to_string(), 400),
        ("POST", "/v1/completions", json!({"prompt": "x", "logprobs": 21}).to_string(), 400),
        ("POST", "/v1/completions", json!({"prompt": "x", "logprobs": -1}).to_string(), 400),
        ("POST", "/v1/completions", json!({"prompt": "x", "max_tokens": 0}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "max_tokens": 0}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "top_logprobs": 3}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "logprobs": true, "top_logprobs": 50}).to_string(), 400),
        ("POST", "/v1/chat/completions", json!({"messages": user, "logprobs": "yes"}).to_string(), 400),
        ("POST", "/v1/completions", json!({"max_tokens": 3}).to_string(), 400),
        ("POST", "/tokenize", json!({}).to_string(), 400),
        ("POST", "/v1/responses", json!({"input": "x", "previous_response_id": "resp_1"}).to_string(), 400),
        ("POST", "/v1/responses", json!({"input": "x", "tools": [{"type": "web_search"}]}).to_string(), 400),
        ("POST", "/v1/responses", json!({"input": 7}).to_string(), 400),
        ("POST", "/v1/responses", json!({"input": [{"type": "image", "url": "x"}]}).to_string(), 400),
        ("POST", "/v1/responses", json!({"input": "x", "max_output_tokens": 0}).to_string(), 400),
        ("POST", "/detokenize", json!({"tokens": ["a"]}).to_string(), 400),
        ("POST", "/detokenize", json!({"tokens": [1, 999_999_999]}).to_string(), 400),
        ("GET", "/v1/chat/completions", String::new(), 405),
        ("GET", "/v1/nothing", String::new(), 404),
    ];
    for (method, path, body, want) in &cases {
        let (status, text) = http(s, method, path, Some(body), None);
        assert_eq!(status, *want, "{method} {path} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}: {text}"
        );
        assert_eq!(v["error"]["code"], *want, "{text}");
    }
    // A refused value names its field, as the endpoint's body spells it: values the chat
    // mapping refuses, completions options refused rather than ignored, the Responses API's own
    // names, a prompt too long for the context.
    let (chat, compl, resp) = ("/v1/chat/completions", "/v1/completions", "/v1/responses");
    for (path, body, field) in [
        (
            chat,
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages",
        ),
        (
            chat,
            json!({"messages": [{"role": "tool", "content": "42"}]}),
            "messages",
        ),
        (
            chat,
            json!({"messages": user, "reasoning_effort": "max"}),
            "reasoning_effort",
        ),
        (
            chat,
            json!({"messages": user, "tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
            "tools",
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": "hello ".repeat(400)}]}),
            "messages",
        ),
        (compl, json!({"prompt": "x", "suffix": "end"}), "suffix"),
        (compl, json!({"prompt": "x", "best_of": 3}), "best_of"),
        (
            compl,
            json!({"prompt": "x", "n": 2, "best_of": 1}),
            "best_of",
        ),
        (compl, json!({"prompt": "hello ".repeat(400)}), "prompt"),
        // Refused by the engine's own check, which names the field too.
        (compl, json!({"prompt": [1, 999_999_999]}), "prompt"),
        (
            compl,
            json!({"prompt": "x", "logit_bias": {"999999999": 1}}),
            "logit_bias",
        ),
        (
            resp,
            json!({"input": "x", "reasoning": {"effort": "max"}}),
            "reasoning.effort",
        ),
        (
            resp,
            json!({"input": "x", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            chat,
            json!({"messages": user, "response_format": {"type": "yaml"}}),
            "response_format",
        ),
        (
            resp,
            json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}),
            "text.format",
        ),
        (resp, json!({"input": "hello ".repeat(400)}), "input"),
        (resp, json!({"input": []}), "input"),
        (
            chat,
            json!({"messages": user, "max_completion_tokens": 0}),
            "max_completion_tokens",
        ),
        (
            resp,
            json!({"input": "x", "max_output_tokens": 100_000}),
            "max_output_tokens",
        ),
        (
            chat,
            json!({"messages": user, "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        // Fields of the wrong type, named by their path in the body.
        (
            chat,
            json!({"messages": user, "max_tokens": "3"}),
            "max_tokens",
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": 7}]}),
            "messages[0].content",
        ),
        (
            compl,
            json!({"prompt": "x", "temperature": "hot"}),
            "temperature",
        ),
        (chat, json!({"messages": user, "stop": 7}), "stop"),
        // Missing fields, named too.
        (chat, json!({"max_tokens": 3}), "messages"),
        (
            chat,
            json!({"messages": [{"role": "user", "content": "x"}, {"content": "y"}]}),
            "messages[1].role",
        ),
        (
            chat,
            json!({"messages": user, "tools": [{"type": "function", "function": {}}]}),
            "tools[0].function.name",
        ),
        (compl, json!({"prompt": {"text": "x"}}), "prompt"),
        (
            "/tokenize",
            json!({"messages": [{"role": "user", "content": 7}]}),
            "messages[0].content",
        ),
    ] {
        let (status, v) = post(s, path, &body);
        assert_eq!(status, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["param"], field, "{path} {body}: {v}");
        // The message speaks the endpoint's names too.
        if path == resp {
            let message = v["error"]["message"].as_str().unwrap();
            for chat_name in [
                "messages",
                "max_tokens",
                "reasoning_effort",
                "response_format",
            ] {
                assert!(!message.contains(chat_name), "{body}: {message}");
            }
        }
    }
    // A response format is stated in the developer message (Harmony's response formats), in
    // either API's spelling: the same prompt, longer by the section.
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    let asked = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let plain = post(s, chat, &json!({"messages": user, "max_tokens": 1}));
    let chat_format = post(
        s,
        chat,
        &json!({"messages": user, "max_tokens": 1, "response_format":
                {"type": "json_schema", "json_schema": {"name": "count", "schema": schema}}}),
    );
    let resp_format = post(
        s,
        resp,
        &json!({"input": user[0]["content"], "max_output_tokens": 1, "text":
                {"format": {"type": "json_schema", "name": "count", "schema": schema}}}),
    );
    assert_eq!((plain.0, chat_format.0, resp_format.0), (200, 200, 200));
    assert!(
        asked(&chat_format.1) > asked(&plain.1) + 10,
        "{}",
        chat_format.1
    );
    assert_eq!(
        asked(&chat_format.1),
        resp_format.1["usage"]["input_tokens"].as_u64().unwrap()
    );
    let body = json!({"prompt": "x", "max_tokens": 1, "n": 2, "best_of": 2, "suffix": ""});
    let (status, v) = post(s, compl, &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(http(s, "GET", "/health", None, None).0, 200);
}

#[test]
fn api_key_guards_everything_but_health() {
    if !have_gpu() {
        return;
    }
    let (_dir, model) = tiny();
    let server = start(&model, &["--api-key", "sesame"]);
    let s = server.addr.as_str();
    assert_eq!(http(s, "GET", "/health", None, None).0, 200);
    let (status, text) = http(s, "GET", "/v1/models", None, None);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("authentication_error"));
    assert_eq!(http(s, "GET", "/v1/models", None, Some("wrong")).0, 401);
    assert_eq!(http(s, "GET", "/v1/models", None, Some("sesame")).0, 200);
    // A browser's CORS preflight comes without the key: answered, any origin allowed; the
    // answers themselves allow any origin too (the key still guards them).
    let head = |req: String| {
        let text = exchange(s, &req).to_ascii_lowercase();
        text.split_once("\r\n\r\n").unwrap().0.to_string()
    };
    let pre = head(format!(
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: {s}\r\nOrigin: http://example.com\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, \
         content-type\r\nConnection: close\r\n\r\n"
    ));
    assert!(pre.starts_with("http/1.1 204"), "{pre}");
    assert!(pre.contains("access-control-allow-origin: *"), "{pre}");
    assert!(
        pre.contains("access-control-allow-headers: authorization, content-type"),
        "{pre}"
    );
    let get = head(format!(
        "GET /v1/models HTTP/1.1\r\nHost: {s}\r\nOrigin: http://example.com\r\n\
         Authorization: Bearer sesame\r\nConnection: close\r\n\r\n"
    ));
    assert!(get.starts_with("http/1.1 200"), "{get}");
    assert!(get.contains("access-control-allow-origin: *"), "{get}");
}

/// The value of one `gpt_oss:NAME` line of /metrics.
fn metric(s: &str, name: &str) -> u64 {
    let (status, text) = http(s, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("gpt_oss:{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn a_client_that_disconnects_is_dropped_and_its_blocks_freed() {
    if !have_gpu() {
        return;
    }
    let (_dir, model) = tiny();
    let server = start(&model, &[]);
    let s = server.addr.as_str();
    let free = [
        metric(s, "kv_cache_free_blocks_full"),
        metric(s, "kv_cache_free_blocks_window"),
    ];
    // A long stream, abandoned after its first event.
    let body = json!({"prompt": "Tell me everything", "max_tokens": 200, "temperature": 0, "stream": true})
        .to_string();
    let mut c = TcpStream::connect(s).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: {s}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(c);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early"
        );
    }
    assert_eq!(metric(s, "num_requests_running"), 1);
    drop(reader);
    // The engine notices before its next pass: wait for that (each poll is a round trip).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while metric(s, "request_cancelled_total") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request was never cancelled"
        );
        std::thread::yield_now();
    }
    assert_eq!(metric(s, "num_requests_running"), 0);
    assert!(metric(s, "generation_tokens_total") < 200);
    assert_eq!(metric(s, "kv_cache_free_blocks_full"), free[0]);
    assert_eq!(metric(s, "kv_cache_free_blocks_window"), free[1]);
}

#[test]
fn the_openai_sdk_talks_to_it() {
    if !have_gpu() {
        return;
    }
    // tools/setup.sh puts the SDK in .venv; CI (GPT_OSS_REQUIRE_GPU) must have it.
    let python = std::env::var("GPT_OSS_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    let has_sdk = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk {
        assert!(
            std::env::var("GPT_OSS_REQUIRE_GPU").is_err(),
            "no openai SDK at {python}: run tools/setup.sh"
        );
        eprintln!("skipping: no openai SDK at {python} (tools/setup.sh installs it)");
        return;
    }
    let (_dir, model) = tiny();
    let server = start(&model, &[]);
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tools/openai_sdk_check.py"
        ))
        .arg(format!("http://{}/v1", server.addr))
        .arg("tiny")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_server_cleanly() {
    if !have_gpu() {
        return;
    }
    let (_dir, model) = tiny();
    let mut server = start(&model, &[]);
    let s = server.addr.clone();
    // One request done first, so the engine thread has run.
    assert_eq!(
        post(
            &s,
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 2})
        )
        .0,
        200
    );
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

/// A checkpoint whose greedy answer is `script` (see `synth::write_scripted`), served.
fn scripted(script: &str, marker: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    gpt_oss_wgpu::synth::write_scripted(dir.path(), script, Some(marker)).unwrap();
    let server = start(dir.path().to_str().unwrap(), &[]);
    (dir, server)
}

/// The streamed chat chunks folded: (reasoning, content, [(id, name, arguments)], finish).
fn fold_chat(chunks: &[Value]) -> (String, String, Vec<(String, String, String)>, String) {
    let (mut reasoning, mut content, mut calls, mut finish) =
        (String::new(), String::new(), Vec::new(), String::new());
    for c in chunks {
        let choice = &c["choices"][0];
        let d = &choice["delta"];
        reasoning += d["reasoning_content"].as_str().unwrap_or("");
        content += d["content"].as_str().unwrap_or("");
        for t in d["tool_calls"].as_array().into_iter().flatten() {
            let i = t["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                // A call opens with its id and name before any argument.
                let name = t["function"]["name"].as_str().unwrap().to_string();
                calls.push((t["id"].as_str().unwrap().to_string(), name, String::new()));
            }
            calls[i].2 += t["function"]["arguments"].as_str().unwrap_or("");
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (reasoning, content, calls, finish)
}

/// Reasoning, then a tool call, from a model made to answer exactly so: whole, streamed,
/// through the responses API, and with the call forced by `tool_choice`.
#[test]
fn tool_calls_and_reasoning_go_end_to_end() {
    if !have_gpu() {
        return;
    }
    let args = r#"{"city":"Paris"}"#;
    let (_dir, server) = scripted(
        &format!(
            "assistant<|channel|>analysis<|message|>Need the forecast<|end|><|start|>assistant\
             <|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{args}<|call|>"
        ),
        "Need",
    );
    let s = server.addr.as_str();
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let req = json!({"messages": [{"role": "user", "content": "Weather in Paris?"}],
                     "tools": tools, "temperature": 0, "max_tokens": 60});
    let (status, whole) = post(s, "/v1/chat/completions", &req);
    assert_eq!(status, 200, "{whole}");
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{whole}");
    let msg = &choice["message"];
    assert_eq!(msg["reasoning_content"], "Need the forecast");
    assert_eq!(msg["content"], Value::Null);
    let call = &msg["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], args);
    assert!(call["id"].as_str().unwrap().starts_with("call_"));

    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let (reasoning, content, calls, finish) =
        fold_chat(&events(s, "/v1/chat/completions", &streamed));
    assert_eq!(reasoning, "Need the forecast");
    assert_eq!(content, "");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].1.as_str(), calls[0].2.as_str()),
        ("get_weather", args)
    );
    assert_eq!(finish, "tool_calls");

    // The responses API: a reasoning item, then the function call; streamed as typed events.
    let rreq = json!({"input": "Weather in Paris?", "temperature": 0,
        "tools": [{"type": "function", "name": "get_weather", "parameters": tools[0]["function"]["parameters"]}]});
    let (status, resp) = post(s, "/v1/responses", &rreq);
    assert_eq!(status, 200, "{resp}");
    let output = resp["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "reasoning", "{resp}");
    assert_eq!(output[0]["content"][0]["text"], "Need the forecast");
    assert_eq!(output[1]["type"], "function_call");
    assert_eq!(output[1]["name"], "get_weather");
    assert_eq!(output[1]["arguments"], args);
    assert_eq!(output[1]["status"], "completed");
    let mut rs = rreq.clone();
    rs["stream"] = json!(true);
    let (status, text) = http(s, "POST", "/v1/responses", Some(&rs.to_string()), None);
    assert_eq!(status, 200, "{text}");
    let evs = response_events(&text);
    let arg_deltas: String = evs
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(arg_deltas, args);
    assert_eq!(evs.last().unwrap()["type"], "response.completed");

    // tool_choice: a named function makes the first message a call to it (its arguments are
    // whatever the model writes there: here its reasoning text), required a call to some tool.
    let mut named = req.clone();
    named["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let (status, v) = post(s, "/v1/chat/completions", &named);
    assert_eq!(status, 200, "{v}");
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls[0]["function"]["name"], "get_weather", "{v}");
    assert_eq!(
        calls[0]["function"]["arguments"], "Need the forecast",
        "{v}"
    );
    assert_eq!(v["choices"][0]["message"]["reasoning_content"], Value::Null);
    // A call that max_tokens cuts off ends with `length`, whole or streamed, and is incomplete
    // in the responses API: its arguments are unfinished.
    let mut cut = named.clone();
    cut["max_tokens"] = json!(2);
    let (status, v) = post(s, "/v1/chat/completions", &cut);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    cut["stream"] = json!(true);
    assert_eq!(
        fold_chat(&events(s, "/v1/chat/completions", &cut)).3,
        "length"
    );
    // Two tokens short of the whole answer: inside the call's arguments.
    let whole_tokens = whole["usage"]["completion_tokens"].as_u64().unwrap();
    let mut rcut = rreq.clone();
    rcut["max_output_tokens"] = json!(whole_tokens - 2);
    let (status, resp) = post(s, "/v1/responses", &rcut);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["status"], "incomplete", "{resp}");
    let last = resp["output"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["type"], &last["status"]),
        (&json!("function_call"), &json!("incomplete")),
        "{resp}"
    );
    let mut auto_cut = req.clone();
    auto_cut["max_tokens"] = json!(whole_tokens - 2);
    let (status, v) = post(s, "/v1/chat/completions", &auto_cut);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    let mut required = req.clone();
    required["tool_choice"] = json!("required");
    let (status, v) = post(s, "/v1/chat/completions", &required);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather",
        "{v}"
    );
    let mut none = req.clone();
    none["tool_choice"] = json!("required");
    none.as_object_mut().unwrap().remove("tools");
    assert_eq!(post(s, "/v1/chat/completions", &none).0, 400);
}

/// Reasoning, then a final answer: content with log-probabilities, whole and streamed.
#[test]
fn reasoning_and_content_with_logprobs() {
    if !have_gpu() {
        return;
    }
    let (_dir, server) = scripted(
        "assistant<|channel|>analysis<|message|>Think about it<|end|><|start|>assistant\
         <|channel|>final<|message|>The answer is forty two<|return|>",
        "Think",
    );
    let s = server.addr.as_str();
    let req = json!({"messages": [{"role": "user", "content": "Question?"}], "temperature": 0,
                     "max_tokens": 40, "logprobs": true, "top_logprobs": 2});
    let (status, whole) = post(s, "/v1/chat/completions", &req);
    assert_eq!(status, 200, "{whole}");
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["reasoning_content"], "Think about it");
    assert_eq!(choice["message"]["content"], "The answer is forty two");
    // One entry per content token, whose bytes make the content; the model is certain of each.
    let entries = choice["logprobs"]["content"].as_array().unwrap();
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|e| {
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
        })
        .collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), "The answer is forty two");
    for e in entries {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["token"], e["token"]);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        assert!(top[1]["logprob"].as_f64().unwrap() < e["logprob"].as_f64().unwrap());
    }
    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let chunks = events(s, "/v1/chat/completions", &streamed);
    let (reasoning, content, calls, finish) = fold_chat(&chunks);
    assert_eq!(
        (
            reasoning.as_str(),
            content.as_str(),
            calls.len(),
            finish.as_str()
        ),
        ("Think about it", "The answer is forty two", 0, "stop")
    );
    let streamed_entries: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(&streamed_entries, entries);
}
