// gpt-oss in the browser: the JavaScript API around the wasm build of gpt-oss-wgpu.
//
//   import { loadModel } from './gpt-oss.js';
//   const model = await loadModel('https://huggingface.co/openai/gpt-oss-20b/resolve/main/',
//                                 { onProgress: p => console.log(p.loaded, p.total, p.mbPerSecond) });
//   for await (const ev of model.chat([{ role: 'user', content: 'Hi!' }])) console.log(ev);
//
// Weights stream from HTTP range requests (or local files) straight into GPU buffers, a few MiB
// at a time, and are kept in the origin-private file system so a reload reads them from disk.
// Everything the native build also does (header checks, weight layout, the forward pass, the
// Harmony format) happens in Rust; this file moves bytes and turns steps into async iterators.

import init, { Loader } from './gpt_oss_wgpu.js';

/// Bytes handed to the GPU at a time (a multiple of 4, as buffer writes need).
const PIECE = 8 << 20;
/// Network failures tolerated per file before loading gives up (each retry resumes).
const RETRIES = 3;

/// Errors with a `code` a page can branch on: no-webgpu, no-range, missing-file, truncated, http,
/// limits (the adapter cannot hold the model), invalid (the files are not a usable checkpoint).
export class GptOssError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'GptOssError';
    this.code = code;
  }
}

let wasmReady = null;
function loadWasm() {
  wasmReady ??= init();
  return wasmReady;
}

/// Errors from Rust arrive as plain Errors; their message says what was wrong.
function fromRust(e) {
  if (e instanceof GptOssError) return e;
  const msg = e?.message ?? String(e);
  const code = /truncated/.test(msg) ? 'truncated'
    : /the adapter allows at most/.test(msg) ? 'limits' : 'invalid';
  return new GptOssError(code, msg);
}

// ---- sources of checkpoint files -------------------------------------------------------------

/// Files under a URL, read with range requests; shards are copied into the origin-private file
/// system (OPFS) as they stream, and read from there once complete.
class HttpFiles {
  constructor(baseUrl, { cache = true, signal } = {}) {
    this.base = new URL(baseUrl.endsWith('/') ? baseUrl : baseUrl + '/', location.href).href;
    this.signal = signal;
    this.cache = cache ? new OpfsCache(this.base) : null;
    this.sizes = new Map();
  }

  url(name) {
    return this.base + name;
  }

  async fetch(name, init = {}) {
    let r;
    try {
      r = await fetch(this.url(name), { ...init, signal: this.signal });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new GptOssError('http', `${this.url(name)}: ${e.message}`);
    }
    if (r.status === 404) throw new GptOssError('missing-file', `${this.url(name)}: not found (HTTP 404)`);
    if (!r.ok) throw new GptOssError('http', `${this.url(name)}: HTTP ${r.status} ${r.statusText}`);
    return r;
  }

  /// A small file's text, or null when it does not exist and `optional` is set.
  async text(name, optional = false) {
    const cached = await this.cache?.complete(name);
    if (cached) return cached.text();
    let r;
    try {
      r = await this.fetch(name);
    } catch (e) {
      if (optional && e.code === 'missing-file') return null;
      throw e;
    }
    const bytes = new Uint8Array(await r.arrayBuffer());
    await this.cache?.putWhole(name, bytes);
    return new TextDecoder().decode(bytes);
  }

  /// bytes [start, end) of a file with one range request; also learns the file's size.
  async range(name, start, end) {
    const r = await this.fetch(name, { headers: { Range: `bytes=${start}-${end - 1}` } });
    if (r.status !== 206) {
      r.body?.cancel();
      throw new GptOssError('no-range',
        `${this.url(name)}: the server ignored the range request (HTTP ${r.status}); ` +
        'it must support HTTP range requests to stream weights');
    }
    const total = Number((r.headers.get('Content-Range') ?? '').split('/')[1]);
    if (Number.isFinite(total)) this.sizes.set(name, total);
    return r;
  }

