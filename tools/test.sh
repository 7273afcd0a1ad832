#!/usr/bin/env bash
# Every test suite (tools/setup.sh installs what they need):
#   1. cargo test: every kernel against a CPU reference and the model against transformers'
#      logits on lavapipe (software Vulkan), the CLI, the chat format, the server;
#   1b. the kernel tests again with lavapipe's subgroups 4 and 16 lanes wide instead of 8
#      (llvmpipe's vector width), so that the paths that depend on the width run too;
#   2. the same kernel tests inside headless Chromium on WebGPU (wasm-bindgen-test);
#   3. the browser build (web/build.sh) and its page tests (playwright-core): the JS API against
#      the native CLI, caching, errors, the demo page;
#   4. the library's documentation (rustdoc), whose warnings (a broken link) are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
export GPT_OSS_REQUIRE_GPU=1
cargo test
for bits in 128 512; do
  lanes=$((bits / 32))
  echo "== kernel tests with subgroups of $lanes lanes (LP_NATIVE_VECTOR_WIDTH=$bits)"
  devices=$(LP_NATIVE_VECTOR_WIDTH=$bits cargo run -q -- devices)
  if grep -q llvmpipe <<<"$devices" && ! grep -q "size $lanes\.\.$lanes" <<<"$devices"; then
    echo "lavapipe did not take LP_NATIVE_VECTOR_WIDTH=$bits:" >&2
    echo "$devices" >&2
    exit 1
  fi
  LP_NATIVE_VECTOR_WIDTH=$bits cargo test --lib
done
echo "== kernel tests in headless Chromium (WebGPU)"
WASM_BINDGEN_TEST_TIMEOUT=1800 CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver} \
  cargo test --target wasm32-unknown-unknown --lib --no-default-features
echo "== browser build and page tests"
web/build.sh
node --test web/test/page.test.mjs
echo "== the library's documentation (rustdoc, warnings as errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
