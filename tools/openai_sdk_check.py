"""Talks to a running `gpt-oss-wgpu serve` through the official `openai` Python SDK, the way
users' clients do, and checks what comes back. Usage: python3 tools/openai_sdk_check.py BASE_URL MODEL
(tests/serve.rs runs it against a tiny synthetic model)."""
import sys

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key="unused")

assert [m.id for m in client.models.list().data] == [model]

# Chat: the whole answer and the stream agree at temperature 0; usage is counted.
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
whole = client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=0,
                                       reasoning_effort="low")
choice = whole.choices[0]
assert choice.message.role == "assistant"
assert choice.finish_reason in ("stop", "length", "tool_calls"), choice.finish_reason
assert whole.usage.completion_tokens == 10 and whole.usage.prompt_tokens > 0, whole.usage
content, reasoning, finish, usage = "", "", None, None
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=0,
                                            reasoning_effort="low", stream=True,
                                            stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        content += c.delta.content or ""
        reasoning += getattr(c.delta, "reasoning_content", None) or ""
        finish = c.finish_reason or finish
assert content == (choice.message.content or ""), (content, choice.message.content)
assert reasoning == (getattr(choice.message, "reasoning_content", None) or ""), reasoning
assert finish == choice.finish_reason, (finish, choice.finish_reason)
assert usage is not None and usage.completion_tokens == 10, usage

# Completions: the same, on raw text.
full = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
text = full.choices[0].text
streamed = "".join(c.choices[0].text for c in client.completions.create(
    model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True) if c.choices)
assert streamed == text, (streamed, text)
assert full.choices[0].finish_reason == "length"

# Responses, whole and streamed.
r = client.responses.create(model=model, input="Hello", instructions="Be brief.", max_output_tokens=8,
                            temperature=0, reasoning={"effort": "low"})
assert r.status in ("completed", "incomplete") and r.usage.output_tokens == 8, r
events = [e.type for e in client.responses.create(model=model, input="Hello", max_output_tokens=8,
                                                  temperature=0, stream=True)]
assert events[0] == "response.created" and events[-1] in ("response.completed", "response.incomplete"), events

# Errors arrive as the SDK's typed exceptions.
for bad, kind in [({"max_tokens": 0}, openai.BadRequestError),
                  ({"temperature": -1}, openai.BadRequestError),
                  ({"model": "nope"}, openai.NotFoundError)]:
    args = {"model": model, "messages": msgs, **bad}
    try:
        client.chat.completions.create(**args)
    except kind as e:
        assert e.status_code in (400, 404) and e.message, e
    else:
        raise AssertionError(f"{bad} was accepted")
print("openai SDK checks passed")
