# The session's combined GPU cycle (device tool `run`, carry .carry): one
# build with Vulkan, then issue 9's local experts (local9.sh) and issue 8's
# cooperative-matrix prefill (vk_coopmat.sh) without building again.
#   bash bench/gpu/round3.sh
set -u
MB_WITH_VULKAN=ON bash bench/gpu/device_run.sh build 2>&1 | tail -3
export MB_SKIP_BUILD=1
bash bench/gpu/local9.sh
bash bench/gpu/vk_coopmat.sh
