#!/usr/bin/env bash
# On the NVIDIA test machine: time shader variants against each other with one binary, the way
# PERF.md's tables are measured. Each variant is a folder of WGSL files that replace the embedded
# ones (GPT_OSS_SHADER_DIR; an empty folder, or "none", runs the embedded shaders), or
# "bin:PATH", another build's binary with its own embedded shaders (a change on the Rust side:
# pack the other build's binary into .bin too), or "env:NAME=VALUE", the embedded shaders with
# that variable set (a switch on the Rust side); the variants run in turn, ROUNDS times, so that
# drift shows up as spread rather than as a difference.
#
#   VARIANTS="none .bin/ov/A .bin/ov/B" KERNELS="linear.coop moe_vec.gate_up" \
#     BENCH_ARGS="--prompt-lens 2048 --decode-steps 16 --batches 1,16,64" tools/h100_ab.sh
#
# Prints each run's tok/s lines and, for every kernel family in KERNELS, its GPU time a step (us)
# at batch 1 ("b1"), at each batch of the profile, at each of --contexts ("b1 at 8192") and in
# the prefill pass. A variant whose outputs
# are wrong on purpose (an ablation) changes the routing, so compare only the kernels it touches.
set -uo pipefail
source tools/h100_env.sh
[ -e $M/config.json ] || $BIN synth --preset 20b --seed 1 --force --out $M >/dev/null 2>&1
ROUNDS=${ROUNDS:-2}
# A folder that is not there would silently run the embedded shaders.
for v in ${VARIANTS:-none}; do
  case $v in
    none) ;;
    bin:*) [ -x "${v#bin:}" ] || { echo "no binary ${v#bin:}" >&2; exit 2; } ;;
    env:*=*) ;;
    *) [ -d "$v" ] || { echo "no variant folder $v" >&2; exit 2; } ;;
  esac
done
ARGS=${BENCH_ARGS:---prompt-lens 2048 --decode-steps 16 --batches 1,16,64}
embedded=$(mktemp -d)
for r in $(seq 1 "$ROUNDS"); do
  for v in ${VARIANTS:-none}; do
    name=$(basename "$v" | tr -c 'A-Za-z0-9._\n-' '_')
    dir=$v bin=$BIN vars=
    case $v in
      none) dir=$embedded ;;
      bin:*) dir=$embedded bin=${v#bin:} ;;
      env:*) dir=$embedded vars=${v#env:} ;;
    esac
    # A run that fails must not show an earlier run's figures.
    json="$OUT/ab.$name.$r.json"; rm -f "$json"
    echo "== $name (round $r)"
    env $vars GPT_OSS_SHADER_DIR=$dir timeout ${RUN_TIMEOUT:-120} \
      $bin bench --model $M $ARGS --json "$json" 2>&1 |
      grep -E "tok/s|rror|panick"
    [ -e "$json" ] && KERNELS="${KERNELS:-}" python3 - "$json" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
want = os.environ["KERNELS"].split()
def pick(families):
    d = dict(families)
    return " ".join(f"{k} {d[k]:.0f}" for k in want if k in d)
rows = [("b1", r["decode_kernels_us"])] + [(f"b{b}", f) for b, f in r["batch_kernels_us"]]
rows += [(f"b1 at {c}", f) for c, f in r["context_kernels_us"]]
for label, families in rows + [("prefill", r["prefill_kernels_us"])]:
    if pick(families):
        print(label, pick(families))
PY
  done
done
