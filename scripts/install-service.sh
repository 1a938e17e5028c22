#!/usr/bin/env bash
# Install clawd-edge as a hardened systemd service: venv under /opt/clawd-edge, config in /etc/clawd-edge,
# models under the service's StateDirectory (/var/lib/clawd-edge), unit in /etc/systemd/system.
#
# Usage: sudo scripts/install-service.sh [--root DIR] [--python PY] [--model NAME] [--no-venv] [--no-pull]
#                                        [--no-enable] [--wheel FILE | --profile P]
#   --root DIR   install into DIR instead of / (packaging, tests); implies --no-pull --no-enable
#   --python PY  interpreter for the venv (default: python3)
#   --wheel FILE a llama-cpp-python wheel made by scripts/build-wheel.sh (e.g. cross-built for a Raspberry Pi:
#                building llama.cpp on the Pi itself takes long); default: build one for this CPU's profile
#   --profile P  the build profile when building here (default: the best one this CPU runs)
#   --model NAME registry model to pre-pull and configure (default: the registry default)
#   --no-venv    do not create/refresh the venv (it must exist already, or be provided by a package)
#   --no-pull    do not download the model now (the unit blocks network access apart from localhost)
#   --no-enable  do not run systemctl daemon-reload / enable --now
# Re-running upgrades the venv and the unit; an existing /etc/clawd-edge/config.yaml is never overwritten.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
source "$src/scripts/lib.sh"
root=""
python="python3"
model=""
venv=1
pull=1
enable=1
wheel=""
profile=""
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="${2:?--root needs a directory}"; enable=0; pull=0; shift 2 ;;
        --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
        --model) model="${2:?--model needs a name}"; shift 2 ;;
        --no-venv) venv=0; shift ;;
        --no-pull) pull=0; shift ;;
        --no-enable) enable=0; shift ;;
        --wheel) wheel="${2:?--wheel needs a file}"; shift 2 ;;
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    echo "error: run as root (or use --root DIR to stage an install)" >&2
    exit 2
fi

prefix="$root/opt/clawd-edge"
etc="$root/etc/clawd-edge"
unit_dir="$root/etc/systemd/system"
state="$root/var/lib/clawd-edge"
clawd="$prefix/venv/bin/clawd-edge"

if [ "$venv" -eq 1 ]; then
    # llama.cpp's CPU backend uses OpenMP: Raspberry Pi OS Lite may lack the runtime.
    if [ -z "$root" ] && ! ldconfig -p 2>/dev/null | grep -q 'libgomp.so.1'; then
        apt-get install -y -qq --no-install-recommends libgomp1 >/dev/null
    fi
    echo "creating venv $prefix/venv"
    "$python" -m venv "$prefix/venv"
    "$prefix/venv/bin/pip" install --quiet --upgrade pip
    # llama.cpp for a named CPU profile, never pip's -march=native build (see README "Build profiles").
    if [ -z "$wheel" ]; then
        wheel="$(PYTHON="$python" "$src/scripts/build-wheel.sh" ${profile:+--profile "$profile"} \
                 --out "$CLAWD_WHEELHOUSE" | tail -1)"
    fi
    [ -f "$wheel" ] || { echo "error: no such wheel: $wheel" >&2; exit 2; }
    "$prefix/venv/bin/pip" install --quiet "$wheel"
    "$prefix/venv/bin/pip" install --quiet "$src[server]"
fi

install -d -m 0755 "$etc" "$unit_dir"
install -m 0644 "$src/systemd/clawd-edge.service" "$unit_dir/clawd-edge.service"

if [ ! -e "$etc/config.yaml" ]; then
    tmp="$(mktemp)"
    cat > "$tmp" <<EOF
# clawd-edge daemon settings (see README "Configuration"); \`clawd-edge config check\` validates this file.
model_path: ${model:-smollm2-135m-instruct-q4_1}
models_dir: /var/lib/clawd-edge/models
threads: $(nproc 2>/dev/null || echo 2)
# parallel, max_sequence_length, context and kv_cache_type are sized by the memory planner from the
# service's MemoryMax unless set here.
keep_alive: 300
server:
  host: 127.0.0.1
  port: 8080
  # api_key: change-me        # then every route but /health needs 'Authorization: Bearer change-me'
  max_queue: 32
  max_tokens: 2048
  shutdown_timeout: 10
EOF
    install -m 0644 "$tmp" "$etc/config.yaml"
    rm -f "$tmp"
    echo "wrote $etc/config.yaml"
else
    echo "kept existing $etc/config.yaml"
fi

if [ -x "$clawd" ]; then
    "$clawd" config check "$etc/config.yaml"
fi

if [ "$pull" -eq 1 ]; then
    # Pulled as root into the state directory; systemd hands it to the dynamic user on first start.
    install -d -m 0755 "$state/models"
    "$clawd" --config "$etc/config.yaml" models pull "${model:-smollm2-135m-instruct-q4_1}" >/dev/null
fi

if command -v systemd-analyze >/dev/null 2>&1 && [ -z "$root" ]; then
    systemd-analyze verify "$unit_dir/clawd-edge.service"
fi

if [ "$enable" -eq 1 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable --now clawd-edge.service
        echo "clawd-edge is running: curl -s http://127.0.0.1:8080/health ; journalctl -u clawd-edge -f"
    else
        echo "systemd is not running here; start later with: systemctl enable --now clawd-edge"
    fi
else
    echo "installed under ${root:-/}; enable with: systemctl daemon-reload && systemctl enable --now clawd-edge"
fi
