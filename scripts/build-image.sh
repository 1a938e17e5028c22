#!/usr/bin/env bash
# Build the clawd-edge container image (the chat server: no voice, no OCR) without pulling a base image.
#
# Usage: scripts/build-image.sh [--arch amd64|arm64] [--profile P] [--tag NAME:TAG] [--wheel FILE] [--reuse]
#                               [--keep-rootfs]
#   --arch     image architecture (default: this machine's, so `make test` builds and runs a native image on
#              x86 and on ARM boards alike); another one needs qemu-user-static registered with binfmt_misc,
#              because Debian's maintainer scripts run inside the new root
#   --profile  llama.cpp build profile (`python3 -m edge_runtime.cpu list`); default: the most portable one of
#              the architecture (x86-64-v2, armv8-a), so the image runs on any CPU of the fleet
#   --tag      image name (default: clawd-edge:VERSION, clawd-edge:VERSION-arm64 for arm64)
#   --wheel    use this llama-cpp-python wheel instead of scripts/build-wheel.sh's (built once per profile,
#              about 6 minutes on 2 cores, then reused from the wheelhouse)
#   --reuse    keep an image of this tag that was built from the same inputs (the package's files in this
#              checkout, the llama.cpp wheel, arch, profile, mirror, this script): what `make test` uses
#   --keep-rootfs  keep the root file system tarball (printed) for inspection
#
# How, and why this way: no registry is reachable from the build machines, so the base is not `debian:bookworm`
# but a Debian bookworm root unpacked by mmdebstrap from the configured apt mirror ($CLAWD_EDGE_DEBIAN_MIRROR,
# default http://deb.debian.org/debian, with bookworm-updates and the security suite). Every Python package is a
# wheel fetched on this host through pip's usual configuration (the offline PyPI mirror here), copied into the
# root and installed there with --no-index into /opt/clawd-edge/venv, so the image build itself never reaches
# PyPI. buildah turns the tarball into an image (`from scratch`, `add`, `config`, `commit`): no Dockerfile, no
# container is run to build it. Docker format, because the OCI image format has no HEALTHCHECK.
# Prints the image's size last: `clawd-edge:0.1.0 281.6 MB`.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$src/scripts/lib.sh"
case "$(uname -m)" in aarch64) arch=arm64 ;; *) arch=amd64 ;; esac
profile=""; tag=""; wheel=""; keep=0; reuse=0
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="${2:?--arch needs amd64 or arm64}"; shift 2 ;;
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        --tag) tag="${2:?--tag needs NAME:TAG}"; shift 2 ;;
        --wheel) wheel="${2:?--wheel needs a file}"; shift 2 ;;
        --reuse) reuse=1; shift ;;
        --keep-rootfs) keep=1; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$arch" in
    amd64) machine=x86_64; : "${profile:=x86-64-v2}" ;;
    arm64) machine=aarch64; : "${profile:=armv8-a}" ;;
    *) echo "error: --arch must be amd64 or arm64, not $arch" >&2; exit 2 ;;
esac
py="${PYTHON:-python3}"
version="$(PYTHONPATH="$src" "$py" -c 'import edge_runtime; print(edge_runtime.__version__)')"
if [ -z "$tag" ]; then
    tag="clawd-edge:$version"; [ "$arch" = amd64 ] || tag+="-$arch"
fi
mirror="${CLAWD_EDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${CLAWD_EDGE_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
if [ "$(id -u)" -ne 0 ]; then
    # mmdebstrap's root mode and buildah's storage are those of podman as root (where the tests run the image).
    echo "error: run as root (sudo scripts/build-image.sh ...): the root file system is built in root mode" >&2
    exit 2
fi
apt_install mmdebstrap buildah
# mmdebstrap checks with arch-test that the foreign architecture's binaries can run here
[ "$arch" = amd64 ] || apt_install arch-test qemu-user-static
if [ "$machine" != "$(uname -m)" ] && [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$machine" ]; then
    echo "error: building an $arch image on $(uname -m) runs $arch maintainer scripts: needs qemu-user-static" \
         "registered in binfmt_misc (/proc/sys/fs/binfmt_misc/qemu-$machine is missing)" >&2
    exit 1
fi
started=$(date +%s)

[ -n "$wheel" ] || wheel="$("$src/scripts/build-wheel.sh" --arch "$machine" --profile "$profile" \
                            --out "$CLAWD_WHEELHOUSE" | tail -1)"
[ -f "$wheel" ] || { echo "error: no such wheel: $wheel" >&2; exit 2; }

# What the image is made of, as one hash (an image label): --reuse compares it instead of rebuilding.
inputs="$( { git -C "$src" ls-files -z -co --exclude-standard -- edge_runtime convert models setup.cfg \
                 pyproject.toml scripts/build-image.sh | (cd "$src"; xargs -0 sha256sum 2>/dev/null) || true
             sha256sum "$wheel"; echo "$arch $profile $mirror $security"; } | sha256sum | cut -c1-16)"
