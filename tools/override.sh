#!/usr/bin/env bash
# Makes a shader variant folder for tools/h100_ab.sh (GPT_OSS_SHADER_DIR): copies each named
# shader into DIR with one `const NAME: u32 = ...;` line set to VALUE. The Rust side reads such
# constants from the same text (`wgsl_const`), so grids follow the variant.
#
#   tools/override.sh .bin/ov/s16 attention_split.wgsl STAGED_MIN_SPLITS 16
#   tools/override.sh .bin/ov/x moe_vec.wgsl DOWN_ROWS 32 moe_vec.wgsl GATE_UP_ROWS 32
set -euo pipefail
[ $# -ge 4 ] && [ $(( ($# - 1) % 3 )) -eq 0 ] || {
  echo "usage: $0 DIR FILE CONST VALUE [FILE CONST VALUE ...]" >&2
  exit 2
}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$1
shift
mkdir -p "$dir"
while [ $# -gt 0 ]; do
  file=$1 name=$2 value=$3
  shift 3
  target=$dir/$file
  mkdir -p "$(dirname "$target")"
  [ -e "$target" ] || cp "$root/shaders/$file" "$target"
  # Exactly one definition must change, or the variant would silently be the original.
  count=$(grep -c "^const $name: u32 = [0-9]*u;" "$target" || true)
  [ "$count" = 1 ] || { echo "$file: $count lines define $name" >&2; exit 1; }
  sed -i "s/^const $name: u32 = [0-9]*u;/const $name: u32 = ${value}u;/" "$target"
done
