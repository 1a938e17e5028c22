# Sourced by the install scripts: where built wheels are kept, and installing missing Debian packages.

# One llama-cpp-python wheel per build profile and version (scripts/build-wheel.sh names them).
CLAWD_WHEELHOUSE="${CLAWD_EDGE_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/clawd-edge/wheels}"

# apt_install PKG...: install the packages that are not installed yet (through sudo when not root).
apt_install() {
    local pkg sudo="" missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing system packages: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
