//! The command line on a small synthetic checkpoint: synth, generate, logits (checked against the
//! transformers fixture), and clear one-line errors for bad checkpoints and requests.

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gpt-oss-wgpu"))
}

fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().unwrap();
    eprintln!(
        "$ gpt-oss-wgpu {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn have_gpu() -> bool {
    let ok = run(&["devices"]).status.success();
    assert!(
        ok || std::env::var("GPT_OSS_REQUIRE_GPU").is_err(),
        "GPT_OSS_REQUIRE_GPU is set but no GPU"
    );
    ok
}

/// The parity checkpoint (same arguments as tools/make_parity_fixtures.py).
fn synth(dir: &Path) {
    let out = run(&[
        "synth",
        "--preset",
        "tiny",
        "--vocab",
        "1024",
        "--seed",
        "7",
        "--shard-mib",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success());
}

/// A failed command prints one `error:` line and no panic.
fn assert_clean_error(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "last line: {last}");
    assert!(last.contains(needle), "`{needle}` not in: {last}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn help_for_every_command() {
    for c in [
        "devices",
        "synth",
        "generate",
        "logits",
        "bench",
        "chat",
        "render",
        "parse",
        "serve",
        "bench-serve",
        "kernel-stats",
    ] {
        let out = run(&[c, "--help"]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

/// kernel-stats prints a driver's statistics of each kernel it compiles, or says in one line why it
/// cannot (lavapipe offers no pipeline statistics; a machine may have no Vulkan at all).
#[test]
fn kernel_stats_reports_or_says_why_not() {
    let out = run(&["kernel-stats", "--filter", "embed.main"]);
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("embed.main:"));
        assert!(line.is_some_and(|l| !l.contains("not compiled")), "{text}");
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with("error: "), "last line: {last}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = run(&["kernel-stats", "--device", "99"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn generate_and_logits() {
    if !have_gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    synth(&model);
    let m = model.to_str().unwrap();

    let generate = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "generate",
            "--model",
            m,
            "--prompt",
            "The quick brown fox",
            "--max-tokens",
            "6",
            "--json",
            "--raw",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let greedy = generate(&["--greedy"]);
    assert_eq!(greedy["token_ids"].as_array().unwrap().len(), 6);
    assert_eq!(greedy["finish_reason"], "length");
    assert_eq!(generate(&["--greedy"])["token_ids"], greedy["token_ids"]);
    let a = generate(&["--seed", "5", "--temperature", "0.9", "--top-k", "50"]);
    let b = generate(&["--seed", "5", "--temperature", "0.9", "--top-k", "50"]);
    assert_eq!(a["token_ids"], b["token_ids"], "same seed, same tokens");

    // A stop string ends the output where the text would first contain it: take a piece of the
    // greedy text and stop at it.
    let text = greedy["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 4 {
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
        let cut = generate(&["--greedy", "--stop", &stop]);
        let want = &text[..text.find(&stop).unwrap()];
        assert_eq!(cut["text"], want, "stop {stop:?} in {text:?}");
        assert_eq!(cut["finish_reason"], "stop");
    }

    // Without tokenizer.json the built-in gpt-oss tokenizer is used, and says so.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "tokenizer.json" {
            std::fs::copy(e.path(), bare.join(e.file_name())).unwrap();
        }
    }
    let out = run(&[
        "generate",
        "--model",
        bare.to_str().unwrap(),
        "--prompt",
        "The quick brown fox",
        "--raw",
        "--greedy",
        "--max-tokens",
        "6",
        "--json",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("built-in gpt-oss tokenizer"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_ids"], greedy["token_ids"]);

    // Streaming text mode prints to stdout, and its summary says which limit cut the output (the
    // model's end ids lie outside its 1024-token vocabulary, so only a limit can end it).
    let summary = |extra: &[&str]| -> String {
        let mut args = vec![
            "generate",
            "--model",
            m,
            "--token-ids",
            "1,2,3",
            "--max-tokens",
            "4",
            "--greedy",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.status.success());
        assert!(!out.stdout.is_empty());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let s = summary(&[]);
    assert!(s.contains("3 prompt tokens, 4 generated"), "{s}");
    assert!(s.contains("stopped at --max-tokens 4"), "{s}");
    let s = summary(&["--max-context", "5"]);
    assert!(s.contains("2 generated"), "{s}");
    assert!(
        s.contains("stopped at the context's end, --max-context 5"),
        "{s}"
    );

    // logits of the fixture's first tokens equal transformers' rows.
    let fx = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/parity_tiny.safetensors"),
    )
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&fx).unwrap();
    let ids: Vec<i32> = bytemuck::pod_collect_to_vec(st.tensor("token_ids").unwrap().data());
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor("logits").unwrap().data());
    let n = 12;
    let list: Vec<String> = ids[..n].iter().map(|i| i.to_string()).collect();
    let joined = list.join(",");
    let path = dir.path().join("logits.safetensors");
    // In one pass, and in passes of 5 tokens (each pass's logits rows sized by --chunk).
    for chunk in [None, Some("5")] {
        let mut args = vec![
            "logits",
            "--model",
            m,
            "--token-ids",
            &joined,
            "--out",
            path.to_str().unwrap(),
            "--kv-f32",
        ];
        args.extend(chunk.iter().flat_map(|c| ["--chunk", c]));
        let out = run(&args);
        assert!(out.status.success());
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("logits").unwrap();
        assert_eq!(t.shape(), &[n, 1024]);
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
        let d = got
            .iter()
            .zip(&want[..n * 1024])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            d < 1e-4,
            "chunk {chunk:?}: logits differ from transformers by {d}"
        );
    }

    // Requests that cannot be served are refused from config.json alone, before any weights
    // are loaded (no "loaded" line).
    let long: Vec<String> = (0..40).map(|i| (i % 500).to_string()).collect();
    // (--max-tokens 0 is refused earlier still, as the arguments are read:
    // zero_counts_are_refused_before_loading.)
    let refusals: [(&[&str], &str); 3] = [
        (
            &["--token-ids", &long.join(","), "--max-context", "32"],
            "context",
        ),
        (&["--token-ids", "5000"], "vocabulary"),
        (&["--token-ids", "1,2", "--top-p", "0"], "top_p"),
    ];
    for (extra, needle) in refusals {
        let mut args = vec!["generate", "--model", m];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_clean_error(&out, needle);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("loaded"), "refused only after loading: {err}");
    }
    let out = run(&[
        "logits",
        "--model",
        m,
        "--token-ids",
        "1,5000",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert_clean_error(&out, "vocabulary");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("loaded"));

    // The logits file gets the permissions of any other new file here.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), mode(&plain));

    // bench writes its results on stdout (and with --json, in a file).
    let json = dir.path().join("bench.json");
    let out = run(&[
        "bench",
        "--model",
        m,
        "--prompt-lens",
        "8,40",
        "--decode-steps",
        "2",
        "--max-context",
        "64",
        "--batches",
        "1,2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // The batched step's dispatches, one by one, add up to its per-family profile.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let pairs = |key: &str| -> Vec<(String, f64)> {
        let v = report[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {report}"));
        v.iter()
            .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
            .collect()
    };
    let dispatches = pairs("batch_dispatches_us");
    let families = pairs("batch_decode_kernels_us");
    assert!(!dispatches.is_empty() && !families.is_empty());
    for (family, us) in &families {
        let sum: f64 = dispatches
            .iter()
            .filter(|(label, _)| label.split('.').take(2).collect::<Vec<_>>().join(".") == *family)
            .map(|(_, us)| us)
            .sum();
        assert!(
            (sum - us).abs() <= 1e-6 * us.abs().max(1.0),
            "{family}: {sum} against {us}"
        );
    }
    assert!(pairs("wide_dispatches_us").is_empty());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("prefill") && stdout.contains("decode"),
        "{stdout}"
    );
    // The prefill pass's matrix kernels (40 tokens take the tiled ones) with their work and rate.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("moe.gate_up") && l.contains("TFLOP/s")),
        "{stdout}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("tok/s"));
}

#[test]
fn errors_are_one_line_and_say_each_thing_once() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let m = empty.to_str().unwrap();
    let out = run(&["generate", "--model", m, "--token-ids", "1"]);
    assert_clean_error(&out, "config.json");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    std::fs::write(empty.join("config.json"), "{not json").unwrap();
    let out = run(&["generate", "--model", m, "--token-ids", "1"]);
    assert_clean_error(&out, "not valid JSON");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("config.json").count(), 1, "{err}");

    let out = run(&["synth", "--preset", "huge", "--out", m]);
    assert_clean_error(&out, "unknown preset `huge`");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("request:"));
    // Nothing on stderr but our own lines (no driver noise such as XDG_RUNTIME_DIR).
    let out = run(&["devices"]);
    if out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
    }
}

