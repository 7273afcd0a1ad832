#!/usr/bin/env bash
# On the NVIDIA test machine (see ../shared/nvidia/README.md): write a synthetic gpt-oss-20b, run
# `bench` on it, then the transformers baseline, in one go. Expects the release binary in .bin/
# and the Vulkan loader packages in .gl/; logs go to $OUT.
set -uo pipefail
source tools/h100_env.sh
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
$BIN devices | tee "$OUT/devices.txt"
/usr/bin/time -f "synth %e s" $BIN synth --preset 20b --seed 1 --force --out $M 2>&1 | tail -2
$BIN bench --model $M --prompt-lens ${PROMPT_LENS:-512,2048} --batches ${BATCHES:-1,8} --decode-steps 64 \
  --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
if [ "${HF:-1}" = 1 ]; then
  PYTHONUNBUFFERED=1 timeout 300 python3 .bin/bench-hf.py 2>&1 | grep -v Warning | tee "$OUT/hf.txt"
fi
