#!/usr/bin/env bash
# The main job on a fresh machine: set up, fetch the embedded default model, answer a prompt.
# Usage: scripts/quickstart.sh ["your prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
prompt="${1:-What is the capital of France? Answer in one sentence.}"
.venv/bin/clawd-edge models pull smollm2-135m-instruct-q4_1 >/dev/null
.venv/bin/clawd-edge chat --temperature 0 --max-tokens 64 "$prompt"
