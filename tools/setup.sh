#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian/Ubuntu machine: a Vulkan driver
# (lavapipe, a software GPU, when no Vulkan driver is present) and the wasm32 target. Safe to run
# again: it installs only what is missing.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# A Vulkan driver registers a JSON manifest in one of these folders (any of them will do).
have_vulkan_driver() {
  local d
  for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
    compgen -G "$d/*.json" >/dev/null && return 0
  done
  [ -n "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]
}

if ! have_vulkan_driver; then
  echo "installing a Vulkan driver (mesa-vulkan-drivers)..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# The official `openai` Python SDK, which tests/serve.rs drives the server with (a venv in .venv).
VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  echo "installing the openai Python SDK into .venv..."
  if ! command -v python3 >/dev/null || ! python3 -m venv "$VENV" 2>/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q openai
fi

# The browser build and its tests: Debian's Chromium and ChromeDriver (headless, WebGPU on
# SwiftShader), wasm-bindgen-cli at Cargo.lock's version, and web/'s npm packages (binaryen's
# wasm-opt, playwright-core); Xvfb for the windowed example's test.
need_apt=()
[ -x /usr/lib/chromium/chromium ] || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v Xvfb >/dev/null || need_apt+=(xvfb)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WBG=$(grep -A1 '^name = "wasm-bindgen"$' "$ROOT/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WBG" ]; then
  echo "installing wasm-bindgen-cli $WBG (a few minutes)..."
  cargo install -q wasm-bindgen-cli --version "$WBG"
fi
[ -d "$ROOT/web/node_modules/playwright-core" ] || (cd "$ROOT/web" && npm ci --no-audit --no-fund -q)
