"""A small load generator for `gpt-oss-wgpu serve` (standard library only, so it runs on bare
machines): N concurrent clients stream /v1/completions with a fixed prompt length and output
length, and the script reports aggregate output tok/s, time to first token and inter-token
latency percentiles. Usage: python3 tools/serve_load.py URL --clients 8 --prompt-tokens 128
--output-tokens 128 [--requests-per-client 2]"""
import argparse, http.client, json, random, statistics, threading, time, urllib.parse

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("--clients", type=int, default=8)
ap.add_argument("--prompt-tokens", type=int, default=128)
ap.add_argument("--output-tokens", type=int, default=128)
ap.add_argument("--requests-per-client", type=int, default=2)
a = ap.parse_args()
u = urllib.parse.urlparse(a.url)
RUN = random.randrange(1 << 30)

def one(results, k):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    # Token ids: each request its own prompt (a fresh offset per run too), so that nothing is
    # served from the prefix cache.
    prompt = [1000 + (RUN + k * 7919 + i * 31) % 150000 for i in range(a.prompt_tokens)]
    body = json.dumps({"prompt": prompt, "max_tokens": a.output_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    stamps, generated = [], 0
    for line in r:
        line = line.strip()
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
            elif chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
        elif line == b"data: [DONE]":
            break
    results.append((t0, stamps, generated))

def client(results, k):
    for j in range(a.requests_per_client):
        one(results, k * 1000 + j)

results = []
start = time.perf_counter()
threads = [threading.Thread(target=client, args=(results, k)) for k in range(a.clients)]
for t in threads: t.start()
for t in threads: t.join()
wall = time.perf_counter() - start
ttft = [s[0] - t0 for t0, s, _ in results if s]
itl = [b - a_ for _, s, _ in results for a_, b in zip(s, s[1:])]
q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))] * 1e3
out = sum(n for _, _, n in results)
print(json.dumps({"clients": a.clients, "requests": len(results), "output_tok_s": round(out / wall, 1),
                  "ttft_ms_p50": round(q(ttft, 0.5), 1), "ttft_ms_p99": round(q(ttft, 0.99), 1),
                  "itl_ms_p50": round(q(itl, 0.5), 2), "itl_ms_p99": round(q(itl, 0.99), 2)}))
