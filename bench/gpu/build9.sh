# Sourced by issue 9's GPU scripts (ncu9.sh, fuse9b.sh), after OUT is set:
# bench/gpu/preamble.sh with the coordinator's targets (MB_TARGETS) and no
# Vulkan.
export MB_WITH_VULKAN=OFF
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device"}
. bench/gpu/preamble.sh
