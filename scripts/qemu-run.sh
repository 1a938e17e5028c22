#!/usr/bin/env bash
# Run a command on aarch64 under user-mode emulation, with clawd-edge and an aarch64 llama-cpp-python wheel.
#
# Usage: scripts/qemu-run.sh aarch64 [--profile P] [--wheel FILE] [--cpu MODEL] -- COMMAND [ARGS...]
#   COMMAND    clawd-edge (this checkout's CLI), python3, or any program of the sysroot
#   --profile  the aarch64 profile to build or reuse (default: armv8-a)
#   --wheel    use this llama-cpp-python wheel instead of building one with scripts/build-wheel.sh
#   --cpu      the emulated CPU (qemu -cpu; default: max), e.g. cortex-a72 for a Raspberry Pi 4
# e.g. scripts/qemu-run.sh aarch64 -- clawd-edge chat --model M --max-tokens 16 "What is the capital of France?"
#
# No binfmt registration and no root-wide multiarch: qemu-aarch64-static runs the sysroot's own python3.11 with
# `-L SYSROOT`. The sysroot (Debian bookworm arm64: libc, libstdc++, libgomp, Python) is unpacked by mmdebstrap
# into $CLAWD_EDGE_CACHE/aarch64 (default ~/.cache/clawd-edge/aarch64); the Python packages are aarch64 wheels
# from PyPI installed into a folder there, next to the wheel under test.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
source "$src/scripts/lib.sh"
arch="${1:-}"; shift || true
[ "$arch" = aarch64 ] || { echo "error: usage: scripts/qemu-run.sh aarch64 [options] -- COMMAND ..." >&2; exit 2; }
profile=armv8-a; wheel=""; qcpu="max"
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        --wheel) wheel="${2:?--wheel needs a file}"; shift 2 ;;
        --cpu) qcpu="${2:?--cpu needs a model}"; shift 2 ;;
        --) shift; break ;;
        *) echo "error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "error: no command given after --" >&2; exit 2; }
py="${PYTHON:-python3}"
cache="${CLAWD_EDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clawd-edge}/aarch64"
mkdir -p "$cache"

apt_install qemu-user-static mmdebstrap

sysroot="$cache/sysroot"
if [ ! -x "$sysroot/usr/bin/python3.11" ]; then
    echo "unpacking a Debian bookworm arm64 sysroot into $sysroot" >&2
    rm -rf "$sysroot.part"
    # extract: packages are unpacked, no maintainer script runs (nothing executes arm64 code as root).
    mmdebstrap --quiet --mode=root --arch=arm64 --variant=extract \
        --include=libc6,libstdc++6,libgomp1,python3.11-minimal,libpython3.11-stdlib \
        bookworm "$sysroot.part" http://deb.debian.org/debian >&2
    mv "$sysroot.part" "$sysroot"
fi

# Built once per profile into the same wheelhouse as scripts/bootstrap.sh uses, then reused.
[ -n "$wheel" ] || wheel="$("$src/scripts/build-wheel.sh" --arch aarch64 --profile "$profile" \
                            --out "$CLAWD_WHEELHOUSE" | tail -1)"
[ -f "$wheel" ] || { echo "error: no such wheel: $wheel" >&2; exit 2; }
# The aarch64 site-packages for this wheel and this checkout's dependencies, reused while both are the same.
key="$(cat "$wheel" "$src/setup.cfg" | sha256sum | cut -c1-16)"
site="$cache/site-$key"
if [ ! -d "$site" ]; then
    echo "installing aarch64 wheels into $site" >&2
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    "$py" -m pip wheel -q --no-deps -w "$tmp" "$src" >/dev/null
    # pip does not expand an explicit --platform to older manylinux levels: list every one glibc 2.36 runs.
    platforms=(--platform linux_aarch64 --platform manylinux2014_aarch64)
    for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
    "$py" -m pip install -q --target "$site.part" --only-binary=:all: --python-version 3.11 --implementation cp \
        "${platforms[@]}" "$wheel" "$tmp"/clawd_edge-*.whl >&2
    rm -rf "$site.part"/edge_runtime "$site.part"/convert  # this checkout's source is used instead (PYTHONPATH)
    mv "$site.part" "$site"
fi

run=(qemu-aarch64-static -L "$sysroot" -cpu "$qcpu")
interp="$sysroot/usr/bin/python3.11"
case "$1" in
    clawd-edge) shift; set -- "$interp" -m edge_runtime "$@" ;;
    python|python3|python3.11) shift; set -- "$interp" "$@" ;;
esac
export PYTHONPATH="$src:$site" PYTHONNOUSERSITE=1
exec "${run[@]}" "$@"