/// A zero where a count must be positive is refused as the arguments are read, naming the flag,
/// before any model loads (the model folder here does not exist).
#[test]
fn zero_counts_are_refused_before_loading() {
    for (cmd, flag) in [
        ("generate", "--max-tokens"),
        ("generate", "--chunk"),
        ("generate", "--max-context"),
        ("chat", "--max-tokens"),
        ("bench", "--decode-steps"),
        ("bench", "--batches"),
        ("bench", "--prompt-lens"),
        ("serve", "--max-num-seqs"),
        ("synth", "--shard-mib"),
    ] {
        let place = if cmd == "synth" { "--out" } else { "--model" };
        let out = run(&[cmd, place, "/nonexistent", flag, "0"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("");
        let want = format!("error: invalid value '0' for '{flag}");
        assert!(first.starts_with(&want), "{cmd} {flag}: {err}");
        assert!(!err.contains("nonexistent"), "{cmd} {flag}: {err}");
    }
}

#[test]
fn synth_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("m");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("notes.txt"), "mine").unwrap();
    let args = |force: bool| {
        let mut a = vec![
            "synth",
            "--preset",
            "tiny",
            "--vocab",
            "1024",
            "--layers",
            "1",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        if force {
            a.push("--force");
        }
        a
    };
    assert_clean_error(&run(&args(false)), "--force");
    assert!(!out_dir.join("config.json").exists());
    assert!(run(&args(true)).status.success());
    assert!(out_dir.join("config.json").exists());
    assert_eq!(
        std::fs::read_to_string(out_dir.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn bad_checkpoints_get_one_line_errors() {
    if !have_gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    synth(&good);
    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        d
    };
    let generate = |d: &Path| {
        run(&[
            "generate",
            "--model",
            d.to_str().unwrap(),
            "--token-ids",
            "1,2",
            "--max-tokens",
            "1",
        ])
    };

    let missing = dir.path().join("nothing-here");
    assert_clean_error(&generate(&missing), "no such checkpoint folder");
    assert_clean_error(&generate(&good.join("config.json")), "not a directory");

    let truncated = copy("truncated");
    let shard = truncated.join("model-00001-of-00001.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_clean_error(&generate(&truncated), "model-00001-of-00001.safetensors");

    let corrupt = copy("corrupt");
    std::fs::write(
        corrupt.join("model-00000-of-00001.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ",
    )
    .unwrap();
    assert_clean_error(&generate(&corrupt), "not a valid safetensors file");

    // A config that promises more layers than the shards hold.
    let more_layers = copy("more-layers");
    let cfg_path = more_layers.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["num_hidden_layers"] = 4.into();
    cfg["layer_types"]
        .as_array_mut()
        .unwrap()
        .push("full_attention".into());
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_clean_error(&generate(&more_layers), "model.layers.3.");

    // A config whose shape disagrees with the tensors.
    let wrong_shape = copy("wrong-shape");
    let cfg_path = wrong_shape.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = 64.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_clean_error(&generate(&wrong_shape), "expected");

    let bad_value = copy("bad-value");
    let cfg_path = bad_value.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["num_key_value_heads"] = 3.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_clean_error(&generate(&bad_value), "num_key_value_heads");
}

/// A temporary folder holding the tiny preset as `tiny` (full vocabulary, so the Harmony special
/// tokens exist), or None when there is no GPU to run it on.
fn tiny_model() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !have_gpu() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let out = run(&[
        "synth",
        "--preset",
        "tiny",
        "--seed",
        "3",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    Some((dir, model))
}

#[test]
fn render_and_parse_commands() {
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        r#"{"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi <|end|>"}], "reasoning_effort": "high"}"#,
    )
    .unwrap();
    let out = run(&[
        "render",
        "--request",
        req.to_str().unwrap(),
        "--date",
        "2025-06-28",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.starts_with("<|start|>system<|message|>") && text.ends_with("<|start|>assistant"));
    assert!(text.contains("Reasoning: high") && text.contains("# Instructions\n\nBe brief."));
    let ids = v["token_ids"].as_array().unwrap();
    // The spelled <|end|> in the user's text is text, not the special id.
    assert_eq!(ids.iter().filter(|i| **i == 200007).count(), 3);

    // analysis "I need to check." then final "Hello!".
    let out = run(&[
        "parse",
        "--token-ids",
        "200005,35644,200008,40,1309,316,2371,13,200007,200006,173781,200005,17196,200008,13225,0,200002",
    ]);
    assert!(out.status.success());
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["content"], "Hello!");
    assert_eq!(m["reasoning_content"], "I need to check.");
    // Truncated output keeps what was parsed.
    let out = run(&["parse", "--token-ids", "200005,35644,200008,40,1309"]);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["reasoning_content"], "I need");
    assert_clean_error(
        &run(&["render", "--request", "/nonexistent.json"]),
        "nonexistent",
    );

    // What render and parse cannot take is refused, naming the value.
    let image = dir.path().join("image.json");
    std::fs::write(
        &image,
        r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}"#,
    )
    .unwrap();
    assert_clean_error(
        &run(&["render", "--request", image.to_str().unwrap()]),
        "image_url",
    );
    for date in ["notadate", "2025-02-30", "2025-1-05"] {
        let out = run(&["render", "--request", req.to_str().unwrap(), "--date", date]);
        assert_clean_error(&out, date);
    }
    assert_clean_error(&run(&["parse", "--token-ids", "1,2,201088"]), "201088");
    // A parse error exits non-zero but still prints what was parsed.
    let out = run(&["parse", "--token-ids", "200005,35644,200008,40,200007,13"]);
    assert_clean_error(&out, "not valid Harmony");
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["reasoning_content"], "I");
    assert!(m["parse_error"].is_string());
}

#[test]
fn chat_over_a_pipe_with_commands_history_and_cancel() {
    use std::io::Write;
    use std::process::Stdio;
    let Some((dir, model)) = tiny_model() else {
        return;
    };
    let m = model.to_str().unwrap();
    let saved = dir.path().join("conv.json");
    let script = format!(
        "hello there\n/effort high\n/system Be nice.\nline one \\\ncontinued\n\"\"\"\nblock a\nblock b\n\"\"\"\n/save {}\n/bogus\n/reset\n/help\n",
        saved.display()
    );
    let out = piped(
        &["chat", "--model", m, "--max-tokens", "4", "--seed", "1"],
        &script,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    for needle in [
        "reasoning effort: high",
        "instructions set",
        "saved to",
        "unknown command /bogus",
        "conversation cleared",
        "/effort low|medium|high",
    ] {
        assert!(err.contains(needle), "missing `{needle}`");
    }
    assert_eq!(
        err.matches("[4 tokens").count(),
        3,
        "three answers of 4 tokens"
    );
    assert_eq!(
        err.matches("(stopped at --max-tokens 4)]").count(),
        3,
        "{err}"
    );
    let conv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let msgs = conv["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    let users: Vec<&str> = msgs
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        ["hello there", "line one \ncontinued", "block a\nblock b"]
    );
    assert_eq!(msgs.iter().filter(|m| m["role"] == "assistant").count(), 3);
    assert_eq!(conv["reasoning_effort"], "high");

    // generate's chat mode: the prompt is a user message; JSON gives the parsed answer.
    let out = run(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "Hi",
        "--max-tokens",
        "3",
        "--json",
        "--reasoning-effort",
        "low",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generated_tokens"], 3);
    assert_eq!(v["finish_reason"], "length");

    // Ctrl-C stops a long answer; the program goes on to the next command. The signal is sent
    // once the answer is being written, which the note about non-chat output on stderr shows (a
    // random model writes no chat-format text).
    let mut child = bin()
        .args([
            "chat",
            "--model",
            m,
            "--max-tokens",
            "5000",
            "--max-context",
            "8192",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"tell me a long story\n").unwrap();
    let lines = stderr_lines(&mut child);
    let mut err = String::new();
    wait_for_line(&lines, &mut err, "not in the Harmony chat format");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for_line(&lines, &mut err, "(stopped)");
    stdin
        .write_all(format!("/save {}\n/quit\n", saved.display()).as_bytes())
        .unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    err.extend(lines.iter().map(|l| l + "\n"));
    assert!(status.success(), "{err}");
    assert!(err.contains("saved to"), "{err}");
}

/// Runs the binary with `script` on its stdin and waits for it (stderr is echoed for failures).
fn piped(args: &[&str], script: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The child's stderr, line by line, read on a thread.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines into `seen` until one contains `needle`. The bound only turns a hang into a
/// failure; the wait ends as soon as the line arrives.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, seen: &mut String, needle: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1200);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(needle) {
                    return;
                }
            }
            Err(e) => panic!("waiting for `{needle}`: {e}\n{seen}"),
        }
    }
}

#[test]
fn chat_survives_bad_turns_and_reloads_a_saved_conversation() {
    let Some((dir, model)) = tiny_model() else {
        return;
    };
    let m = model.to_str().unwrap();
    let saved = dir.path().join("conv.json");
    let long = "word ".repeat(300);
    let script = format!(
        "first question\n{long}\n/load {missing}\nsecond question\n/save {saved}\n",
        missing = dir.path().join("missing.json").display(),
        saved = saved.display()
    );
    let chat = |extra: &[&str], script: &str| {
        let mut args = vec![
            "chat",
            "--model",
            m,
            "--max-tokens",
            "2",
            "--max-context",
            "300",
            "--top-k",
            "5",
            "--seed",
            "1",
        ];
        args.extend_from_slice(extra);
        let out = piped(&args, script);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    let err = chat(&[], &script);
    assert!(err.contains("error: the prompt has"), "{err}");
    assert!(err.contains("missing.json"), "{err}");
    assert_eq!(err.matches("[2 tokens").count(), 2, "{err}");
    let conv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let users: Vec<&str> = conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["first question", "second question"]);

    // --load continues the saved conversation: saving it again gives the same messages plus
    // the new turn.
    let again = dir.path().join("again.json");
    let err = chat(
        &["--load", saved.to_str().unwrap()],
        &format!("third\n/save {}\n", again.display()),
    );
    assert!(err.contains("4 messages"), "{err}");
    let conv2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    let msgs = conv2["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 6);
    assert_eq!(&msgs[..4], &conv["messages"].as_array().unwrap()[..]);
    assert_eq!(msgs[4]["content"], "third");

    // A bad option is refused before loading.
    let out = run(&["chat", "--model", m, "--reasoning-effort", "extreme"]);
    assert_clean_error(&out, "extreme");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("loaded"));
}
