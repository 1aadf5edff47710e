#!/bin/sh
# Lays out the build context of deploy/container/Containerfile: DIR/rootfs with the tracer
# binary and every shared library it links (as ldd lists them), at the same paths.
# Usage: deploy/container/context.sh TRACER_BINARY DIR
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 TRACER_BINARY DIR" >&2
    exit 2
fi
binary=$1
dir=$2
if [ ! -x "$binary" ]; then
    echo "$0: $binary is not an executable (build it with: cargo xtask build --release)" >&2
    exit 2
fi
rm -rf "$dir/rootfs"
mkdir -p "$dir/rootfs/usr/local/bin" "$dir/rootfs/tmp"
cp "$binary" "$dir/rootfs/usr/local/bin/tracer"
# Lines are "name => /path (addr)" or "/path (addr)"; linux-vdso has no file.
ldd "$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | while read -r lib; do
    mkdir -p "$dir/rootfs$(dirname "$lib")"
    cp -L "$lib" "$dir/rootfs$lib"
done
echo "$dir"