  async size(name) {
    const c = await this.cache?.complete(name);
    if (c) return c.size;
    if (!this.sizes.has(name)) await (await this.range(name, 0, 8)).arrayBuffer();
    const size = this.sizes.get(name);
    if (!Number.isFinite(size)) {
      throw new GptOssError('http', `${this.url(name)}: no Content-Range total in the reply`);
    }
    return size;
  }

  async bytes(name, start, end) {
    const c = await this.cache?.complete(name);
    if (c) return new Uint8Array(await c.slice(start, end).arrayBuffer());
    const bytes = new Uint8Array(await (await this.range(name, start, end)).arrayBuffer());
    if (bytes.length !== end - start) {
      throw new GptOssError('truncated', `${this.url(name)}: asked for ${end - start} bytes, got ${bytes.length}`);
    }
    return bytes;
  }

  /// Chunks of bytes [start, end), resuming after dropped connections.
  async *stream(name, start, end) {
    const c = await this.cache?.complete(name);
    if (c) {
      yield* readFile(c, start, end);
      return;
    }
    const size = await this.size(name);
    const writer = await this.cache?.writer(name, size);
    // The header is not part of the streamed range; the cache needs it too.
    if (writer) await writer.write(0, await this.bytes(name, 0, start));
    let pos = start;
    let failures = 0;
    while (pos < end) {
      try {
        const reader = (await this.range(name, pos, end)).body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          if (writer) await writer.write(pos, value);
          pos += value.length;
          yield value;
        }
        if (pos < end) throw new GptOssError('truncated', `${this.url(name)}: the reply ended at byte ${pos} of ${end}`);
      } catch (e) {
        if (e.name === 'AbortError' || e.code === 'no-range' || e.code === 'missing-file' || ++failures > RETRIES) {
          await writer?.abort();
          throw e.code ? e : new GptOssError('http', `${this.url(name)}: ${e.message}`);
        }
      }
    }
    await writer?.close(end === size);
  }
}

/// Files the visitor picked (`<input type=file webkitdirectory>`), by name.
class LocalFiles {
  constructor(files) {
    this.files = new Map();
    for (const f of files) this.files.set(f.name, f);
  }

  file(name) {
    const f = this.files.get(name);
    if (!f) throw new GptOssError('missing-file', `${name} is not in the chosen folder`);
    return f;
  }

  async text(name, optional = false) {
    if (optional && !this.files.has(name)) return null;
    return this.file(name).text();
  }

  async size(name) {
    return this.file(name).size;
  }

  async bytes(name, start, end) {
    return new Uint8Array(await this.file(name).slice(start, end).arrayBuffer());
  }

  stream(name, start, end) {
    return readFile(this.file(name), start, end);
  }
}

async function* readFile(file, start, end) {
  const reader = file.slice(start, end).stream().getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    yield value;
  }
}

/// Downloaded files in the origin-private file system, one folder per base URL. A shard counts
/// as cached once a `.complete` marker records its full size. Caching is best effort: when the
/// storage refuses (quota, private mode), loading goes on from the network.
class OpfsCache {
  constructor(base) {
    this.key = 'gpt-oss-' + hash(base);
  }

  async dir() {
    try {
      this.folder ??= await (await navigator.storage.getDirectory())
        .getDirectoryHandle(this.key, { create: true });
      return this.folder;
    } catch {
      return null;
    }
  }

  async file(name) {
    try {
      return await (await (await this.dir())?.getFileHandle(name))?.getFile();
    } catch {
      return null;
    }
  }

  /// The cached file if it is complete.
  async complete(name) {
    const marker = await this.file(name + '.complete');
    const f = marker && await this.file(name);
    return f && f.size === Number(await marker.text()) ? f : null;
  }

  async putWhole(name, bytes) {
    const w = await this.writer(name, bytes.length);
    if (!w) return;
    await w.write(0, bytes);
    await w.close(true);
  }

