#!/usr/bin/env python3
"""Parity of this crate against transformers on any checkpoint directory (e.g. a synthetic 20b on
the GPU test machine), without fixtures: runs our `logits` and greedy `generate` commands and the
reference (tools/reference.py) on the same random token ids, and prints a JSON summary.

Positions whose reference router has a near-tie (k-th vs (k+1)-th logit gap < --near-tie in some
layer) are reported separately: rounding may legitimately pick another expert there.

Usage: python3 tools/parity_check.py --model DIR [--bin PATH] [--tokens 160] [--greedy 32] [--device cpu]
       [--our-args="--precision fast" --kv-f16]
"""
import argparse, json, os, subprocess, tempfile, time

import torch
from safetensors.torch import load_file

import reference


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default="target/release/gpt-oss-wgpu")
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--greedy", type=int, default=32)
    ap.add_argument("--greedy-prompt", type=int, default=24)
    ap.add_argument("--near-tie", type=float, default=1e-4)
    ap.add_argument("--device", default="cpu", help="where transformers runs")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--our-args", default="--kv-f32",
                    help="arguments for our commands (default keeps the KV cache in f32, as the reference)")
    ap.add_argument("--kv-f16", action="store_true",
                    help="the reference rounds keys and values to f16, as our f16 KV cache does")
    args = ap.parse_args()
    if args.kv_f16:
        reference.round_kv_to_f16()

    cfg = json.load(open(os.path.join(args.model, "config.json")))
    vocab = min(cfg["vocab_size"], 199998)
    ids = torch.randint(0, vocab, (args.tokens,), generator=torch.Generator().manual_seed(args.seed))
    out_path = os.path.join(tempfile.mkdtemp(), "logits.safetensors")
    id_list = ",".join(str(int(i)) for i in ids)
    t = time.time()
    extra = args.our_args.split()
    subprocess.run([args.bin, "logits", "--model", args.model, "--token-ids", id_list, "--out", out_path, *extra], check=True)
    ours = load_file(out_path)["logits"]
    prompt = ids[: args.greedy_prompt]
    gen = subprocess.run([args.bin, "generate", "--model", args.model, "--greedy", "--json", *extra,
                          "--max-tokens", str(args.greedy), "--token-ids", ",".join(str(int(i)) for i in prompt)],
                         check=True, capture_output=True, text=True)
    our_greedy = json.loads(gen.stdout)["token_ids"]
    t_ours = time.time() - t

    t = time.time()
    model = reference.load(args.model, args.device)
    t_load = time.time() - t
    t = time.time()
    ref, margin = reference.logits_and_router_margin(model, ids)
    ref_greedy, greedy_margin = reference.greedy(model, prompt, args.greedy)
    t_ref = time.time() - t

    diff = (ours - ref).abs().max(dim=1).values
    print("max |diff| per position:", " ".join(f"{d:.1e}" for d in diff.tolist()))
    tie = margin < args.near_tie
    clean = diff[~tie]
    first_tie = next((i for i, m in enumerate(greedy_margin.tolist()) if m < args.near_tie), args.greedy)
    ref_greedy = ref_greedy.tolist()
    match = next((i for i, (a, b) in enumerate(zip(our_greedy, ref_greedy)) if a != b), len(ref_greedy))
    summary = {
        "positions": args.tokens,
        "near_tie_positions": int(tie.sum()),
        "max_abs_diff_clean": float(clean.max()) if clean.numel() else None,
        "max_abs_diff_near_tie": float(diff[tie].max()) if tie.any() else None,
        "rel_l2": float((ours - ref).norm() / ref.norm()),
        "logit_scale": float(ref.abs().max()),
        "greedy_tokens": args.greedy,
        "greedy_first_mismatch": match,
        "greedy_first_near_tie": first_tie,
        "greedy_equal_until_tie": match >= first_tie,
        "seconds": {"ours": t_ours, "reference_load": t_load, "reference": t_ref},
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
