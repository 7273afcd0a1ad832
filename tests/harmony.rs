//! The Harmony chat format against openai-harmony 0.0.8: prompts rendered from chat-completions
//! requests (token ids compared exactly) and completions parsed whole and token by token.
//! Fixtures: tools/make_harmony_fixtures.py.

use std::path::Path;
use std::sync::OnceLock;

use gpt_oss_wgpu::Tokenizer;
use gpt_oss_wgpu::chat::harmony::{Harmony, Specials, developer_text};
use gpt_oss_wgpu::chat::parser::{ParseEvent, ParsedMessage};
use gpt_oss_wgpu::chat::{
    AssistantMessage, ChatRequest, Content, DeveloperContent, ResponseFormat, Role, StreamParser,
    ToolDescription,
};
use serde_json::Value;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let json = gpt_oss_wgpu::tokenizer::gpt_oss_tokenizer_json(201088).unwrap();
        Tokenizer::from_bytes(json.as_bytes()).unwrap()
    })
}

/// A fixture file from tests/data, or from `GPT_OSS_HARMONY_FIXTURES` (a folder of fixtures made
/// with another seed and more random cases: tools/make_harmony_fixtures.py --out).
fn fixture(name: &str) -> Vec<Value> {
    let dir = match std::env::var_os("GPT_OSS_HARMONY_FIXTURES") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"),
    };
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

#[test]
fn renders_requests_like_openai_harmony() {
    let tok = tokenizer();
    let h = Harmony::new(tok).unwrap();
    let cases = fixture("harmony_render.json");
    assert!(cases.len() >= 30);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let req = ChatRequest::from_json(&c["request"].to_string()).unwrap();
        let msgs = req.to_harmony(c["date"].as_str().unwrap()).unwrap();
        let got = h.render_for_completion(&msgs).unwrap();
        let want: Vec<u32> = serde_json::from_value(c["token_ids"].clone()).unwrap();
        if got != want {
            panic!(
                "{name}: rendering differs\n--- ours ---\n{}\n--- openai-harmony ---\n{}",
                tok.decode(&got).unwrap(),
                c["text"].as_str().unwrap()
            );
        }
    }
}

#[test]
fn parses_completions_like_openai_harmony() {
    let tok = tokenizer();
    let ids = Specials::of(tok).unwrap();
    for c in fixture("harmony_parse.json") {
        let name = c["name"].as_str().unwrap();
        let tokens: Vec<u32> = serde_json::from_value(c["token_ids"].clone()).unwrap();
        let mut p = StreamParser::new(ids, Some(Role::Assistant));
        let mut deltas = Vec::new();
        for &t in &tokens {
            let d: String = p
                .push(tok, t)
                .into_iter()
                .filter_map(|e| match e {
                    ParseEvent::Delta(d) => Some(d),
                    _ => None,
                })
                .collect();
            deltas.push(d);
        }
        p.finish();
        assert_eq!(p.error, None, "{name}");
        let want_deltas: Vec<String> = serde_json::from_value(c["deltas"].clone()).unwrap();
        assert_eq!(deltas, want_deltas, "{name}: deltas");
        let got: Vec<Value> = p
            .messages
            .iter()
            .map(|m| serde_json::to_value(m).unwrap())
            .collect();
        assert_eq!(
            got,
            c["messages"].as_array().unwrap().clone(),
            "{name}: messages"
        );
    }
}

#[test]
fn assistant_message_from_a_tool_call_completion() {
    let tok = tokenizer();
    let cases = fixture("harmony_parse.json");
    let c = cases
        .iter()
        .find(|c| c["name"] == "tool_call_constrained")
        .unwrap();
    let tokens: Vec<u32> = serde_json::from_value(c["token_ids"].clone()).unwrap();
    let p = StreamParser::parse_all(
        tok,
        Specials::of(tok).unwrap(),
        Some(Role::Assistant),
        &tokens,
    );
    let mut n = 0;
    let m = AssistantMessage::from_parsed(&p.messages, || {
        n += 1;
        format!("call_{n}")
    });
    assert_eq!(m.reasoning_content.as_deref(), Some("Need weather."));
    assert_eq!(m.content, None);
    assert_eq!(m.tool_calls.len(), 1);
    assert_eq!(m.tool_calls[0].function.name, "get_weather");
    assert_eq!(
        m.tool_calls[0].function.arguments,
        "{\"location\": \"Paris\"}"
    );
}

#[test]
fn several_analysis_messages_join_with_newlines() {
    // Two analysis messages, then two final pieces: reasoning_content joins the analysis with
    // "\n" as vLLM does, content keeps the final text as it came.
    let msg = |channel: &str, text: &str| ParsedMessage {
        role: Role::Assistant,
        name: None,
        recipient: None,
        channel: Some(channel.into()),
        content_type: None,
        content: text.into(),
    };
    let parsed = [
        msg("analysis", "First thought."),
        msg("analysis", "Second thought."),
        msg("final", "Hello"),
        msg("final", " there."),
    ];
    let m = AssistantMessage::from_parsed(&parsed, || "call_1".into());
    assert_eq!(
        m.reasoning_content.as_deref(),
        Some("First thought.\nSecond thought.")
    );
    assert_eq!(m.content.as_deref(), Some("Hello there."));
}

