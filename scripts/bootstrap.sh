#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for clawd-edge: system packages, a venv in .venv, the package itself.
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. scripts/bootstrap.sh dev   (default: no extras)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

apt_packages=(python3-venv python3-dev build-essential cmake git)
if [[ "$extras" == *dev* || "$extras" == *all* || "$extras" == *voice* || "$extras" == *ocr* ]]; then
  apt_packages+=(libportaudio2 libasound2-plugins alsa-utils espeak-ng sox tesseract-ocr tesseract-ocr-eng
                 tesseract-ocr-kor fonts-dejavu-core systemd)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing system packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
spec="."
[[ -n "$extras" ]] && spec=".[$extras]"
# llama-cpp-python builds from source the first time (about 5 minutes on 2 cores); pip caches the wheel.
.venv/bin/python -m pip install -q -e "$spec"
