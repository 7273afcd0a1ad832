#!/usr/bin/env python3
"""Harmony fixtures from openai-harmony (the reference) for tests/harmony.rs.

render: OpenAI chat-completions requests mapped to Harmony the way vLLM maps them for gpt-oss
(leading system/developer message -> developer instructions; tools -> developer message;
reasoning -> analysis; tool_calls -> commentary calls; tool -> functions.NAME to=assistant;
analysis before the last final answer dropped), rendered for completion by openai-harmony.
parse: assistant completions (token ids) and what openai-harmony parses from them, whole and
token by token, including truncated outputs and tool calls.
Both also get seeded random cases (random_*): 120 in the committed fixtures; many more with
another seed into another folder make a differential check against openai-harmony, which
tests/harmony.rs reads from GPT_OSS_HARMONY_FIXTURES instead of tests/data:

    python3 tools/make_harmony_fixtures.py --random 3000 --seed 7 --out /tmp/h
    GPT_OSS_HARMONY_FIXTURES=/tmp/h cargo test --release --test harmony

Usage: TIKTOKEN_ENCODINGS_BASE=<folder with o200k_base.tiktoken> python3 tools/make_harmony_fixtures.py
(`tiktoken-rs` ships o200k_base.tiktoken in its assets/ folder.)
"""
import argparse, json, os, random

ARGS = argparse.ArgumentParser()
ARGS.add_argument("--random", type=int, default=120, help="random requests and completions")
ARGS.add_argument("--seed", type=int, default=20261204)
ARGS.add_argument("--out", default="tests/data")
ARGS = ARGS.parse_args()

from openai_harmony import (Author, Conversation, DeveloperContent, HarmonyEncodingName, Message,
                            ReasoningEffort, Role, StreamableParser, SystemContent, TextContent,
                            ToolDescription,
                            load_harmony_encoding)

DATE = "2025-06-28"
enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}},
        "required": ["location"]}}}
SEARCH = {"type": "function", "function": {"name": "search_docs", "description": "Search the documentation.\nReturns the best matches.",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "title": "Query", "examples": ["install", "gpu"]},
        "limit": {"type": "integer", "default": 5, "description": "How many results"},
        "filters": {"type": "object", "description": "Narrow the search", "properties": {
            "section": {"type": "string", "enum": ["api", "guide"]},
            "since": {"type": ["string", "null"]}}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "exact": {"type": "boolean"}},
        "required": ["query"]}}}
ONEOF = {"type": "function", "function": {"name": "schedule", "description": "Schedule a meeting",
    "parameters": {"type": "object", "properties": {
        "when": {"description": "A time", "oneOf": [
            {"type": "string", "description": "ISO date"},
            {"type": "number", "description": "Unix time", "nullable": True}]},
        "room": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {"id": {"type": "integer"}}}],
                 "default": "main"},
        "attendees": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "email": {"type": "string", "nullable": True}}, "required": ["name"]}}},
        "required": ["when"]}}}
# Defaults inside unions: a property's enum default goes bare, a nested union's is JSON (quoted,
# escaped); a `oneOf` that is not a list renders as a plain property without its description.
UNION_DEFAULTS = {"type": "function", "function": {"name": "pick", "description": "Pick one",
    "parameters": {"type": "object", "properties": {
        "color": {"oneOf": [{"type": "string", "enum": ["red", "blue"], "default": "red"}, {"type": "integer", "default": 3}],
                  "default": "blue"},
        "nested": {"type": "array", "items": {"oneOf": [
            {"type": "string", "enum": ["a\"b", "c"], "default": "a\"b", "description": "quoted"},
            {"type": "string", "default": "plain"}]}},
        "odd": {"oneOf": {"type": "string"}, "type": "string", "description": "hidden", "default": "x"}},
        "required": ["color"]}}}
NO_PARAMS = {"type": "function", "function": {"name": "get_time", "description": "Current time"}}
EMPTY_PARAMS = {"type": "function", "function": {"name": "ping", "description": "",
    "parameters": {"type": "object", "properties": {}}}}
ANY_ARRAY = {"type": "function", "function": {"name": "store", "description": "Store values",
    "parameters": {"type": "object", "properties": {"values": {"type": "array"}, "meta": {}},
                   "required": ["values", "meta"]}}}

