// Page tests of the browser build (web/dist, built by web/build.sh) in headless Chromium on its
// software WebGPU (SwiftShader): the JS API against the native CLI, caching, clear errors, and
// the demo page driven like a visitor. Run: `node --test web/test/page.test.mjs` (after `cargo build` and
// web/build.sh). GPT_OSS_BIN names the native binary (default debug/gpt-oss-wgpu in
// CARGO_TARGET_DIR or target/), CHROMIUM the browser (default /usr/lib/chromium/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './server.mjs';

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ROOT = path.resolve(WEB, '..');
const TARGET = path.resolve(ROOT, process.env.CARGO_TARGET_DIR ?? 'target');
const BIN = process.env.GPT_OSS_BIN ?? path.join(TARGET, 'debug/gpt-oss-wgpu');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/lib/chromium/chromium';
const OUTPUT = path.join(WEB, 'test-output');
// SwiftShader runs a full-vocabulary step in seconds: generous limits, but events, not sleeps.
const SLOW = 15 * 60 * 1000;

let tmp, models, server, browser;

function cli(...args) {
  return execFileSync(BIN, args, {
    encoding: 'utf8',
    env: { ...process.env, GPT_OSS_PORTABLE: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `${BIN} is missing: run \`cargo build\` first (or set GPT_OSS_BIN)`);
  assert.ok(fs.existsSync(path.join(WEB, 'dist/gpt_oss_wgpu_bg.wasm')), 'run web/build.sh first');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gpt-oss-web-'));
  models = path.join(tmp, 'models');
  // A small random model in several shards (no tokenizer: its vocabulary is too small).
  cli('synth', '--preset', 'tiny', '--vocab', '4096', '--shard-mib', '1', '--out', path.join(models, 'small'));
  // A model whose greedy chat answer is reasoning, then an answer of many distinct words.
  cli('synth', '--out', path.join(models, 'scripted'), '--marker', 'Need', '--script',
    'assistant<|channel|>analysis<|message|>Need a greeting<|end|><|start|>assistant' +
    '<|channel|>final<|message|>Hello there, this answer has several distinct words before it ends.<|return|>');
  // Broken copies: a shard cut short, a shard missing, a server without range support.
  const small = path.join(models, 'small');
  const shards = fs.readdirSync(small).filter(f => f.endsWith('.safetensors')).sort();
  for (const name of ['truncated', 'missing']) fs.cpSync(small, path.join(models, name), { recursive: true });
  const cut = path.join(models, 'truncated', shards[0]);
  fs.truncateSync(cut, Math.floor(fs.statSync(cut).size / 2));
  fs.rmSync(path.join(models, 'missing', shards.at(-1)));
  fs.symlinkSync(small, path.join(models, 'norange-small'));
  server = await serve({ dist: path.join(WEB, 'dist'), models });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--enable-unsafe-webgpu', '--no-sandbox', '--no-first-run', '--disable-sync',
      '--disable-background-networking', '--disable-component-update', '--disable-quic'],
    ignoreDefaultArgs: ['--disable-gpu'],
  });
});

