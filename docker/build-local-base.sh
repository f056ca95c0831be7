#!/usr/bin/env bash
# Makes the images' base from this machine alone, for hosts with no registry to pull from
# (the CI machine): a root file system holding just the shared libraries the host-built binaries
# need (as `ldd` lists them), the dynamic loader and a few files in /etc, loaded with
# `docker import`. Then stages the binaries for docker/Dockerfile.prebuilt. No downloads; a few
# seconds.
#
#   cargo build --release -p rafka-broker -p rafka-client --bins
#   docker/build-local-base.sh [--bin-dir target/release] [--tag rafka-base:local]
#                              [--stage docker/staging]
#   RAFKA_DOCKERFILE=docker/Dockerfile.prebuilt docker-compose up -d --build
#
# The base is re-imported only when its content changes (a digest of it is kept as a label),
# so repeated runs leave no dangling images behind.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir="$repo/target/release"
tag="rafka-base:local"
stage="$repo/docker/staging"
binaries=(rafka-broker rafka)

while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --stage) stage=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "build-local-base.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

started=$SECONDS
for b in "${binaries[@]}"; do
    if [ ! -x "$bin_dir/$b" ]; then
        echo "build-local-base.sh: $bin_dir/$b not found: build it first" \
             "(cargo build --release -p rafka-broker -p rafka-client --bins)" >&2
        exit 1
    fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/etc" "$root/tmp" "$root/usr/local/bin" "$root/var/lib"
chmod 1777 "$root/tmp"

# Every library the binaries load, at the path the loader looks for it. Lines of `ldd` are
# "name => /path (0x...)", "/path/ld-linux... (0x...)" or "linux-vdso.so.1 (0x...)" (no file).
libs=$(for b in "${binaries[@]}"; do
    out=$(ldd "$bin_dir/$b" 2>&1) || true
    if grep -q 'not found' <<<"$out"; then
        echo "build-local-base.sh: $b needs a library this machine lacks:" >&2
        grep 'not found' <<<"$out" >&2
        exit 1
    fi
    # A statically linked binary needs nothing.
    grep -q 'not a dynamic executable\|statically linked' <<<"$out" && continue
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
done | sort -u)
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

# Host names (the peers' compose service names) resolve through /etc/hosts and the engine's
# DNS server; the engine bind-mounts /etc/hosts and /etc/resolv.conf into every container.
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/sbin/nologin\nrafka:x:10001:10001:rafka:/var/lib/rafka:/sbin/nologin\n' \
    >"$root/etc/passwd"
printf 'root:x:0:\nrafka:x:10001:\n' >"$root/etc/group"

# Fixed owners and times, so the same libraries always give the same tarball and digest.
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime='@0' \
    -C "$root" -cf "$work/base.tar" .
digest=$(sha256sum "$work/base.tar" | cut -c1-64)

current=$(docker image inspect --format '{{ index .Config.Labels "rafka.base.digest" }}' \
    "$tag" 2>/dev/null || true)
if [ "$current" = "$digest" ]; then
    echo "base image $tag is up to date ($(wc -w <<<"$libs") files from the host)"
else
    docker import \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change "LABEL rafka.base.digest=$digest" \
        --message 'rafka base: host shared libraries' \
        "$work/base.tar" "$tag" >/dev/null
    echo "imported base image $tag ($(wc -w <<<"$libs") files from the host," \
         "$(du -h "$work/base.tar" | cut -f1))"
fi

# The binaries, stripped of debug information (it would triple a debug build's image), and the
# empty data directory Dockerfile.prebuilt copies into place with the broker user's ownership.
mkdir -p "$stage/data"
for b in "${binaries[@]}"; do
    rm -f "$stage/$b"
    if command -v strip >/dev/null; then
        strip --strip-debug -o "$stage/$b" "$bin_dir/$b"
    else
        cp "$bin_dir/$b" "$stage/$b"
    fi
done
echo "staged ${binaries[*]} from $bin_dir in $stage"
echo "done in $((SECONDS - started)) s; next:" \
     "RAFKA_DOCKERFILE=docker/Dockerfile.prebuilt docker-compose up -d --build"