NESTED = {"type": "function", "function": {"name": "plan_route", "description": "Plan a route.\n\nUse metric units.",
    "parameters": {"type": "object", "properties": {
        "stops": {"type": "array", "description": "Ordered stops", "items": {"type": "object", "properties": {
            "city": {"type": "string"}, "nights": {"type": "integer", "minimum": 0}}, "required": ["city"]}},
        "mode": {"type": "string", "enum": ["car", "train", "bike"], "description": "How to travel"},
        "level": {"type": "integer", "enum": [1, 2, 3]},
        "budget": {"type": "number", "description": "In euros", "default": 100.5},
        "avoid": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "flag": {"type": "boolean", "default": False}},
        "required": ["stops", "mode"]}}}
ENUM_ONLY = {"type": "function", "function": {"name": "set_mode", "description": "Set the mode",
    "parameters": {"type": "object", "properties": {"mode": {"enum": ["a", "b"]}, "n": {"type": ["integer", "null"], "description": "maybe"}}}}}

def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

def U(t): return {"role": "user", "content": t}

CASES = {
    "plain_user": {"messages": [U("Hello!")]},
    "effort_low": {"messages": [U("What is 2+2?")], "reasoning_effort": "low"},
    "effort_medium": {"messages": [U("Explain tides.")], "reasoning_effort": "medium"},
    "effort_high": {"messages": [U("Prove there are infinitely many primes.")], "reasoning_effort": "high"},
    "system_instructions": {"messages": [{"role": "system", "content": "You are a terse assistant."}, U("Hi")]},
    "developer_instructions": {"messages": [{"role": "developer", "content": "Answer in French.\nBe brief."}, U("Good morning")]},
    "tool_weather": {"messages": [U("Weather in Paris?")], "tools": [WEATHER]},
    "tools_rich": {"messages": [U("Find install docs")], "tools": [SEARCH, WEATHER], "reasoning_effort": "high"},
    "tool_oneof": {"messages": [U("Book a meeting tomorrow")], "tools": [ONEOF]},
    "tool_no_params": {"messages": [U("What time is it?")], "tools": [NO_PARAMS, EMPTY_PARAMS]},
    "tool_any_array": {"messages": [U("Save 1,2,3")], "tools": [ANY_ARRAY]},
    "tools_with_instructions": {"messages": [{"role": "system", "content": "Use tools when helpful."}, U("Weather in Oslo?")], "tools": [WEATHER, NO_PARAMS]},
    "tool_call_and_result": {"messages": [U("Weather in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", {"location": "Paris, France"})]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}], "tools": [WEATHER]},
    "tool_call_with_reasoning": {"messages": [U("Weather in Rome?"),
        {"role": "assistant", "reasoning_content": "Need the weather tool.", "tool_calls": [call("c2", "get_weather", {"location": "Rome"})]},
        {"role": "tool", "tool_call_id": "c2", "content": "sunny"}], "tools": [WEATHER]},
    "parallel_tool_calls": {"messages": [U("Weather in Paris and Rome?"),
        {"role": "assistant", "content": "Checking both.", "tool_calls": [call("a", "get_weather", {"location": "Paris"}), call("b", "get_weather", {"location": "Rome"})]},
        {"role": "tool", "tool_call_id": "a", "content": "rain"}, {"role": "tool", "tool_call_id": "b", "content": "sun"}], "tools": [WEATHER]},
    "tool_result_then_answer_then_user": {"messages": [U("Weather in Paris?"),
        {"role": "assistant", "reasoning": "call tool", "tool_calls": [call("x", "get_weather", {"location": "Paris"})]},
        {"role": "tool", "tool_call_id": "x", "content": "21C"},
        {"role": "assistant", "content": "It is 21C in Paris."}, U("And tomorrow?")], "tools": [WEATHER]},
    "multi_turn": {"messages": [U("Hi"), {"role": "assistant", "content": "Hello! How can I help?"}, U("Tell me a joke")]},
    "reasoning_in_history_dropped": {"messages": [U("2+2?"), {"role": "assistant", "reasoning_content": "simple add", "content": "4"}, U("3+3?")]},
    "reasoning_last_turn_kept": {"messages": [U("Plan a trip"), {"role": "assistant", "reasoning": "Think about the budget first."}]},
    "reasoning_field_alias": {"messages": [U("Hi"), {"role": "assistant", "reasoning": "greet back", "content": "Hey"}, U("bye")], "reasoning_effort": "low"},
    "special_tokens_in_content": {"messages": [U("Please print <|end|><|start|>assistant<|channel|>final<|message|> literally")]},
    "unicode_content": {"messages": [U("東京の天気は？ Привет! 🙂 naïve café — ok")]},
    "code_content": {"messages": [U("def f(x):\n    return x ** 2\n\n\n# why?\n\tindent\n")]},
    "whitespace_content": {"messages": [U("   many    spaces   \n\n\n  ")]},
    "content_parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]}]},
    # Parts meet inside a word: tokenized apart they are not the tokens of the joined text.
    "content_parts_split_word": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo wor"}, {"type": "text", "text": "ld"}]},
                                              {"role": "assistant", "content": [{"type": "text", "text": "Fi"}, {"type": "text", "text": "ne."}]}, U("Again")]},
    "empty_user": {"messages": [U("")]},
    "system_parts": {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be kind."}]}, U("Hello")], "reasoning_effort": "high"},
    "later_system_message": {"messages": [U("Hi"), {"role": "system", "content": "Now answer in German."}, U("How are you?")]},
    "tool_by_name": {"messages": [U("time?"), {"role": "assistant", "tool_calls": [call("t1", "get_time", {})]},
        {"role": "tool", "tool_call_id": "t1", "content": "12:00"}], "tools": [NO_PARAMS]},
    "long_conversation": {"messages": [U(f"message {i}") if i % 2 == 0 else {"role": "assistant", "content": f"reply {i}"} for i in range(9)], "reasoning_effort": "medium"},
    "instructions_and_all_tools_high": {"messages": [{"role": "developer", "content": "Always cite sources."}, U("Research GPUs")],
        "tools": [SEARCH, ONEOF, NO_PARAMS, ANY_ARRAY], "reasoning_effort": "high"},
    "assistant_content_with_tool_call": {"messages": [U("Do it"), {"role": "assistant", "content": "Let me check.", "reasoning_content": "need data",
        "tool_calls": [call("q", "search_docs", {"query": "gpu", "limit": 3})]}, {"role": "tool", "tool_call_id": "q", "content": "[\"a\",\"b\"]"}], "tools": [SEARCH]},
    "nested_tool_schema": {"messages": [U("Plan Paris to Rome")], "tools": [NESTED]},
    "union_defaults": {"messages": [U("Pick a color")], "tools": [UNION_DEFAULTS]},
    "enum_and_nullable_params": {"messages": [U("mode a")], "tools": [ENUM_ONLY], "reasoning_effort": "low"},
    "tool_result_in_parts": {"messages": [U("time?"), {"role": "assistant", "content": "", "tool_calls": [call("t9", "get_time", {})]},
        {"role": "tool", "tool_call_id": "t9", "content": [{"type": "text", "text": "12:"}, {"type": "text", "text": "00"}]}], "tools": [NO_PARAMS]},
    "system_then_developer": {"messages": [{"role": "system", "content": "Sys A."}, {"role": "developer", "content": "Dev B."}, U("Hi")]},
    "stop_tokens_as_text": {"messages": [U("say <|return|> and <|call|> and <|constrain|>json")]},
    "two_user_messages": {"messages": [U("first"), U("second")]},
    "assistant_final_last": {"messages": [U("Hi"), {"role": "assistant", "content": "Hello"}]},
    "instructions_with_blank_lines": {"messages": [{"role": "system", "content": "\n\nLine1\n\nLine2\n"}, U("x")], "tools": [WEATHER]},
    "tool_call_empty_arguments": {"messages": [U("ping"), {"role": "assistant", "tool_calls": [{"id": "p1", "type": "function", "function": {"name": "ping", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "p1", "content": "pong"}], "tools": [EMPTY_PARAMS]},
}


def parts_of(c):
    """The text parts of a content, each handed to openai-harmony as its own text content, as
    vLLM does for user and assistant messages (each part is tokenized on its own)."""
    if c is None:
        return []
    if isinstance(c, str):
        return [c]
    return [p.get("text", "") for p in c if p.get("type") == "text"]


def text_of(c):
    return "".join(parts_of(c))


def parts_message(role, c):
    return Message.from_role_and_contents(role, [TextContent(text=t) for t in parts_of(c)])


def to_harmony(req):
    tools = [ToolDescription.new(t["function"]["name"], t["function"].get("description") or "",
                                 parameters=t["function"].get("parameters")) for t in req.get("tools") or []]
    sys = SystemContent.new().with_conversation_start_date(DATE)
    if req.get("reasoning_effort"):
        sys = sys.with_reasoning_effort({"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}[req["reasoning_effort"]])
    if not tools:
        from openai_harmony import ChannelConfig
        sys = sys.with_channel_config(ChannelConfig.require_channels(["analysis", "final"]))
    msgs = [Message.from_role_and_content(Role.SYSTEM, sys)]
    rest = req["messages"]
    instructions = None
    if rest and rest[0]["role"] in ("system", "developer"):
        instructions = text_of(rest[0].get("content"))
        rest = rest[1:]
    if instructions is not None or tools:
        dev = DeveloperContent.new()
        if instructions is not None:
            dev = dev.with_instructions(instructions)
        if tools:
            dev = dev.with_function_tools(tools)
        msgs.append(Message.from_role_and_content(Role.DEVELOPER, dev))
    names = {c["id"]: c["function"]["name"] for m in rest for c in (m.get("tool_calls") or [])}
    for m in rest:
        role, text = m["role"], text_of(m.get("content"))
        reasoning = m.get("reasoning") or m.get("reasoning_content")
        if role == "assistant":
            calls = m.get("tool_calls") or []
            if calls:
                if text:
                    msgs.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary"))
                if reasoning:
                    msgs.append(Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis"))
                for c in calls:
                    msgs.append(Message.from_role_and_content(Role.ASSISTANT, c["function"]["arguments"]).with_channel("commentary")
                                .with_recipient("functions." + c["function"]["name"]).with_content_type("json"))
            else:
                if reasoning:
                    msgs.append(Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis"))
                if text:
                    msgs.append(parts_message(Role.ASSISTANT, m.get("content")).with_channel("final"))
        elif role == "tool":
            name = names.get(m.get("tool_call_id")) or m.get("name")
            msgs.append(Message.from_author_and_content(Author.new(Role.TOOL, "functions." + name), text)
                        .with_channel("commentary").with_recipient("assistant"))
        else:
            msgs.append(parts_message(Role(role), m.get("content")))
    last_final = max((i for i, x in enumerate(msgs) if x.author.role == Role.ASSISTANT and x.channel == "final"), default=-1)
    msgs = [x for i, x in enumerate(msgs) if not (i < last_final and x.channel == "analysis")]
    return msgs


def completion(*msgs, end="return"):
    """Tokens an assistant would sample after `<|start|>assistant`."""
    toks = enc.render_conversation(Conversation.from_messages(list(msgs)))[2:]
    if end == "return":
        toks[-1] = 200002
    return toks


def A(text, channel, **kw):
    m = Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)
    if "to" in kw:
        m = m.with_recipient(kw["to"])
    if "ctype" in kw:
        m = m.with_content_type(kw["ctype"])
    return m


def parsed(tokens):
    msgs = enc.parse_messages_from_completion_tokens(tokens, Role.ASSISTANT)
    out = []
    for m in msgs:
        out.append({"role": m.author.role.value, "name": m.author.name, "recipient": m.recipient, "channel": m.channel,
                    "content_type": m.content_type, "content": "".join(c.text for c in m.content)})
    p = StreamableParser(enc, role=Role.ASSISTANT)
    deltas = []
    for t in tokens:
        p.process(t)
        deltas.append(p.last_content_delta or "")
    return out, deltas


PARSE = {
    "analysis_then_final": completion(A("The user greets. Reply politely.", "analysis"), A("Hello! How can I help you today?", "final")),
    "final_only": completion(A("Just the answer: 42.", "final")),
    "tool_call_constrained": completion(A("Need weather.", "analysis"), A("{\"location\": \"Paris\"}", "commentary", to="functions.get_weather", ctype="<|constrain|>json"), end="call"),
    "tool_call_json": completion(A("{\"query\":\"gpu\",\"limit\":3}", "commentary", to="functions.search_docs", ctype="json"), end="call"),
    "preamble_then_call": completion(A("Let me look that up.", "commentary"), A("{}", "commentary", to="functions.get_time", ctype="<|constrain|>json"), end="call"),
    "unicode_deltas": completion(A("考えています… 🙂", "analysis"), A("東京は晴れです。🙂👍", "final")),
    "special_text_in_content": completion(A("The token <|end|> is text here.", "final")),
    "multiline_code": completion(A("```python\ndef f():\n    return 1\n```\n", "final")),
}
# Truncated: cut inside the final message's content, and inside the analysis.
full = PARSE["analysis_then_final"]
PARSE["truncated_in_final"] = full[:-4]
PARSE["truncated_in_analysis"] = full[:6]
PARSE["truncated_unicode"] = PARSE["unicode_deltas"][:-3]
PARSE["truncated_in_tool_args"] = PARSE["tool_call_constrained"][:-4]
PARSE["analysis_preamble_final"] = completion(A("Think first.", "analysis"), A("One moment.", "commentary"), A("Done: 7.", "final"))
PARSE["empty_final"] = completion(A("", "final"))


# Seeded random cases beside the written ones: tool schemas mixing what JSON Schema allows (nested
# objects and arrays, enums, unions, nullable, defaults, descriptions with odd text), chats with
# calls and results, and completions of analysis, preambles, calls and answers, some cut short.
rng = random.Random(ARGS.seed)
ODD = ["alpha", "the city", "Paris, France", "a\nb", "", "  padded  ", "quote \" inside", "tab\there",
       "ünïcödé", "emoji 🙂", "line1\n\nline3", "// comment", "*/ end", "Number of items"]
TEXTS = ["Hello!", "What's 2+2?", "", " ", "multi\nline\n", "🙂 ünï", "<|end|> literal", "a" * 50,
         "code:\n    x = 1\n", "東京の天気は？", "say <|call|> now"]


# Defaults and keywords that openai-harmony renders in more than one way: defaults of every JSON
# type (strings with quotes, escapes and newlines), `oneOf` that is not a list, keywords it ignores.
ODD_DEFAULTS = ["dflt", "q\"uote", "new\nline", "back\\slash", "tab\t", "ünï", "", "a/b",
                0, -1.25, [1, "x"], {"k": "v"}, None, False]
ODD_KEYWORDS = [{"const": "c"}, {"format": "date-time"}, {"$ref": "#/defs/x"}, {"items": [{"type": "string"}]},
                {"additionalProperties": False}, {"properties": {"z": {"type": "string"}}}, {"minimum": 1, "maximum": 5},
                {"type": "integer", "enum": [1, 2], "default": 1}, {"type": "string", "enum": [], "default": "e"},
                {"enum": ["a\"b", "c"], "default": "a\"b", "type": "string"}, {"type": ["string"]}, {"type": []}, {"type": 5}]


def random_schema(depth=0):
    s = random_plain_schema(depth)
    r = rng.random()
    if r < 0.08:
        s["default"] = rng.choice(ODD_DEFAULTS)
    elif r < 0.12:
        s["oneOf"] = rng.choice([{}, "x", [], [{"type": "string", "enum": ["p", "q\"r"], "default": rng.choice(ODD_DEFAULTS[:8])}]])
    elif r < 0.15:
        s.update(rng.choice(ODD_KEYWORDS))
    return s


def random_plain_schema(depth=0):
    r = rng.random()
    if depth > 2 or r < 0.5:
        t = rng.choice(["string", "number", "integer", "boolean", "null"])
        s = {"type": t}
        if t == "string" and rng.random() < 0.3:
            s["enum"] = rng.sample(["a", "b", "c d", "e\"f", "1"], rng.randint(1, 3))
        if t == "integer" and rng.random() < 0.2:
            s["enum"] = rng.sample([1, 2, 3, -4, 0], rng.randint(1, 3))
        for key, chance, value in [("description", 0.4, None), ("nullable", 0.1, True),
                                   ("title", 0.1, "Title"), ("examples", 0.1, ["ex"])]:
            if rng.random() < chance:
                s[key] = rng.choice(ODD) if value is None else value
        if rng.random() < 0.2:
            s["default"] = {"string": "dflt", "number": 1.5, "integer": 3, "boolean": True, "null": None}[t]
        return s
    if r < 0.65:
        s = {"type": "array"}
        if rng.random() < 0.8:
            s["items"] = random_schema(depth + 1)
        return s
    if r < 0.8:
        return random_object(depth + 1)
    if r < 0.9:
        s = {rng.choice(["oneOf", "anyOf"]): [random_schema(depth + 1) for _ in range(rng.randint(1, 3))]}
        if rng.random() < 0.4:
            s["description"] = rng.choice(ODD)
        return s
    if r < 0.95:
        return {"type": rng.sample(["string", "integer", "null", "number", "boolean"], 2)}
    return {"enum": rng.sample(["a", "b", 1, None, True], rng.randint(1, 3))}


def random_object(depth):
    s = {"type": "object"}
    if rng.random() < 0.85:
        props = {}
        for i in range(rng.randint(0, 4)):
            name = rng.choice(["location", "unit", "q", "n", "meta", "when", "x_y", "camelCase"])
            props[name + (str(i) if rng.random() < 0.3 else "")] = random_schema(depth)
        s["properties"] = props
        if props and rng.random() < 0.6:
            s["required"] = rng.sample(list(props), rng.randint(1, len(props)))
    if rng.random() < 0.2:
        s["description"] = rng.choice(ODD)
    return s


def random_request():
    tools = []
    for i in range(rng.randint(0, 3) if rng.random() < 0.7 else 0):
        f = {"name": rng.choice(["get_weather", "search", "do_thing"]) + str(i), "description": rng.choice(ODD)}
        if rng.random() < 0.8:
            f["parameters"] = random_object(0)
        tools.append({"type": "function", "function": f})
    msgs = []
    if rng.random() < 0.4:
        msgs.append({"role": rng.choice(["system", "developer"]), "content": rng.choice(TEXTS)})
    for turn in range(rng.randint(1, 4)):
        msgs.append(U(rng.choice(TEXTS)))
        r = rng.random()
        if tools and r < 0.3:
            calls = [call(f"c{turn}{j}", rng.choice(tools)["function"]["name"], {"a": j}) for j in range(rng.randint(1, 2))]
            m = {"role": "assistant", "tool_calls": calls}
            if rng.random() < 0.4:
                m["content"] = rng.choice(["Checking.", ""])
            if rng.random() < 0.4:
                m["reasoning_content"] = "think"
            msgs.append(m)
            msgs += [{"role": "tool", "tool_call_id": c["id"], "content": rng.choice(["ok", "{\"t\": 1}", ""])} for c in calls]
            if rng.random() < 0.5:
                msgs.append({"role": "assistant", "content": "Done."})
        elif r < 0.7:
            m = {"role": "assistant", "content": rng.choice(TEXTS[:6])}
            if rng.random() < 0.3:
                m["reasoning_content"] = "hmm"
            msgs.append(m)
    req = {"messages": msgs}
    if tools:
        req["tools"] = tools
    if rng.random() < 0.5:
        req["reasoning_effort"] = rng.choice(["low", "medium", "high"])
    return req


def random_completion():
    msgs = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["analysis", "preamble", "call", "final"])
        text = rng.choice(TEXTS + ["{\"location\": \"Oslo\"}", "考えています… 🙂👍"])
        if kind == "call":
            ctype = rng.choice([None, "json", "<|constrain|>json"])
            kw = {"to": "functions." + rng.choice(["get_weather", "search_docs", "f"])}
            if ctype:
                kw["ctype"] = ctype
            msgs.append(A(text, rng.choice(["commentary", "commentary", "analysis"]), **kw))
        else:
            msgs.append(A(text, {"preamble": "commentary"}.get(kind, kind)))
    end = "call" if msgs[-1].recipient else "return"
    toks = completion(*msgs, end=end)
    if rng.random() < 0.3:
        cut = toks[:rng.randint(1, len(toks) - 1)]
        # openai-harmony rejects a cut inside a message's header; those keep the whole completion.
        try:
            enc.parse_messages_from_completion_tokens(cut, Role.ASSISTANT)
            toks = cut
        except Exception:
            pass
    return toks


for i in range(ARGS.random):
    CASES[f"random_{i}"] = random_request()
    PARSE[f"random_{i}"] = random_completion()


def main():
    render = []
    for name, req in CASES.items():
        ids = enc.render_conversation_for_completion(Conversation.from_messages(to_harmony(req)), Role.ASSISTANT)
        render.append({"name": name, "date": DATE, "request": req, "token_ids": ids, "text": enc.decode_utf8(ids)})
    parse = []
    for name, toks in PARSE.items():
        msgs, deltas = parsed(toks)
        parse.append({"name": name, "token_ids": toks, "messages": msgs, "deltas": deltas})
    os.makedirs(ARGS.out, exist_ok=True)
    with open(os.path.join(ARGS.out, "harmony_render.json"), "w") as f:
        json.dump(render, f, indent=1, ensure_ascii=False)
    with open(os.path.join(ARGS.out, "harmony_parse.json"), "w") as f:
        json.dump(parse, f, indent=1, ensure_ascii=False)
    print(f"wrote {len(render)} render and {len(parse)} parse fixtures")


if __name__ == "__main__":
    main()
