#!/usr/bin/env python3
"""Reference logits for the parity tests, from Hugging Face transformers.

Writes a synthetic checkpoint with this crate's `synth` command (deterministic for a seed), loads it
with transformers' GptOssForCausalLM in float32 with the MXFP4 experts dequantized, and saves:
  token_ids       [n]        the prompt (random ids)
  logits          [n, V]     logits of every position
  router_margin   [n]        per position, the smallest gap over layers between the k-th and
                             (k+1)-th router logit (a tiny gap means rounding may pick another expert)
  greedy_prompt   [m]        prompt of the greedy continuation
  greedy_ids      [g]        transformers' greedy continuation
  greedy_margin   [g]        gap between the top two logits at each greedy step

Usage: python3 tools/make_parity_fixtures.py [--bin target/release/gpt-oss-wgpu] [--out tests/data]
The Rust test (tests/parity.rs) regenerates the same checkpoint from the same arguments.
"""
import argparse, json, os, subprocess, sys, tempfile

import torch
from safetensors.torch import save_file
from transformers import GptOssForCausalLM, Mxfp4Config

# Must match tests/parity.rs.
SYNTH_ARGS = ["--preset", "tiny", "--vocab", "1024", "--seed", "7", "--shard-mib", "1"]
N_TOKENS, GREEDY_PROMPT, GREEDY_NEW, SEED = 200, 24, 32, 11


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/gpt-oss-wgpu")
    ap.add_argument("--out", default="tests/data")
    ap.add_argument("--model-dir", help="use this synth output instead of writing one")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    model_dir = args.model_dir or os.path.join(tmp, "model")
    if not args.model_dir:
        subprocess.run([args.bin, "synth", *SYNTH_ARGS, "--out", model_dir], check=True)
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    model = GptOssForCausalLM.from_pretrained(
        model_dir, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32
    ).eval()
    # Eager attention is the reference implementation (sinks, sliding window).
    model.config._attn_implementation = "eager"
    k = cfg["num_experts_per_tok"]

    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, cfg["vocab_size"], (1, N_TOKENS), generator=g)
    margins = []
    hooks = []
    def router_hook(mod, inp, out):
        logits = out[0] if isinstance(out, tuple) else out
        top = torch.topk(logits.float(), k + 1, dim=-1).values
        margins.append((top[:, k - 1] - top[:, k]).reshape(-1))
    for layer in model.model.layers:
        hooks.append(layer.mlp.router.register_forward_hook(router_hook))
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    for h in hooks:
        h.remove()
    router_margin = torch.stack(margins).min(dim=0).values

    prompt = ids[:, :GREEDY_PROMPT]
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=GREEDY_NEW, min_new_tokens=GREEDY_NEW, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    greedy = out.sequences[0, GREEDY_PROMPT:]
    top2 = torch.stack([torch.topk(s[0].float(), 2).values for s in out.scores])
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "parity_tiny.safetensors")
    save_file({
        "token_ids": ids[0].to(torch.int32).contiguous(),
        "logits": logits.contiguous(),
        "router_margin": router_margin.contiguous(),
        "greedy_prompt": prompt[0].to(torch.int32).contiguous(),
        "greedy_ids": greedy.to(torch.int32).contiguous(),
        "greedy_margin": (top2[:, 0] - top2[:, 1]).contiguous(),
    }, path)
    print(f"wrote {path}: logits {tuple(logits.shape)}, min router margin {router_margin.min():.2e}")


if __name__ == "__main__":
    sys.exit(main())
