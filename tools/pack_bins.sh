#!/usr/bin/env bash
# Packs what a device call runs into .bin/bins.tar.xz (carried with .gl and .bin, see
# ../shared/nvidia/README.md): the release binary, the library's unit tests (the kernel tests, as
# .bin/libtest) and the parity tests (.bin/paritytest), all built from the working tree now.
# With OTHER=REV also REV's release binary as .bin/gpt-oss-wgpu.REV (built in a worktree into
# $OTHER_TARGET, by default target-other/), for tools/h100_ab.sh's "bin:" variants.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
tests=$(cargo test --release --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])')
lib=$(echo "$tests" | awk '$1 == "lib" {print $3}')
parity=$(echo "$tests" | awk '$2 == "parity" {print $3}')
[ -n "$lib" ] && [ -n "$parity" ] || { echo "test binaries not found" >&2; exit 1; }
dir=$(mktemp -d)
cp target/release/gpt-oss-wgpu "$dir/"
cp "$lib" "$dir/libtest"
cp "$parity" "$dir/paritytest"
if [ -n "${OTHER:-}" ]; then
  tree=$(mktemp -d)
  git worktree add --detach "$tree" "$OTHER" >/dev/null
  # A failed build must not leave the worktree registered.
  trap 'git worktree remove --force "$tree"' EXIT
  other_target=${OTHER_TARGET:-$PWD/target-other}
  CARGO_TARGET_DIR="$other_target" cargo build --release --manifest-path "$tree/Cargo.toml"
  cp "$other_target/release/gpt-oss-wgpu" "$dir/gpt-oss-wgpu.$OTHER"
fi
mkdir -p .bin
tar -cJf .bin/bins.tar.xz -C "$dir" .
git rev-parse HEAD > .bin/bins.rev
echo "packed $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)') into .bin/bins.tar.xz"
