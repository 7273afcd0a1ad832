//! Bad input, systematically: thousands of generated inputs thrown at checkpoint parsing
//! (safetensors headers, the shard index), config.json validation, the Harmony parser and the
//! chat-completions mapping. Nothing may panic; every rejection is an error with a message.
//! Each property runs a bounded number of cases (PROPTEST_CASES overrides it).

use std::sync::OnceLock;

use gpt_oss_wgpu::Tokenizer;
use gpt_oss_wgpu::chat::harmony::{Harmony, Specials};
use gpt_oss_wgpu::chat::{ChatRequest, Role, StreamParser};
use gpt_oss_wgpu::model::HfConfig;
use gpt_oss_wgpu::model::weights::Shards;
use proptest::prelude::*;
use serde_json::{Value, json};

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let json = gpt_oss_wgpu::tokenizer::gpt_oss_tokenizer_json(201088).unwrap();
        Tokenizer::from_bytes(json.as_bytes()).unwrap()
    })
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(3),
            Just(32),
            Just(64),
            Just(4096)
        ]
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid safetensors file with two small tensors.
fn valid_safetensors() -> Vec<u8> {
    let header = json!({
        "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
        "b": {"dtype": "U8", "shape": [4], "data_offsets": [12, 16]},
    });
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(0..16u8);
    out
}

/// A mutation of a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    SetByte(usize, u8),
    HeaderLen(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..200).prop_map(Mutation::Truncate),
        (0usize..200, any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        prop_oneof![any::<u64>(), 0u64..300].prop_map(Mutation::HeaderLen),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match *m {
        Mutation::Truncate(n) => bytes.truncate(n),
        Mutation::SetByte(i, b) => {
            if let Some(x) = bytes.get_mut(i) {
                *x = b;
            }
        }
        Mutation::HeaderLen(n) => {
            if bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&n.to_le_bytes());
            }
        }
    }
}

/// Config fields with values that are sometimes right, sometimes wrong in kind or size.
fn config_json() -> impl Strategy<Value = Value> {
    let num = prop_oneof![
        4 => prop_oneof![Just(0u64), Just(1), Just(2), Just(4), Just(8), Just(32), Just(64), Just(96), Just(128)]
            .prop_map(Value::from),
        1 => any::<u32>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any_json(),
    ];
    let fields = [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_local_experts",
        "num_experts_per_tok",
        "vocab_size",
        "sliding_window",
        "max_position_embeddings",
        "rope_theta",
        "rms_norm_eps",
        "swiglu_limit",
    ];
    let values = prop::collection::vec(prop::option::weighted(0.85, num), fields.len());
    let layer_types = prop::option::of(prop::collection::vec(
        prop_oneof![
            Just(json!("sliding_attention")),
            Just(json!("full_attention")),
            any_json()
        ],
        0..5,
    ));
    let rope = prop::option::of(prop_oneof![
        Just(json!({"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "original_max_position_embeddings": 4096, "truncate": false})),
        any_json(),
        (any_json(), any_json()).prop_map(|(f, o)| json!({"rope_type": "yarn", "factor": f, "original_max_position_embeddings": o})),
    ]);
    (values, layer_types, rope, prop::option::of(any_json())).prop_map(
        move |(values, layer_types, rope, quant)| {
            let mut obj = serde_json::Map::new();
            obj.insert("model_type".into(), json!("gpt_oss"));
            for (f, v) in fields.iter().zip(values) {
                if let Some(v) = v {
                    obj.insert(f.to_string(), v);
                }
            }
            if let Some(t) = layer_types {
                obj.insert("layer_types".into(), Value::from(t));
            }
            if let Some(r) = rope {
                obj.insert("rope_scaling".into(), r);
            }
            if let Some(q) = quant {
                obj.insert("quantization_config".into(), q);
            }
            Value::Object(obj)
        },
    )
}

/// Token ids: mostly the Harmony specials and ordinary text, some reserved or out of range.
fn token_id() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => prop_oneof![
            Just(199998u32), Just(199999), Just(200002), Just(200003), Just(200005),
            Just(200006), Just(200007), Just(200008), Just(200012)
        ],
        6 => 0u32..199998,
        1 => 200000u32..201088,
        1 => any::<u32>(),
    ]
}

fn chat_message() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        Just("system"),
        Just("developer"),
        Just("user"),
        Just("assistant"),
        Just("tool"),
        Just("robot"),
    ];
    let content = prop_oneof![
        ".{0,20}".prop_map(Value::from),
        Just(Value::Null),
        prop::collection::vec(
            prop_oneof![
                ".{0,10}".prop_map(|t| json!({"type": "text", "text": t})),
                Just(json!({"type": "image_url", "image_url": {"url": "x"}})),
                any_json(),
            ],
            0..3
        )
        .prop_map(Value::from),
        any_json(),
    ];
    let tool_calls = prop::option::of(prop::collection::vec(
        ("[a-z_]{0,8}", ".{0,16}", prop::option::of("[a-z0-9]{1,6}")).prop_map(|(n, a, id)| {
            json!({"id": id, "type": "function", "function": {"name": n, "arguments": a}})
        }),
        0..3,
    ));
    (
        role,
        content,
        tool_calls,
        prop::option::of(".{0,10}"),
        prop::option::of("[a-z0-9]{1,6}"),
    )
        .prop_map(|(role, content, calls, reasoning, call_id)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(c) = calls {
                m["tool_calls"] = Value::from(c);
            }
            if let Some(r) = reasoning {
                m["reasoning_content"] = Value::from(r);
            }
            if let Some(id) = call_id {
                m["tool_call_id"] = Value::from(id);
            }
            m
        })
}

