// The demo page: load a checkpoint (URL or local folder), then chat with it. Page state is kept
// in <body data-state> (idle, loading, ready, generating, error) so tests and styles can follow.
import { loadModel } from './gpt-oss.js';
import { renderMarkdown } from './markdown.js';

const $ = id => document.getElementById(id);
let model = null;
let current = null; // the answer being generated: its stream
const history = [];

function setState(state) {
  document.body.dataset.state = state;
  const ready = state === 'ready';
  $('prompt').disabled = !ready && state !== 'generating';
  $('send').disabled = !ready;
  $('stop').disabled = state !== 'generating';
  $('load-button').disabled = state === 'loading' || state === 'generating';
}

function mb(bytes) {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

async function load(source) {
  $('load-error').hidden = true;
  $('progress').hidden = false;
  setState('loading');
  model?.dispose();
  model = null;
  try {
    model = await loadModel(source, {
      onProgress: ({ loaded, total, mbPerSecond }) => {
        $('progress-bar').value = total ? loaded / total : 0;
        $('progress-text').textContent =
          `${mb(loaded)} of ${mb(total)} · ${mbPerSecond.toFixed(1)} MB/s`;
      },
    });
    const i = model.info();
    const features = [i.shaderF16 && 'shader-f16', i.subgroups && 'subgroups'].filter(Boolean);
    $('adapter').textContent = `${i.adapter || 'WebGPU adapter'} (${i.backend}) · ` +
      `${features.length ? features.join(', ') : 'portable f32 kernels'} · ` +
      `${mb(i.weightBytes)} of weights, ${i.layers} layers, ${i.experts} experts`;
    setState('ready');
  } catch (e) {
    $('load-error').textContent = `Could not load the model: ${e.message}`;
    $('load-error').hidden = false;
    setState('error');
  }
}

function bubble(role) {
  const div = document.createElement('div');
  div.className = `message ${role}`;
  $('messages').append(div);
  return div;
}

async function send(text) {
  bubble('user').textContent = text;
  history.push({ role: 'user', content: text });
  const out = bubble('assistant');
  const details = document.createElement('details');
  details.innerHTML = '<summary>Reasoning</summary><div class="reasoning"></div>';
  details.hidden = true;
  const answer = document.createElement('div');
  answer.className = 'content';
  out.append(details, answer);
  let reasoning = '';
  let content = '';
  const messages = [];
  const system = $('system-prompt').value.trim();
  if (system) messages.push({ role: 'system', content: system });
  messages.push(...history);
  setState('generating');
  const t0 = performance.now();
  current = model.chat(messages, {
    reasoningEffort: $('effort').value,
    maxTokens: Number($('max-tokens').value) || 2048,
    temperature: Math.max(0, Number($('temperature').value) || 0),
  });
  try {
    for await (const ev of current) {
      if (ev.type === 'reasoning') {
        reasoning += ev.text;
        details.hidden = false;
        details.querySelector('.reasoning').textContent = reasoning;
      } else if (ev.type === 'content') {
        content += ev.text;
        answer.innerHTML = renderMarkdown(content);
      } else if (ev.type === 'tool_call') {
        const call = document.createElement('div');
        call.className = 'tool-call';
        call.textContent = `→ ${ev.name}(${ev.arguments})`;
        out.append(call);
      }
      $('stats').textContent = `${current.stepMs.length} tokens · ` +
        `${current.tokensPerSecond.toFixed(1)} tokens/s`;
    }
    const reason = current.finishReason === 'cancelled' ? 'stopped' : current.finishReason;
    $('stats').textContent = `${current.generated ?? 0} tokens in ` +
      `${((performance.now() - t0) / 1e3).toFixed(1)} s · ` +
      `${current.tokensPerSecond.toFixed(1)} tokens/s · ${reason}`;
    out.dataset.finish = reason;
  } catch (e) {
    answer.append(Object.assign(document.createElement('p'), {
      className: 'error', textContent: `Generation failed: ${e.message}`,
    }));
    out.dataset.finish = 'error';
  }
  history.push({ role: 'assistant', content });
  current = null;
  setState('ready');
}

if (!navigator.gpu) {
  $('no-webgpu').hidden = false;
  $('load-button').disabled = true;
  document.body.dataset.state = 'no-webgpu';
} else {
  const fromQuery = new URLSearchParams(location.search).get('model');
  if (fromQuery) $('model-url').value = new URL(fromQuery, location.href).href;
  setState('idle');
}

$('load-form').addEventListener('submit', e => {
  e.preventDefault();
  load($('model-url').value);
});
$('model-folder').addEventListener('change', e => {
  if (e.target.files.length) load([...e.target.files]);
});
$('chat-form').addEventListener('submit', e => {
  e.preventDefault();
  const text = $('prompt').value.trim();
  if (!text || !model || current) return;
  $('prompt').value = '';
  send(text);
});
$('prompt').addEventListener('keydown', e => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    $('chat-form').requestSubmit();
  }
});
$('stop').addEventListener('click', () => current?.return());
