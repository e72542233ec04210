#!/bin/sh
# Installs librangealloc.so, rangealloc.h and the pkg-config file rangealloc.pc:
#
#   ffi/install.sh [--prefix DIR] [--libdir DIR] [--destdir DIR] [--lib FILE]
#
#   --prefix   where it is installed (default /usr/local): DIR/lib/librangealloc.so,
#              DIR/include/rangealloc.h, DIR/lib/pkgconfig/rangealloc.pc
#   --libdir   the library directory (default PREFIX/lib), e.g. PREFIX/lib/x86_64-linux-gnu
#   --destdir  staging root prepended to every path written (packagers' DESTDIR); the
#              .pc file still names PREFIX
#   --lib      install this librangealloc.so instead of building it with
#              `cargo build --release -p rangealloc-ffi`
#
# Then: cc prog.c $(pkg-config --cflags --libs rangealloc)  (with PKG_CONFIG_PATH set to
# LIBDIR/pkgconfig when that is not a default location), or LD_PRELOAD=LIBDIR/librangealloc.so.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
libdir=
destdir=
lib=
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --libdir) libdir=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --lib) lib=$2; shift 2 ;;
        *) echo "install.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
    esac
done
case "$prefix" in
    /*) ;;
    *) echo "install.sh: --prefix must be an absolute path, got '$prefix'" >&2; exit 2 ;;
esac
[ -n "$libdir" ] || libdir=$prefix/lib

if [ -z "$lib" ]; then
    (cd "$here/.." && cargo build --release -p rangealloc-ffi)
    lib=${CARGO_TARGET_DIR:-$here/../target}/release/librangealloc.so
fi
[ -f "$lib" ] || { echo "install.sh: $lib does not exist" >&2; exit 1; }

# The header carries the version (a test keeps it equal to the crate's).
version=$(sed -n 's/^#define RANGEALLOC_VERSION "\(.*\)"$/\1/p' "$here/include/rangealloc.h")
[ -n "$version" ] || { echo "install.sh: no RANGEALLOC_VERSION in rangealloc.h" >&2; exit 1; }

install -d "$destdir$libdir" "$destdir$libdir/pkgconfig" "$destdir$prefix/include"
install -m 755 "$lib" "$destdir$libdir/librangealloc.so"
install -m 644 "$here/include/rangealloc.h" "$destdir$prefix/include/rangealloc.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@VERSION@|$version|" \
    "$here/rangealloc.pc.in" > "$destdir$libdir/pkgconfig/rangealloc.pc"
chmod 644 "$destdir$libdir/pkgconfig/rangealloc.pc"
echo "installed rangealloc $version: $destdir$libdir/librangealloc.so, $destdir$prefix/include/rangealloc.h, $destdir$libdir/pkgconfig/rangealloc.pc"
