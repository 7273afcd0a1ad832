#!/usr/bin/env python3
"""Reference logits for the parity tests (tests/parity.rs, tests/cli.rs), from transformers.

Writes a synthetic checkpoint with this crate's `synth` command (deterministic for a seed), runs the
reference (tools/reference.py) on it and saves tests/data/parity_tiny.safetensors:
  token_ids [n], logits [n, V], router_margin [n]        every position of a random prompt
  greedy_prompt [m], greedy_ids [g], greedy_margin [g]  a greedy continuation
and, for a second checkpoint with gpt-oss's head size, tests/data/parity_long.safetensors:
  token_ids [n], logits [t, V], router_margin [t]        a long prompt, its last t positions

Usage: python3 tools/make_parity_fixtures.py [--bin target/release/gpt-oss-wgpu] [--out tests/data]
           [--which tiny|long|all]
"""
import argparse, os, subprocess, tempfile

import torch
from safetensors.torch import save_file

import reference

# Must match checkpoint() in tests/parity.rs and synth() in tests/cli.rs.
SYNTH_ARGS = ["--preset", "tiny", "--vocab", "1024", "--seed", "7", "--shard-mib", "1"]
N_TOKENS, GREEDY_PROMPT, GREEDY_NEW, SEED = 200, 24, 32, 11
# Must match long_checkpoint() in tests/parity.rs: 8 query heads on one KV head of 64 dims, so that
# decode steps past 512 keys take the staged attention tier (attention_split.wgsl).
LONG_SYNTH_ARGS = ["--layers", "2", "--hidden", "64", "--intermediate", "32", "--heads", "8",
                   "--kv-heads", "1", "--head-dim", "64", "--experts", "4", "--top-k", "2",
                   "--vocab", "1024", "--seed", "9", "--shard-mib", "1"]
LONG_TOKENS, LONG_TAIL, LONG_SEED = 704, 32, 12


def synth(binary, synth_args):
    model_dir = os.path.join(tempfile.mkdtemp(), "model")
    subprocess.run([binary, "synth", *synth_args, "--out", model_dir], check=True)
    return reference.load(model_dir)


def write_long(binary, out):
    model = synth(binary, LONG_SYNTH_ARGS)
    g = torch.Generator().manual_seed(LONG_SEED)
    ids = torch.randint(0, model.config.vocab_size, (LONG_TOKENS,), generator=g)
    logits, margin = reference.logits_and_router_margin(model, ids)
    path = os.path.join(out, "parity_long.safetensors")
    save_file({
        "token_ids": ids.to(torch.int32).contiguous(),
        "logits": logits[-LONG_TAIL:].contiguous(),
        "router_margin": margin[-LONG_TAIL:].contiguous(),
    }, path)
    print(f"wrote {path}: logits of the last {LONG_TAIL} of {LONG_TOKENS} positions, "
          f"min router margin {margin[-LONG_TAIL:].min():.2e}")


def write_tiny(binary, out):
    model = synth(binary, SYNTH_ARGS)
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, model.config.vocab_size, (N_TOKENS,), generator=g)
    logits, margin = reference.logits_and_router_margin(model, ids)
    prompt = ids[:GREEDY_PROMPT]
    greedy, greedy_margin = reference.greedy(model, prompt, GREEDY_NEW)
    path = os.path.join(out, "parity_tiny.safetensors")
    save_file({
        "token_ids": ids.to(torch.int32).contiguous(),
        "logits": logits.contiguous(),
        "router_margin": margin.contiguous(),
        "greedy_prompt": prompt.to(torch.int32).contiguous(),
        "greedy_ids": greedy.to(torch.int32).contiguous(),
        "greedy_margin": greedy_margin.contiguous(),
    }, path)
    print(f"wrote {path}: logits {tuple(logits.shape)}, min router margin {margin.min():.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/gpt-oss-wgpu")
    ap.add_argument("--out", default="tests/data")
    ap.add_argument("--which", choices=["tiny", "long", "all"], default="all")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.which in ("long", "all"):
        write_long(args.bin, args.out)
    if args.which in ("tiny", "all"):
        write_tiny(args.bin, args.out)


if __name__ == "__main__":
    main()
