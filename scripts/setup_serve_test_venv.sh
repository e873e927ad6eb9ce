#!/usr/bin/env bash
# Creates .venv-serve-test (git-ignored) with the official `openai` Python client at a pinned
# version. The rr-serve tests drive `rr serve` through it; rr itself never needs it.
#   bash scripts/setup_serve_test_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-serve-test
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet -r scripts/requirements-serve-test.txt
"$venv/bin/python" -c 'import openai; print("openai", openai.__version__)'