  /// A writer that fills `name` and marks it complete on `close(true)`.
  async writer(name, size) {
    const dir = await this.dir();
    if (!dir) return null;
    try {
      await dir.removeEntry(name + '.complete').catch(() => {});
      const stream = await (await dir.getFileHandle(name, { create: true })).createWritable();
      let ok = true;
      return {
        write: async (position, data) => {
          if (!ok || data.length === 0) return;
          try {
            await stream.write({ type: 'write', position, data });
          } catch {
            ok = false; // storage full: go on without the cache
          }
        },
        abort: () => stream.abort().catch(() => {}),
        close: async complete => {
          await stream.close().catch(() => { ok = false; });
          if (!(ok && complete)) return;
          const m = await (await dir.getFileHandle(name + '.complete', { create: true })).createWritable();
          await m.write(String(size));
          await m.close();
        },
      };
    } catch {
      return null;
    }
  }
}

function hash(s) {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619) >>> 0;
  return h.toString(16);
}

/// Removes every cached checkpoint of this origin.
export async function clearCache() {
  const root = await navigator.storage.getDirectory();
  for await (const [name] of root.entries()) {
    if (name.startsWith('gpt-oss-')) await root.removeEntry(name, { recursive: true });
  }
}

// ---- loading ---------------------------------------------------------------------------------

/// Loads a checkpoint in the released Hugging Face layout from a folder URL (or the visitor's
/// files) onto the GPU. Options: onProgress({loaded, total, mbPerSecond, file}), signal
/// (AbortSignal), cache (default true), maxContext (default 4096), maxTokens (tokens per forward
/// pass, default 256), portable (the f32 kernels only).
export async function loadModel(source, options = {}) {
  const { onProgress, signal, cache = true, maxContext, maxTokens, portable } = options;
  if (!globalThis.navigator?.gpu) {
    throw new GptOssError('no-webgpu',
      'This browser has no WebGPU (navigator.gpu is missing): use a recent Chrome, Edge or Safari, ' +
      'or enable WebGPU in its settings');
  }
  if (!await navigator.gpu.requestAdapter()) {
    throw new GptOssError('no-webgpu', 'WebGPU is present but no GPU adapter is available');
  }
  await loadWasm();
  const files = typeof source === 'string'
    ? new HttpFiles(source, { cache, signal })
    : new LocalFiles(source);
  const config = await files.text('config.json');
  const generation = await files.text('generation_config.json', true);
  let loader;
  try {
    loader = await Loader.open(config, generation ?? '',
      JSON.stringify({ maxContext, maxTokens, portable }));
  } catch (e) {
    throw fromRust(e);
  }
  try {
    const index = await files.text('model.safetensors.index.json', true);
    const shards = index
      ? [...new Set(Object.values(JSON.parse(index).weight_map ?? {}))].sort()
      : ['model.safetensors'];
    for (const name of shards) {
      const size = await files.size(name);
      const first = await files.bytes(name, 0, Math.min(8, size));
      const head = await files.bytes(name, 0, Math.min(size, 8 + Loader.header_len(name, first)));
      loader.add_shard(name, head, size);
    }
    const tokenizer = await files.text('tokenizer.json', true);
    if (tokenizer !== null) loader.set_tokenizer(new TextEncoder().encode(tokenizer));
    const plan = JSON.parse(loader.plan());
    const t0 = performance.now();
    let loaded = 0;
    const report = file => onProgress?.({
      loaded, total: plan.total, file,
      mbPerSecond: loaded / 1e6 / Math.max(1e-3, (performance.now() - t0) / 1e3),
    });
    report(null);
    for (const { file, tensors } of plan.files) {
      if (tensors.length === 0) continue;
      const chunks = files.stream(file, tensors[0].start, tensors.at(-1).end);
      await feed(chunks, tensors, tensors[0].start, (name, offset, bytes) => {
        loader.write(name, offset, bytes);
        loaded += bytes.length;
        report(file);
      }, file);
      signal?.throwIfAborted();
    }
    // finish() takes the loader over, whatever its outcome.
    const planned = loader;
    loader = null;
    return new Model(await Loader.finish(planned));
  } catch (e) {
    loader?.free();
    throw fromRust(e);
  }
}

