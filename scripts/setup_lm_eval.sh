#!/usr/bin/env bash
# Creates .venv-lm-eval (git-ignored) with lm-evaluation-harness and transformers at pinned
# versions. Used by scripts/lm_eval_side_by_side.sh; rr itself never needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-lm-eval
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -r scripts/requirements-lm-eval.txt
"$venv/bin/python" -c 'import lm_eval, transformers, torch; print("lm-eval", lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?", "transformers", transformers.__version__, "torch", torch.__version__)'