image_size() {
    if command -v podman >/dev/null; then
        # The uncompressed size of the layer (what a device stores); a registry push sends it gzip-compressed.
        local size; size="$(podman image inspect --format '{{.Size}}' "$tag")"
        awk -v t="$tag" -v s="$size" 'BEGIN { printf "%s %.1f MB\n", t, s / 1e6 }'
    else
        buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$tag"
    fi
}
if [ "$reuse" -eq 1 ] && command -v podman >/dev/null && \
   [ "$(podman image inspect --format '{{index .Labels "io.clawd-edge.inputs"}}' "$tag" 2>/dev/null)" = "$inputs" ]
then
    echo "reusing $tag (built from the same inputs, $inputs)" >&2
    image_size; exit 0
fi

work="$(mktemp -d "${TMPDIR:-/var/tmp}/clawd-image.XXXXXX")"
ctr=""
cleanup() {
    [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
    if [ "$keep" -eq 1 ]; then rm -rf "$work/wheels" "$work/pip"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The wheelhouse: this checkout as a wheel, the llama.cpp wheel, and every dependency of clawd-edge[server] for
# CPython 3.11 (bookworm's) on the image's platform. pip does not expand an explicit --platform to older
# manylinux levels, so every one glibc 2.36 runs is listed (as in scripts/qemu-run.sh).
echo "collecting wheels for $arch (clawd-edge[server] $version, $(basename "$wheel"))" >&2
mkdir -p "$work/wheels" "$work/pip"
"$py" -m pip wheel -q --no-deps -w "$work/wheels" "$src" >/dev/null
cp "$wheel" "$work/wheels/"
platforms=(--platform "linux_$machine" --platform "manylinux2014_$machine")
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$machine"); done
target=(--only-binary=:all: --python-version 3.11 --implementation cp "${platforms[@]}")
project_wheel="$(echo "$work"/wheels/clawd_edge-*.whl)"
"$py" -m pip download -q -d "$work/wheels" "${target[@]}" "$work/wheels/$(basename "$wheel")" \
    "${project_wheel}[server]" >&2
# pip itself runs from its wheel inside the root (python pip.whl/pip install ...), so the venv gets no pip and
# the image needs neither python3-pip nor python3-venv.
"$py" -m pip download -q --no-deps -d "$work/pip" "${target[@]}" pip >&2

# Run inside the new root by mmdebstrap (as `--customize-hook`, $1 = the root) after the packages are installed.
cat > "$work/customize.sh" <<'HOOK'
#!/bin/sh
set -eu
root="$1"
# The host's pip settings (find-links, index URLs) name host paths: pip inside the root uses only --find-links.
for var in $(env | sed -n 's/^\(PIP_[A-Z_]*\)=.*/\1/p'); do unset "$var"; done
# The daemon's user: fixed uid/gid so a volume's owner is the same on every host and image version.
chroot "$root" groupadd --gid 10001 clawd
chroot "$root" useradd --uid 10001 --gid 10001 --home-dir /var/lib/clawd-edge --no-create-home \
    --shell /usr/sbin/nologin clawd
mkdir -p "$root/var/lib/clawd-edge/models" "$root/etc/clawd-edge"
chroot "$root" chown -R clawd:clawd /var/lib/clawd-edge
cat > "$root/etc/clawd-edge/config.yaml" <<'YAML'
# clawd-edge in a container (README "Container image"). Models live on the /var/lib/clawd-edge volume; mount a
# config over this file or pass flags after the image name (`... clawd-edge:VERSION --model /models/x.gguf`).
model_path: smollm2-135m-instruct-q4_1
models_dir: /var/lib/clawd-edge/models
server:
  port: 8080
YAML
# The venv without pip, then pip from its wheel: offline (--no-index), only the wheels collected on the host.
mkdir -p "$root/tmp/wheels" "$root/tmp/pip"
cp "$WORK"/wheels/*.whl "$root/tmp/wheels/"
cp "$WORK"/pip/*.whl "$root/tmp/pip/"
chroot "$root" python3 -m venv --without-pip /opt/clawd-edge/venv
pip_whl="$(cd "$root/tmp/pip" && echo pip-*.whl)"
chroot "$root" /opt/clawd-edge/venv/bin/python "/tmp/pip/$pip_whl/pip" install -q --no-index --no-cache-dir \
    --disable-pip-version-check --find-links /tmp/wheels "/tmp/wheels/$LLAMA_WHEEL" "/tmp/wheels/$PROJECT_WHEEL[server]"
rm -rf "$root/tmp/wheels" "$root/tmp/pip"
# llama-cpp-python's wheel also ships llama.cpp's headers and a second copy of its libraries for CMake users
# (site-packages/include, site-packages/lib: 38 MB); the package loads llama_cpp/lib's copy.
rm -rf "$root"/opt/clawd-edge/venv/lib/python3.11/site-packages/include \
       "$root"/opt/clawd-edge/venv/lib/python3.11/site-packages/lib
# Nothing in the image needs these at run time: apt's downloads and lists, logs of the build.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/log/apt/*
HOOK
chmod +x "$work/customize.sh"

echo "building the Debian bookworm $arch root file system (mmdebstrap, mirror $mirror)" >&2
# minbase: Essential packages and apt. python3 (3.11), ca-certificates for `models pull` over HTTPS, libgomp1
# for llama.cpp's OpenMP threads. No documentation, manual pages or translations (copyright files stay). The
# merged-usr hook lays out /bin -> usr/bin itself: otherwise the usrmerge package and with it perl (30 MB) come in.
WORK="$work" LLAMA_WHEEL="$(basename "$wheel")" PROJECT_WHEEL="$(basename "$project_wheel")" \
mmdebstrap --quiet --mode=root --variant=minbase --arch="$arch" --format=tar \
    --include=python3,ca-certificates,libgomp1 --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="$work/customize.sh \"\$1\"" \
    bookworm "$work/rootfs.tar" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" >"$work/mmdebstrap.log" 2>&1 || {
    tail -40 "$work/mmdebstrap.log" >&2; echo "error: mmdebstrap failed (its log above)" >&2; exit 1; }

echo "committing $tag (buildah)" >&2
export BUILDAH_FORMAT=docker  # HEALTHCHECK exists only in the Docker image format
# The image this tag named before: removed once replaced, so repeated CI builds do not pile up unnamed images.
previous="$(buildah images --quiet --no-trunc "$tag" 2>/dev/null || true)"
ctr="$(buildah from --arch "$arch" scratch)"
buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
# The health check uses the venv's Python (the image has no curl); a 503 (loading, failed) raises, so it fails.
# buildah splits the command like a shell would: the Python code is one single-quoted word.
health="CMD /opt/clawd-edge/venv/bin/python -c 'import urllib.request; \
urllib.request.urlopen(\"http://127.0.0.1:8080/health\", timeout=4)'"
buildah config --arch "$arch" --os linux \
    --user clawd --workingdir /var/lib/clawd-edge \
    --env PATH=/opt/clawd-edge/venv/bin:/usr/local/bin:/usr/bin:/bin \
    --env HOME=/var/lib/clawd-edge --env CLAWD_EDGE_CONFIG=/etc/clawd-edge/config.yaml \
    --env PYTHONUNBUFFERED=1 \
    --entrypoint '["clawd-edge", "serve", "--host", "0.0.0.0"]' \
    --port 8080 --volume /var/lib/clawd-edge --stop-signal SIGTERM \
    --healthcheck "$health" \
    --healthcheck-interval 30s --healthcheck-timeout 5s --healthcheck-start-period 60s --healthcheck-retries 3 \
    --label org.opencontainers.image.title=clawd-edge \
    --label org.opencontainers.image.version="$version" \
    --label io.clawd-edge.profile="$profile" \
    --label io.clawd-edge.llama-cpp-python="$(basename "$wheel")" \
    --label io.clawd-edge.source="$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --label io.clawd-edge.inputs="$inputs" \
    "$ctr"
image_id="$(buildah commit --quiet --format docker --rm "$ctr" "$tag")"
ctr=""
if [ -n "$previous" ] && [ "$previous" != "$image_id" ] && [ "$previous" != "sha256:$image_id" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true  # still used by a container: kept
fi
[ "$keep" -eq 0 ] || echo "root file system: $work/rootfs.tar" >&2
echo "built $tag ($arch, profile $profile) in $(( $(date +%s) - started )) s" >&2
image_size