/// Cuts a file's byte stream into pieces of each tensor (tensors sorted by start, gaps skipped),
/// each piece starting at a multiple of 4 within its tensor.
async function feed(chunks, tensors, start, write, file) {
  const buf = new Uint8Array(PIECE);
  let fill = 0;
  let bufOffset = 0;
  let ti = 0;
  let pos = start;
  for await (const chunk of chunks) {
    let c = 0;
    while (c < chunk.length && ti < tensors.length) {
      const t = tensors[ti];
      if (pos < t.start) {
        const skip = Math.min(t.start - pos, chunk.length - c);
        c += skip;
        pos += skip;
        continue;
      }
      const take = Math.min(t.end - pos, chunk.length - c, PIECE - fill);
      if (fill === 0) bufOffset = pos - t.start;
      buf.set(chunk.subarray(c, c + take), fill);
      fill += take;
      c += take;
      pos += take;
      if (fill === PIECE || pos === t.end) {
        write(t.name, bufOffset, buf.subarray(0, fill));
        fill = 0;
        if (pos === t.end) ti++;
      }
    }
  }
  if (ti < tensors.length) {
    throw new GptOssError('truncated', `${file}: the data ended at byte ${pos}, before tensor \`${tensors[ti].name}\``);
  }
}

// ---- running ---------------------------------------------------------------------------------

/// A loaded model. Requests run one forward pass at a time on the page's event loop, so the page
/// stays responsive; several requests may run at once (they share each step).
export class Model {
  constructor(inner) {
    this.inner = inner;
    this.streams = new Map();
    this.pumping = false;
  }

  /// Adapter, features used and sizes.
  info() {
    return JSON.parse(this.inner.info());
  }

  /// Tokens as they are generated: an async iterator of {tokenId, text}. Options: prompt (a user
  /// message in the Harmony chat format, or with raw: true text to continue) or tokenIds (with
  /// raw: true), maxTokens, temperature, topP, topK, seed, greedy, presencePenalty,
  /// frequencyPenalty, reasoningEffort, signal.
  generate(options = {}) {
    const { signal, ...rest } = options;
    return this.start(() => this.inner.submit_generate(JSON.stringify({ ...rest, date: today() })),
      signal, ev => (ev.type === 'token' ? { tokenId: ev.tokenId, text: ev.text } : null));
  }

  /// A chat turn as parsed events: {type: 'reasoning' | 'content', text} while streaming, then
  /// {type: 'tool_call', name, arguments} for each function call. `messages` are OpenAI chat
  /// messages; options: reasoningEffort, tools (OpenAI function tools), responseFormat (OpenAI's
  /// response_format: asked of the model in the developer message, not enforced), stop,
  /// maxTokens, temperature, topP, topK, seed, greedy, presencePenalty, frequencyPenalty, signal.
  chat(messages, options = {}) {
    const { signal, reasoningEffort, responseFormat, tools, ...rest } = options;
    const body = {
      ...rest, messages, tools, reasoning_effort: reasoningEffort,
      response_format: responseFormat, date: today(),
    };
    return this.start(() => this.inner.submit_chat(JSON.stringify(body)), signal,
      ev => (ev.type === 'token' ? null : ev));
  }

  /// Frees the GPU memory; the model cannot be used afterwards.
  dispose() {
    for (const s of this.streams.values()) s.end(new GptOssError('invalid', 'the model was disposed'));
    this.streams.clear();
    this.inner?.free();
    this.inner = null;
  }