fn chat_request() -> impl Strategy<Value = Value> {
    let tool = ("[a-zA-Z_]{0,10}", prop::option::of(".{0,16}"), any_json()).prop_map(
        |(name, desc, params)| {
            json!({"type": "function", "function": {"name": name, "description": desc, "parameters": params}})
        },
    );
    (
        prop::collection::vec(chat_message(), 0..6),
        prop::option::of(prop::collection::vec(tool, 0..3)),
        prop::option::of(prop_oneof![
            Just("low".to_string()),
            Just("high".to_string()),
            ".{0,6}"
        ]),
    )
        .prop_map(|(messages, tools, effort)| {
            json!({"messages": messages, "tools": tools, "reasoning_effort": effort})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_headers_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..64),
        muts in prop::collection::vec(mutation(), 0..4),
        use_raw in any::<bool>(),
    ) {
        let mut bytes = if use_raw { raw } else { valid_safetensors() };
        for m in &muts {
            apply(&mut bytes, m);
        }
        match Shards::new(vec![("shard.safetensors".to_string(), bytes.clone())]) {
            Err(e) => prop_assert!(e.to_string().contains("shard.safetensors"), "{e}"),
            Ok(shards) => {
                for name in ["a", "b", "missing"] {
                    if let Ok(t) = shards.tensor(name) {
                        let elems: usize = t.shape.iter().product();
                        prop_assert!(t.data.len() <= bytes.len());
                        prop_assert!(elems <= t.data.len());
                    }
                }
            }
        }
    }

    #[test]
    fn config_validation_never_panics(cfg in config_json()) {
        match HfConfig::from_json(&cfg.to_string()).and_then(|c| c.validate()) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(c) => {
                prop_assert!(c.hidden % 32 == 0 && c.inter % 32 == 0);
                prop_assert!(c.kv_heads > 0 && c.heads % c.kv_heads == 0);
                prop_assert!(c.top_k >= 1 && c.top_k <= c.experts);
                prop_assert_eq!(c.sliding.len(), c.layers as usize);
                let freqs = c.rope.inv_freq();
                prop_assert!(freqs.iter().all(|f| !f.is_nan()), "{:?}", freqs);
            }
        }
    }

    #[test]
    fn harmony_parser_never_panics(ids in prop::collection::vec(token_id(), 0..40)) {
        let tok = tokenizer();
        let specials = Specials::of(tok).unwrap();
        for role in [Some(Role::Assistant), None] {
            let p = StreamParser::parse_all(tok, specials, role, &ids);
            if let Some(e) = &p.error {
                prop_assert!(!e.is_empty());
            }
        }
    }

    #[test]
    fn harmony_content_round_trips_and_truncates_to_prefixes(
        text in "\\PC{0,40}",
        cut in 0usize..100,
    ) {
        let tok = tokenizer();
        let specials = Specials::of(tok).unwrap();
        let mut ids = vec![specials.channel];
        ids.extend(tok.encode_ordinary("final").unwrap());
        ids.push(specials.message);
        ids.extend(tok.encode_ordinary(&text).unwrap());
        ids.push(specials.ret);
        let whole = StreamParser::parse_all(tok, specials, Some(Role::Assistant), &ids);
        prop_assert_eq!(whole.error.as_deref(), None);
        prop_assert_eq!(whole.messages.len(), 1);
        prop_assert_eq!(&whole.messages[0].content, &text);
        let part = StreamParser::parse_all(
            tok, specials, Some(Role::Assistant), &ids[..cut.min(ids.len())]);
        if let Some(m) = part.messages.first() {
            let shown = m.content.trim_end_matches('\u{fffd}');
            prop_assert!(text.starts_with(shown), "{:?} is not a prefix of {:?}", shown, text);
        }
    }

    #[test]
    fn chat_requests_map_or_fail_cleanly(req in chat_request(), date in prop_oneof![
        Just("2025-06-28".to_string()), "[0-9-]{0,12}"
    ]) {
        let tok = tokenizer();
        let h = Harmony::new(tok).unwrap();
        match ChatRequest::from_json(&req.to_string()).and_then(|r| r.to_harmony(&date)) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(msgs) => {
                if let Ok(ids) = h.render_for_completion(&msgs) {
                    prop_assert!(ids.len() >= 3);
                }
            }
        }
    }
}

