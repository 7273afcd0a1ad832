#!/usr/bin/env python3
"""Parity against transformers over random model shapes: for each of N seeded shapes (head dims, GQA
groups, experts and top-k, windows, vocabularies, layer counts), writes a checkpoint with `synth`,
runs tools/parity_check.py on it with a random choice of our options (f32 or f16 KV cache, the
portable kernels, passes of a few tokens through `--chunk`: 3 takes the per-slot expert kernels,
6 the grouped gate_up and the per-slot down, 9 and 17 the grouped experts, 64 the tiles), and
prints a line per shape. With an f16 KV cache the reference rounds its keys and values to f16 the
same way (parity_check.py --kv-f16): against f32 attention, f16's rounding may flip a near-tied
router choice, which with few experts moves logits wholesale. Exits non-zero if any shape is off:
relative L2 of the logits above 1e-4 (5e-4 with f16, whose rounding of a key may go the other way
where the two sides' RoPE differ in the last bit), or a greedy continuation that differs before a
near-tie. Needs torch and transformers (CPU is enough: a shape takes seconds).

Usage: python3 tools/parity_sweep.py [--shapes 12] [--seed 1] [--bin target/release/gpt-oss-wgpu]
"""
import argparse, json, os, random, shutil, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin", default="target/release/gpt-oss-wgpu")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    rng = random.Random(args.seed)
    bad = 0
    for i in range(args.shapes):
        kv = rng.choice([1, 2, 4])
        shape = {
            "layers": rng.randint(1, 5), "hidden": rng.choice([64, 96, 128, 192, 256, 320]),
            "intermediate": rng.choice([32, 64, 96, 160]), "heads": kv * rng.choice([1, 2, 3, 4, 8]),
            "kv-heads": kv, "head-dim": rng.choice([16, 32, 48, 64, 64, 128]),
            "experts": rng.choice([2, 3, 4, 6, 8, 16, 32]), "sliding-window": rng.choice([4, 8, 16, 128]),
            "vocab": rng.choice([512, 1024, 2048]),
        }
        shape["top-k"] = rng.randint(1, min(4, shape["experts"]))
        tokens = rng.choice([40, 120, 300, 600])
        ours = rng.choice(["--kv-f32", "--kv-f32 --portable", "--kv-f32 --chunk 3", "--kv-f32 --chunk 6",
                           "--kv-f32 --chunk 9", "--kv-f32 --chunk 17", "--kv-f32 --chunk 64",
                           "--chunk 64 --precision fast"])
        flags = " ".join(f"--{k} {v}" for k, v in shape.items())
        model = tempfile.mkdtemp()
        try:
            subprocess.run([binary, "synth", "--seed", str(i), *flags.split(), "--force", "--out", model],
                           check=True, capture_output=True)
            f32 = "--kv-f32" in ours
            r = subprocess.run([sys.executable, os.path.join(HERE, "parity_check.py"), "--model", model,
                                "--bin", binary, "--tokens", str(tokens), "--greedy", "12", "--our-args=" + ours]
                               + ([] if f32 else ["--kv-f16"]),
                               capture_output=True, text=True)
        finally:
            shutil.rmtree(model, ignore_errors=True)
        if r.returncode:
            bad += 1
            print(f"{i} FAILED {flags} {ours}: {r.stderr.strip()[-300:]}", flush=True)
            continue
        j = json.loads(r.stdout[r.stdout.index("{"):])
        ok = j["rel_l2"] < (1e-4 if f32 else 5e-4) and j["greedy_equal_until_tie"]
        bad += not ok
        print(f"{i} {'ok' if ok else 'OFF'} rel_l2 {j['rel_l2']:.1e}, greedy equal until a tie: "
              f"{j['greedy_equal_until_tie']}; {tokens} tokens, {flags} {ours}", flush=True)
    print(f"{args.shapes - bad} of {args.shapes} shapes agree")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