  start(submit, signal, map) {
    if (!this.inner) throw new GptOssError('invalid', 'the model was disposed');
    const stream = new Stream(this, map);
    const begin = async () => {
      await this.idle();
      if (stream.cancelled) {
        stream.end(null);
        return;
      }
      try {
        stream.id = submit();
      } catch (e) {
        stream.end(fromRust(e));
        return;
      }
      this.streams.set(stream.id, stream);
      this.pump();
    };
    stream.started = begin();
    signal?.addEventListener('abort', () => stream.cancel(), { once: true });
    if (signal?.aborted) stream.cancel();
    return stream;
  }

  /// Resolves once no step is running (requests are submitted and cancelled between steps).
  async idle() {
    while (this.stepping) await this.stepping;
  }

  async pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.inner && this.streams.size > 0) {
        for (const s of this.streams.values()) {
          if (!s.cancelled) continue;
          const last = JSON.parse(this.inner.cancel(s.id));
          for (const ev of last) this.deliver(ev, s);
          if (!s.done) this.deliver(null, s);
        }
        if (this.streams.size === 0) break;
        const started = performance.now();
        this.stepping = this.inner.step();
        let events;
        try {
          events = JSON.parse(await this.stepping);
        } finally {
          this.stepping = null;
        }
        const ms = performance.now() - started;
        for (const ev of events) this.deliver(ev, this.streams.get(ev.id), ms);
        // Let the page paint between steps.
        await new Promise(r => setTimeout(r, 0));
      }
    } catch (e) {
      for (const s of this.streams.values()) s.end(fromRust(e));
      this.streams.clear();
    } finally {
      this.pumping = false;
    }
  }

  deliver(ev, stream, ms) {
    if (!ev || !stream) {
      stream?.end(null);
      if (stream) this.streams.delete(stream.id);
      return;
    }
    if (ev.type === 'done') {
      stream.finishReason = ev.reason;
      stream.generated = ev.generated;
      stream.end(null);
      this.streams.delete(stream.id);
      return;
    }
    if (ev.type === 'token' && ms !== undefined) stream.stepMs.push(ms);
    const out = stream.map(ev);
    if (out) stream.push(out);
  }
}

function today() {
  return new Date().toISOString().slice(0, 10);
}

/// One request's events as an async iterator; `return()` (a `break` in `for await`) or the
/// signal stops the request. After the end: finishReason ('stop', 'length', 'cancelled'),
/// generated (tokens), tokensPerSecond.
class Stream {
  constructor(model, map) {
    this.model = model;
    this.map = map;
    this.queue = [];
    // Whoever awaits this stream: next() and return() may both wait at once (a Stop button
    // calls return() while a for-await loop sits in next()).
    this.waiters = [];
    this.done = false;
    this.error = null;
    this.cancelled = false;
    this.stepMs = [];
    this.t0 = performance.now();
  }

  push(ev) {
    this.queue.push(ev);
    this.wake();
  }

  end(error) {
    this.done = true;
    this.error = error;
    this.seconds = (performance.now() - this.t0) / 1e3;
    this.wake();
  }

  wake() {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  wait() {
    return new Promise(r => this.waiters.push(r));
  }

  get tokensPerSecond() {
    const s = this.stepMs.slice(1); // the first step includes the prompt
    return s.length ? (1e3 * s.length) / s.reduce((a, b) => a + b, 0) : 0;
  }

  cancel() {
    if (this.done) return;
    this.cancelled = true;
    if (this.id === undefined) this.end(null);
    this.model.pump();
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  async next() {
    for (;;) {
      if (this.queue.length) return { value: this.queue.shift(), done: false };
      if (this.done) {
        if (this.error) {
          const e = this.error;
          this.error = null;
          throw e;
        }
        return { value: undefined, done: true };
      }
      await this.wait();
    }
  }

  async return() {
    this.cancel();
    await this.started;
    while (!this.done) await this.wait();
    return { value: undefined, done: true };
  }
}
