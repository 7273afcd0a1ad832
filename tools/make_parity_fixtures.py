#!/usr/bin/env python3
"""Reference logits for the parity tests (tests/parity.rs, tests/cli.rs), from transformers.

Writes a synthetic checkpoint with this crate's `synth` command (deterministic for a seed), runs the
reference (tools/reference.py) on it and saves tests/data/parity_tiny.safetensors:
  token_ids [n], logits [n, V], router_margin [n]        every position of a random prompt
  greedy_prompt [m], greedy_ids [g], greedy_margin [g]  a greedy continuation

Usage: python3 tools/make_parity_fixtures.py [--bin target/release/gpt-oss-wgpu] [--out tests/data]
"""
import argparse, os, subprocess, tempfile

import torch
from safetensors.torch import save_file

import reference

# Must match checkpoint() in tests/parity.rs and synth() in tests/cli.rs.
SYNTH_ARGS = ["--preset", "tiny", "--vocab", "1024", "--seed", "7", "--shard-mib", "1"]
N_TOKENS, GREEDY_PROMPT, GREEDY_NEW, SEED = 200, 24, 32, 11


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/gpt-oss-wgpu")
    ap.add_argument("--out", default="tests/data")
    args = ap.parse_args()
    model_dir = os.path.join(tempfile.mkdtemp(), "model")
    subprocess.run([args.bin, "synth", *SYNTH_ARGS, "--out", model_dir], check=True)
    model = reference.load(model_dir)
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, model.config.vocab_size, (N_TOKENS,), generator=g)
    logits, margin = reference.logits_and_router_margin(model, ids)
    prompt = ids[:GREEDY_PROMPT]
    greedy, greedy_margin = reference.greedy(model, prompt, GREEDY_NEW)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "parity_tiny.safetensors")
    save_file({
        "token_ids": ids.to(torch.int32).contiguous(),
        "logits": logits.contiguous(),
        "router_margin": margin.contiguous(),
        "greedy_prompt": prompt.to(torch.int32).contiguous(),
        "greedy_ids": greedy.to(torch.int32).contiguous(),
        "greedy_margin": greedy_margin.contiguous(),
    }, path)
    print(f"wrote {path}: logits {tuple(logits.shape)}, min router margin {margin.min():.2e}")


if __name__ == "__main__":
    main()
