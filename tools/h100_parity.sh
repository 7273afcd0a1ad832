#!/usr/bin/env bash
# On the NVIDIA test machine: parity of this crate against transformers at gpt-oss-20b shapes on a
# synthetic checkpoint (tools/parity_check.py). The float32 reference of the whole 24-layer model
# (about 84 GB) only fits in host memory, so it runs on the CPU; LAYERS=N writes fewer layers of
# the same shapes and DEVICE=cuda runs the reference on the GPU instead.
set -uo pipefail
source tools/h100_env.sh
$BIN synth --preset 20b --seed 2 --force ${LAYERS:+--layers $LAYERS} --out $M 2>&1 | tail -1
PYTHONUNBUFFERED=1 timeout ${REF_TIMEOUT:-480} python3 tools/parity_check.py --model $M --bin $BIN \
  --tokens ${TOKENS:-160} --greedy ${GREEDY:-16} --device ${DEVICE:-cpu} 2>&1 | grep -v "Loading weights" | tee "$OUT/parity.txt"
