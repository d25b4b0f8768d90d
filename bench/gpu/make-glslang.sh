#!/bin/sh
# Builds a glslang new enough for kernels/vulkan/cm2 (GL_NV_cooperative_matrix2;
# Debian 12's is 11.13) and puts it, with Vulkan C headers that name
# VK_NV_cooperative_matrix2 (Debian 12's are 1.3.239), under .carry/dev/cm2,
# where bench/gpu/device_run.sh finds them (-DMB_GLSLANG, -DVulkan_INCLUDE_DIR).
#   sh bench/gpu/make-glslang.sh GLSLANG_SRC VULKAN_HEADERS_SRC [.carry]
# GLSLANG_SRC: a checkout of KhronosGroup/glslang (measured with 90afccfbd,
# glslang 16.5.0); VULKAN_HEADERS_SRC: of KhronosGroup/Vulkan-Headers (its
# include/ folder; 1.4.359 here). glslang is built without SPIRV-Tools
# (ENABLE_OPT=OFF: no optimizer, nothing to fetch) and with a static
# libstdc++, so the binary runs on the GPU machine as it is.
set -e
src=$(realpath "$1")
hdr=$(realpath "$2")
top=$(realpath -m "${3:-.carry}")
build=${TMPDIR:-/tmp}/mb-glslang-build
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DENABLE_OPT=OFF -DGLSLANG_TESTS=OFF \
    -DBUILD_SHARED_LIBS=OFF -DENABLE_HLSL=OFF -DBUILD_EXTERNAL=OFF -DCMAKE_EXE_LINKER_FLAGS=-static-libstdc++ > /dev/null
cmake --build "$build" -j"$(nproc)" --target glslang-standalone > /dev/null
mkdir -p "$top/dev/cm2/bin" "$top/dev/cm2/include/vulkan" "$top/dev/cm2/include/vk_video"
cp "$build/StandAlone/glslang" "$top/dev/cm2/bin/glslang"
cp "$hdr"/include/vulkan/*.h "$top/dev/cm2/include/vulkan/"
cp "$hdr"/include/vk_video/*.h "$top/dev/cm2/include/vk_video/"
"$top/dev/cm2/bin/glslang" --version | head -1
echo "ready: $top/dev/cm2 ($(du -sh "$top/dev/cm2" | cut -f1))"
