#!/usr/bin/env bash
# Builds the browser bundle into web/dist/: the wasm module (wasm-bindgen, then wasm-opt from npm
# `binaryen`), the ES module gpt-oss.js and the demo page. Needs the wasm32 target and
# wasm-bindgen-cli at Cargo.lock's version; tools/setup.sh installs both.
#   web/build.sh            optimized build
#   web/build.sh --dev      skip wasm-opt (faster, larger)
set -euo pipefail
cd "$(dirname "$0")"
OPT=1
[ "${1:-}" = "--dev" ] && OPT=0

[ -d node_modules/binaryen ] || npm ci --no-audit --no-fund
want=$(grep -A1 '^name = "wasm-bindgen"$' ../Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')
if [ "$have" != "$want" ]; then
  echo "wasm-bindgen $want is needed (found '${have:-none}'): cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi

echo "compiling the crate for wasm32..."
# A cdylib only here, so native builds do not link one.
cargo rustc --manifest-path ../Cargo.toml --lib --release --target wasm32-unknown-unknown \
  --no-default-features --features web --crate-type cdylib
rm -rf dist && mkdir -p dist
# Cargo's output folder (a relative CARGO_TARGET_DIR counts from here for both tools).
target=${CARGO_TARGET_DIR:-../target}
wasm-bindgen --target web --no-typescript --out-dir dist --out-name gpt_oss_wgpu \
  "$target/wasm32-unknown-unknown/release/gpt_oss_wgpu.wasm"
if [ "$OPT" = 1 ]; then
  echo "optimizing with wasm-opt..."
  node_modules/.bin/wasm-opt -O3 --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    dist/gpt_oss_wgpu_bg.wasm -o dist/gpt_oss_wgpu_bg.wasm
fi
cp src/* dist/
size=$(stat -c %s dist/gpt_oss_wgpu_bg.wasm)
gz=$(gzip -9 -c dist/gpt_oss_wgpu_bg.wasm | wc -c)
echo "web/dist ready: wasm $((size / 1024)) KiB ($((gz / 1024)) KiB gzipped); serve the folder and open index.html"
