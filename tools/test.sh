#!/usr/bin/env bash
# Every test suite (tools/setup.sh installs what they need):
#   1. cargo test: every kernel against a CPU reference and the model against transformers'
#      logits on lavapipe (software Vulkan), the CLI, the chat format, the server;
#   2. the same kernel tests inside headless Chromium on WebGPU (wasm-bindgen-test);
#   3. the browser build (web/build.sh) and its page tests (playwright-core): the JS API against
#      the native CLI, caching, errors, the demo page.
set -euo pipefail
cd "$(dirname "$0")/.."
export GPT_OSS_REQUIRE_GPU=1
cargo test
echo "== kernel tests in headless Chromium (WebGPU)"
WASM_BINDGEN_TEST_TIMEOUT=1800 CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver} \
  cargo test --target wasm32-unknown-unknown --lib --no-default-features
echo "== browser build and page tests"
web/build.sh
node --test web/test/page.test.mjs
