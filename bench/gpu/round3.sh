# The session's combined GPU cycle (device tool `run`, carry .carry), two
# calls on one warm machine: `bash bench/gpu/round3.sh` builds with Vulkan
# and runs issue 9's local experts (local9.sh); then
# `MB_SKIP_BUILD=1 bash bench/gpu/vk_coopmat.sh` runs issue 8's
# cooperative-matrix prefill on the same build.
set -u
MB_WITH_VULKAN=ON bash bench/gpu/device_run.sh build 2>&1 | tail -3
MB_SKIP_BUILD=1 bash bench/gpu/local9.sh