after(async () => {
  await browser?.close();
  await server?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

async function newPage() {
  const page = await browser.newPage();
  page.setDefaultTimeout(SLOW);
  page.on('pageerror', e => console.error('page error:', e.message));
  await page.goto(server.url + '/');
  return page;
}

test('generate returns the token ids the native CLI returns, and a reload reads the cache', { timeout: SLOW }, async () => {
  const ids = [1, 2, 3, 4, 5, 6];
  const native = JSON.parse(cli('generate', '--model', path.join(models, 'small'), '--raw', '--greedy',
    '--json', '--precision', 'exact', '--max-tokens', '10', '--token-ids', ids.join(',')));
  const page = await newPage();
  const run = () => page.evaluate(async ids => {
    const { loadModel } = await import('/gpt-oss.js');
    let last = null;
    const model = await loadModel('/models/small/', { onProgress: p => { last = p; } });
    const out = [];
    for await (const ev of model.generate({ tokenIds: ids, greedy: true, raw: true, maxTokens: 10 })) {
      out.push(ev.tokenId);
    }
    const info = model.info();
    model.dispose();
    return { out, last, info };
  }, ids);
  const first = await run();
  assert.deepEqual(first.out, native.token_ids);
  assert.equal(first.last.loaded, first.last.total);
  assert.equal(first.info.shaderF16, false, 'SwiftShader runs the portable kernels');
  const shardReads = () => server.log.filter(r => r.path.endsWith('.safetensors')).length;
  assert.ok(shardReads() > 0);
  // A reload loads from the origin-private file system, not the network.
  await page.reload();
  server.log.length = 0;
  const second = await run();
  assert.deepEqual(second.out, native.token_ids);
  assert.equal(shardReads(), 0, JSON.stringify(server.log));
  await page.close();
});

test('broken checkpoints and servers give clear errors', { timeout: SLOW }, async () => {
  const page = await newPage();
  const failure = url => page.evaluate(async url => {
    const { loadModel } = await import('/gpt-oss.js');
    try {
      await loadModel(url, { cache: false });
      return null;
    } catch (e) {
      return { code: e.code, message: e.message };
    }
  }, url);
  const truncated = await failure('/models/truncated/');
  assert.equal(truncated?.code, 'truncated', JSON.stringify(truncated));
  assert.match(truncated.message, /model-00000.*truncated/s);
  const missing = await failure('/models/missing/');
  assert.equal(missing?.code, 'missing-file', JSON.stringify(missing));
  assert.match(missing.message, /not found/);
  const noRange = await failure('/models/norange-small/');
  assert.equal(noRange?.code, 'no-range', JSON.stringify(noRange));
  const absent = await failure('/models/nothing-here/');
  assert.equal(absent?.code, 'missing-file');
  assert.match(absent.message, /config\.json/);
  await page.close();
});

test('the demo page loads a model, streams reasoning and answer apart, and stops', { timeout: SLOW }, async () => {
  const page = await newPage();
  await page.goto(`${server.url}/?model=/models/scripted/`);
  await page.click('#load-button');
  await page.waitForSelector('body[data-state="ready"], body[data-state="error"]');
  assert.equal(await page.getAttribute('body', 'data-state'), 'ready', await page.textContent('#load-error'));
  assert.match(await page.textContent('#adapter'), /portable f32 kernels/);
  // The scripted model follows its script when every token is the likeliest one.
  await page.click('#chat > details > summary');
  await page.fill('#temperature', '0');
  await page.fill('#prompt', 'Say hello');
  await page.click('#send');
  await page.waitForSelector('body[data-state="generating"]');
  // Reasoning arrives in its own collapsible block, then the answer starts.
  await page.waitForFunction(() =>
    document.querySelector('.message.assistant .content')?.textContent.includes('there'));
  const reasoning = await page.textContent('.message.assistant details .reasoning');
  assert.equal(reasoning, 'Need a greeting');
  await page.click('#stop');
  await page.waitForSelector('.message.assistant[data-finish]');
  await page.waitForSelector('body[data-state="ready"]');
  assert.equal(await page.getAttribute('.message.assistant', 'data-finish'), 'stopped');
  const content = await page.textContent('.message.assistant .content');
  assert.ok(content.startsWith('Hello there'), content);
  assert.ok(!content.includes('ends.'), `the answer went on after Stop: ${content}`);
  assert.match(await page.textContent('#stats'), /tokens\/s · stopped/);
  fs.mkdirSync(OUTPUT, { recursive: true });
  await page.screenshot({ path: path.join(OUTPUT, 'demo.png'), fullPage: true });
  // The JS API's chat options reach the Rust side's request checks (camelCase to the API's names).
  const formatError = await page.evaluate(async () => {
    const { loadModel } = await import('/gpt-oss.js');
    const model = await loadModel('/models/scripted/');
    try {
      const options = { responseFormat: { type: 'xml' }, maxTokens: 1 };
      for await (const ev of model.chat([{ role: 'user', content: 'Hi' }], options)) void ev;
      return null;
    } catch (e) {
      return e.message;
    } finally {
      model.dispose();
    }
  });
  assert.match(formatError ?? '', /response_format type `xml`/);
  await page.close();
});

test('the demo page loads a folder picked from disk', { timeout: SLOW }, async () => {
  const page = await newPage();
  await page.setInputFiles('#model-folder', path.join(models, 'small'));
  await page.waitForSelector('body[data-state="ready"], body[data-state="error"]');
  assert.equal(await page.getAttribute('body', 'data-state'), 'ready', await page.textContent('#load-error'));
  assert.match(await page.textContent('#adapter'), /MB of weights, 3 layers/);
  await page.close();
});

test('without WebGPU the page says so and loadModel refuses clearly', { timeout: SLOW }, async () => {
  const page = await browser.newPage();
  await page.addInitScript(() => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }));
  await page.goto(server.url + '/');
  await page.waitForSelector('#no-webgpu', { state: 'visible' });
  assert.equal(await page.getAttribute('body', 'data-state'), 'no-webgpu');
  assert.ok(await page.isDisabled('#load-button'));
  const err = await page.evaluate(async () => {
    const { loadModel } = await import('/gpt-oss.js');
    return loadModel('/models/small/').then(() => null, e => e.code);
  });
  assert.equal(err, 'no-webgpu');
  await page.close();
});

test('model output is rendered as markdown without injecting HTML', async () => {
  const { renderMarkdown } = await import('../src/markdown.js');
  const html = renderMarkdown('**hi** <img src=x onerror=alert(1)>\n[a](javascript:alert(1))\n```\n<script>\n```');
  assert.ok(html.includes('<strong>hi</strong>'));
  assert.ok(!/<img|<script|href="javascript/i.test(html), html);
});
