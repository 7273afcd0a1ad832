#!/usr/bin/env bash
# Packs what a device call runs into .bin/bins.tar.xz (carried with .gl and .bin, see
# ../shared/nvidia/README.md): the release binary, the library's unit tests (the kernel tests, as
# .bin/libtest) and the parity tests (.bin/paritytest), all built from the working tree now.
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
mkdir -p .bin
tar -cJf .bin/bins.tar.xz -C "$dir" .
git rev-parse HEAD > .bin/bins.rev
echo "packed $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)') into .bin/bins.tar.xz"
