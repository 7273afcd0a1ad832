#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian/Ubuntu machine: a Vulkan driver
# (lavapipe, a software GPU, when no hardware driver is present) and the wasm32 target.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then
  echo "installing a Vulkan driver (mesa-vulkan-drivers)..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
