#!/bin/sh
# Prepares .carry/dev: the headers, link-time libraries and pkg-config files
# of the Debian packages moe-broker builds against (ZeroMQ, libnuma, cJSON,
# PCRE2, utf8proc, libmicrohttpd), so the GPU machine, which reaches no package registry, can build
# the project itself with its own nvcc. Run from the project root after
# ../shared/device/make-carry.sh; device_run.sh uses the result.
set -e
# Without the Debian packages (.ci/install-deps) the copies below would
# find nothing and leave a kit the GPU machine's build fails on minutes
# into a device call: refuse here instead.
for h in /usr/include/zmq.h /usr/include/numa.h /usr/include/cjson/cJSON.h /usr/include/pcre2.h; do
    [ -e "$h" ] || { echo "make-devkit: $h missing: run .ci/install-deps first" >&2; exit 1; }
done
top=$(realpath -m "${1:-.carry}")
dev="$top/dev"
# Everything but cm2/ (make-glslang.sh's, which takes a while to rebuild).
[ -d "$dev" ] && find "$dev" -mindepth 1 -maxdepth 1 ! -name cm2 -exec rm -rf {} +
mkdir -p "$dev/include" "$dev/lib/pkgconfig"
copy_hdr() { for h in "$@"; do [ -e "$h" ] && cp -a "$h" "$dev/include/"; done; return 0; }
copy_hdr /usr/include/zmq.h /usr/include/zmq_utils.h /usr/include/numa.h /usr/include/numaif.h \
    /usr/include/numacompat1.h /usr/include/cjson /usr/include/pcre2.h /usr/include/utf8proc.h \
    /usr/include/microhttpd.h
ma=/usr/lib/x86_64-linux-gnu
for l in libzmq.so.5 libnuma.so.1 libcjson.so.1 libpcre2-8.so.0 libutf8proc.so.2 libmicrohttpd.so.12; do
    [ -e "$ma/$l" ] || continue
    cp -L "$ma/$l" "$dev/lib/$l"
    ln -sf "$l" "$dev/lib/${l%%.so.*}.so"
done
# libmicrohttpd's own dependencies (GnuTLS and what it needs), in case the
# GPU machine's image lacks them; only at run time, so no .so links.
for l in libgnutls.so.30 libp11-kit.so.0 libidn2.so.0 libunistring.so.2 libtasn1.so.6 libnettle.so.8 \
    libhogweed.so.6 libgmp.so.10 libffi.so.8; do
    [ -e "$ma/$l" ] && cp -L "$ma/$l" "$dev/lib/$l"
done
# The Vulkan backend: loader headers (C only), glslc and its library.
if [ -d /usr/include/vulkan ] && command -v glslc >/dev/null 2>&1; then
    mkdir -p "$dev/include/vulkan" "$dev/include/vk_video" "$dev/bin"
    cp /usr/include/vulkan/*.h "$dev/include/vulkan/"
    [ -d /usr/include/vk_video ] && cp /usr/include/vk_video/*.h "$dev/include/vk_video/"
    cp -L "$(command -v glslc)" "$dev/bin/glslc"
    cp -L "$ma/libshaderc.so.1" "$dev/lib/libshaderc.so.1"
    cp -L "$ma/libvulkan.so.1" "$dev/lib/libvulkan.so.1"
    ln -sf libvulkan.so.1 "$dev/lib/libvulkan.so"
fi
pc() { # name libs cflags
    printf 'prefix=%s\nlibdir=${prefix}/lib\nincludedir=${prefix}/include\n\nName: %s\nDescription: carried\nVersion: 99\nLibs: -L${libdir} %s\nCflags: -I${includedir} %s\n' \
        "$dev" "$1" "$2" "$3" > "$dev/lib/pkgconfig/$1.pc"
}
pc libzmq -lzmq ""
pc libcjson -lcjson '-I${includedir}/cjson'
pc numa -lnuma ""
[ -e "$dev/lib/libpcre2-8.so" ] && pc libpcre2-8 -lpcre2-8 ""
[ -e "$dev/lib/libutf8proc.so" ] && pc libutf8proc -lutf8proc ""
[ -e "$dev/lib/libmicrohttpd.so" ] && pc libmicrohttpd -lmicrohttpd ""
echo "ready: $dev ($(du -sh "$dev" | cut -f1))"
