# Sourced by the tools/h100_*.sh scripts on the NVIDIA test machine: unpacks the Vulkan loader
# carried in .gl/ (see ../shared/nvidia/README.md) and sets where logs go.
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
BIN=.bin/gpt-oss-wgpu
M=/tmp/gpt-oss-20b-synth
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