/// The shard index: any `model.safetensors.index.json` text is read or refused with a message
/// naming the file; shard names cannot leave the checkpoint directory.
#[test]
fn shard_index_never_panics() {
    use proptest::test_runner::{Config, TestRunner};
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("m");
    let spec = gpt_oss_wgpu::synth::SynthSpec {
        layers: 1,
        vocab: 1024,
        ..gpt_oss_wgpu::synth::SynthSpec::preset("tiny").unwrap()
    };
    gpt_oss_wgpu::synth::write(&ckpt, &spec, 1, &mut |_, _| {}).unwrap();
    let index_path = ckpt.join("model.safetensors.index.json");
    let shard = "model-00000-of-00000.safetensors";
    let name = prop_oneof![
        Just(shard.to_string()),
        Just("missing.safetensors".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("/etc/hostname".to_string()),
        ".{0,12}",
    ];
    let weight_map = prop::collection::btree_map(
        "[a-z._0-9]{1,20}",
        prop_oneof![name.prop_map(Value::from), any_json()],
        0..4,
    );
    let index = prop_oneof![
        weight_map.prop_map(|m| json!({"weight_map": m}).to_string()),
        any_json().prop_map(|v| v.to_string()),
        ".{0,40}",
    ];
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    runner
        .run(&index, |text| {
            std::fs::write(&index_path, &text).unwrap();
            if let Err(e) = gpt_oss_wgpu::model::weights::load_dir(&ckpt) {
                let msg = e.to_string();
                prop_assert!(!msg.contains("/etc/"), "{msg}");
                prop_assert!(!msg.is_empty());
            }
            Ok(())
        })
        .unwrap();
}
