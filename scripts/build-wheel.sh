#!/usr/bin/env bash
# Build llama-cpp-python for one CPU profile (never -march=native), with llama.cpp's ggml-rpc-server inside it.
#
# Usage: scripts/build-wheel.sh [--arch x86_64|aarch64] [--profile P] [--out DIR] [--force]
#   --arch     target architecture (default: this machine's); aarch64 on x86 cross-compiles with Debian's
#              gcc-aarch64-linux-gnu (installed when missing)
#   --profile  a profile of `python3 -m edge_runtime.cpu list` (default: the best one this CPU runs, or the
#              most portable one of another architecture)
#   --out      where the wheel goes (default: dist/)
#   --force    rebuild even when the wheel is already there
# Prints the wheel's path last. The wheel is named llama_cpp_python-VERSION+clawd.PROFILE-py3-none-PLAT.whl:
# pip's own wheel cache ignores CMAKE_ARGS (a build for one CPU is silently reused on another), so it is never
# used here (--no-cache-dir); the profile is in the wheel's version instead.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
source "$src/scripts/lib.sh"
LLAMA_CPP_PYTHON_VERSION=0.3.36
arch="$(uname -m)"; profile=""; out="$src/dist"; force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="${2:?--arch needs x86_64 or aarch64}"; shift 2 ;;
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
py="${PYTHON:-python3}"
cpu() { PYTHONPATH="$src" "$py" -m edge_runtime.cpu "$@"; }
if [ -z "$profile" ]; then
    if [ "$arch" = "$(uname -m)" ]; then profile="$(cpu detect)"; else profile="$(cpu detect --arch "$arch")"; fi
fi
profile_arch="$(cpu arch "$profile")"
if [ "$profile_arch" != "$arch" ]; then
    echo "error: profile $profile is for $profile_arch, not $arch" >&2; exit 2
fi
label="$(cpu label "$profile")"
plat="linux_$arch"
mkdir -p "$out"
wheel="$out/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION+$label-py3-none-$plat.whl"
if [ -f "$wheel" ] && [ "$force" -eq 0 ]; then
    echo "$wheel"; exit 0
fi

cmake_args="$(cpu cmake-args "$profile")"
cxx=g++
if [ "$arch" != "$(uname -m)" ]; then
    [ "$arch" = aarch64 ] || { echo "error: cross builds only for aarch64 (asked: $arch)" >&2; exit 2; }
    cxx=aarch64-linux-gnu-g++
    apt_install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
    cmake_args+=" -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64"
    cmake_args+=" -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++"
    cmake_args+=" -DCMAKE_FIND_ROOT_PATH=/usr/aarch64-linux-gnu -DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER"
    cmake_args+=" -DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY -DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/clawd-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION for $arch, profile $profile" \
     "(about 6 minutes on 2 cores; log: $work/build.log)" >&2
"$py" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
sdist="$(echo "$work"/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION)"
started=$(date +%s)
if ! CMAKE_ARGS="$cmake_args" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$py" -m pip wheel -q --no-deps --no-cache-dir -w "$work/raw" "$sdist" >"$work/build.log" 2>&1; then
    tail -30 "$work/build.log" >&2
    echo "error: building llama-cpp-python for profile $profile failed (log above)" >&2
    exit 1
fi
# ggml-rpc-server (llama.cpp's tools/rpc), linked against the wheel's own ggml: one artifact for a helper board.
mkdir -p "$work/lib"
unzip -q -o "$work"/raw/*.whl 'llama_cpp/lib/*' -d "$work/lib"
"$cxx" -std=c++17 -O2 -I "$sdist/vendor/llama.cpp/ggml/include" "$sdist/vendor/llama.cpp/tools/rpc/rpc-server.cpp" \
    -L "$work/lib/llama_cpp/lib" -lggml -lggml-base -Wl,-rpath,'$ORIGIN/../lib:$ORIGIN' -o "$work/ggml-rpc-server"
record=$(cat <<JSON
{"profile": "$profile", "arch": "$arch", "llama_cpp_python": "$LLAMA_CPP_PYTHON_VERSION",
 "cmake_args": "$cmake_args", "compiler": "$("$cxx" --version | head -1)",
 "build_host_cpu": "$(PYTHONPATH="$src" "$py" -c 'from edge_runtime.cpu.features import read_cpu; print(read_cpu().model)')",
 "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "build_seconds": $(( $(date +%s) - started ))}
JSON
)
"$py" "$src/scripts/wheel_label.py" "$work"/raw/*.whl "$out" --label "$label" --plat "$plat" --record "$record" \
    --add "$work/ggml-rpc-server=llama_cpp/bin/ggml-rpc-server" >/dev/null
# The same binary for a helper board that runs only the RPC server: with the ggml libraries it needs beside it.
rpc_dir="$out/ggml-rpc-server-$profile-$arch"
rm -rf "$rpc_dir"; mkdir -p "$rpc_dir"
cp "$work/ggml-rpc-server" "$rpc_dir/"
for lib in libggml.so.0 libggml-base.so.0 libggml-cpu.so.0 libggml-rpc.so.0; do
    cp "$work/lib/llama_cpp/lib/$lib" "$rpc_dir/"
done
echo "built in $(( $(date +%s) - started )) s" >&2
echo "$wheel"