#[test]
fn malformed_output_never_panics_and_keeps_what_parsed() {
    let tok = tokenizer();
    let ids = Specials::of(tok).unwrap();
    let good = fixture("harmony_parse.json")
        .into_iter()
        .find(|c| c["name"] == "analysis_then_final")
        .unwrap();
    let tokens: Vec<u32> = serde_json::from_value(good["token_ids"].clone()).unwrap();
    // Every prefix, and the sequence with stray tokens spliced in, parse without panicking.
    for cut in 0..tokens.len() {
        let p = StreamParser::parse_all(tok, ids, Some(Role::Assistant), &tokens[..cut]);
        assert!(p.messages.len() <= 2);
    }
    let mut bad = tokens.clone();
    bad.insert(10, ids.message);
    bad.insert(3, ids.end);
    bad.push(12345);
    bad.push(ids.start);
    let p = StreamParser::parse_all(tok, ids, Some(Role::Assistant), &bad);
    assert!(p.error.is_some());
    assert!(!p.messages.is_empty());
}

#[test]
fn bad_requests_get_clear_errors() {
    let bad = [
        (r#"{"messages": []}"#, "empty"),
        (
            r#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
            "unknown role",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "extreme"}"#,
            "reasoning_effort",
        ),
        (
            r#"{"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}"#,
            "tool_call_id",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web", "function": {"name": "f"}}]}"#,
            "tool type",
        ),
    ];
    let check = |json: &str, needle: &str| {
        let err = ChatRequest::from_json(json)
            .and_then(|r| r.to_harmony("2025-01-01"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{json}: {err}");
    };
    for (json, needle) in bad {
        check(json, needle);
    }
    // response_format's errors, each in a request that is otherwise fine.
    for (format, needle) in [
        (r#"{"type": "xml"}"#, "response_format type `xml`"),
        ("{}", "needs a `type`"),
        (r#"{"type": "json_schema"}"#, "`json_schema` object"),
        (
            r#"{"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}"#,
            "`name`",
        ),
        (
            r#"{"type": "json_schema", "json_schema": {"name": "a", "schema": 3}}"#,
            "`schema`",
        ),
    ] {
        let json = format!(
            r#"{{"messages": [{{"role": "user", "content": "x"}}], "response_format": {format}}}"#
        );
        check(&json, needle);
    }
    assert!(ChatRequest::from_json("{not json").is_err());
}

/// The schema of the Harmony guide's structured-output example, as the guide prints it.
const GUIDE_SCHEMA: &str = concat!(
    r#"{"properties":{"items":{"type":"array","description":"entries on the shopping list","#,
    r#""items":{"type":"string"}}},"type":"object"}"#
);

/// The developer message of the Harmony guide's structured-output example (OpenAI cookbook,
/// "OpenAI harmony response format", Structured output): openai-harmony 0.0.8 has no response
/// formats to compare with, so the guide's text is the reference.
#[test]
fn response_formats_render_as_the_harmony_guide_shows() {
    let schema: Value = serde_json::from_str(GUIDE_SCHEMA).unwrap();
    let shopping = ResponseFormat {
        name: "shopping_list".into(),
        description: None,
        schema: schema.clone(),
    };
    let dev = DeveloperContent {
        instructions: Some("You are a helpful shopping assistant".into()),
        response_formats: vec![shopping.clone()],
        ..Default::default()
    };
    assert_eq!(
        developer_text(&dev),
        format!(
            "# Instructions\n\nYou are a helpful shopping assistant\n\n# Response Formats\n\n\
             ## shopping_list\n\n{GUIDE_SCHEMA}"
        )
    );
    // The formats close the message, after the tools; a description is a comment per line.
    let dev = DeveloperContent {
        instructions: None,
        function_tools: vec![ToolDescription {
            name: "f".into(),
            description: String::new(),
            parameters: None,
        }],
        response_formats: vec![ResponseFormat {
            description: Some("What to buy.\nOne line an item.".into()),
            ..shopping
        }],
    };
    let text = developer_text(&dev);
    assert!(
        text.ends_with(&format!(
            "}} // namespace functions\n\n# Response Formats\n\n## shopping_list\n\n\
             // What to buy.\n// One line an item.\n{schema}"
        )),
        "{text}"
    );
}

/// `response_format` of a chat request: `json_schema` gives the developer message its format
/// (even without instructions), `json_object` an object, `text` nothing.
#[test]
fn response_format_reaches_the_developer_message() {
    let developer = |format: &str| {
        let req = ChatRequest::from_json(&format!(
            r#"{{"messages": [{{"role": "user", "content": "x"}}], "response_format": {format}}}"#
        ))
        .unwrap();
        let msgs = req.to_harmony("2025-01-01").unwrap();
        msgs.iter().find_map(|m| match &m.content {
            Content::Developer(d) => Some(d.clone()),
            _ => None,
        })
    };
    let d = developer(
        r#"{"type": "json_schema", "json_schema": {"name": "answer", "description": "d",
            "schema": {"type": "object", "required": ["a"]}, "strict": true}}"#,
    )
    .unwrap();
    assert_eq!(d.instructions, None);
    assert_eq!(
        d.response_formats,
        vec![ResponseFormat {
            name: "answer".into(),
            description: Some("d".into()),
            schema: serde_json::json!({"type": "object", "required": ["a"]}),
        }]
    );
    let d = developer(r#"{"type": "json_object"}"#).unwrap();
    assert_eq!(
        d.response_formats[0].schema,
        serde_json::json!({"type": "object"})
    );
    assert_eq!(developer(r#"{"type": "text"}"#), None);
    assert_eq!(developer("null"), None);
}
