#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for clawd-edge: system packages, a venv in .venv, llama.cpp built for this
# CPU's profile (never -march=native), the package itself.
# Usage: scripts/bootstrap.sh [--profile P] [EXTRAS]   e.g. scripts/bootstrap.sh dev   (default: no extras)
#   --profile P   build llama.cpp for profile P (`python3 -m edge_runtime.cpu list`); default: the best one this
#                 CPU runs; also $CLAWD_EDGE_PROFILE
# Wheels are kept in $CLAWD_EDGE_WHEELHOUSE (default ~/.cache/clawd-edge/wheels), one per profile and version.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
profile="${CLAWD_EDGE_PROFILE:-}"
extras=""
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        -*) echo "error: unknown option $1" >&2; exit 2 ;;
        *) extras="$1"; shift ;;
    esac
done

apt_packages=(python3-venv python3-dev build-essential cmake git unzip)
if [[ "$extras" == *dev* || "$extras" == *all* || "$extras" == *voice* || "$extras" == *ocr* ]]; then
  apt_packages+=(libportaudio2 libasound2-plugins alsa-utils espeak-ng sox tesseract-ocr tesseract-ocr-eng
                 tesseract-ocr-kor fonts-dejavu-core systemd)
fi
if [[ "$extras" == *dev* && "$(uname -m)" == x86_64 ]]; then
  # the aarch64 tests on x86: cross compiler, user-mode emulator, and the tool that unpacks an arm64 Debian sysroot
  # (on an ARM board the whole suite runs natively instead)
  apt_packages+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static mmdebstrap)
fi
if [[ "$extras" == *dev* ]]; then
  apt_packages+=(prometheus)  # promtool and a real Prometheus for the monitoring tests
  apt_packages+=(chromium)  # the kiosk screen tests: Playwright drives Debian's browser (no browser download)
  apt_packages+=(haproxy keepalived iproute2)  # the fleet tests: a real balancer, VRRP in network namespaces
  # the container image (scripts/build-image.sh: a Debian root by mmdebstrap, committed by buildah) and its test
  # under root podman; runc because crun 1.8 refuses hosts with a hybrid cgroup v1/v2 layout
  apt_packages+=(mmdebstrap buildah podman runc uidmap fuse-overlayfs slirp4netns shellcheck)
fi
apt_install "${apt_packages[@]}"

python="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# llama.cpp for this CPU: built once per profile into the wheelhouse (about 6 minutes on 2 cores), then reused.
# Installing the wheel replaces a llama-cpp-python built for another profile (its version label differs).
if [ -z "$profile" ]; then
    profile="$(PYTHONPATH=. .venv/bin/python -m edge_runtime.cpu detect)"
fi
wheel="$(PYTHON=.venv/bin/python scripts/build-wheel.sh --profile "$profile" --out "$CLAWD_WHEELHOUSE" | tail -1)"
echo "installing llama-cpp-python ($profile) and clawd-edge${extras:+[$extras]} into .venv" >&2
.venv/bin/python -m pip install -q "$wheel"
spec="."
[[ -n "$extras" ]] && spec=".[$extras]"
.venv/bin/python -m pip install -q -e "$spec"
echo "clawd-edge installed in .venv (llama.cpp profile $profile)" >&2
