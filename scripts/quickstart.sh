#!/usr/bin/env bash
# The main job on a fresh machine: set up (with the server extra, for `clawd-edge serve` next), fetch the
# embedded default model, answer a prompt.
# Usage: scripts/quickstart.sh ["your prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh server
prompt="${1:-What is the capital of France? Answer in one sentence.}"
echo "fetching the default model (98 MB, checked against its sha256)" >&2
.venv/bin/clawd-edge models pull smollm2-135m-instruct-q4_1 >/dev/null
.venv/bin/clawd-edge chat --temperature 0 --max-tokens 64 "$prompt"
