#!/usr/bin/env bash
# lm-evaluation-harness's `hf` model on an rr recurrent checkpoint through the Python files rr
# writes beside it (trust_remote_code=True, mean_recurrence=R in model_args), against
# `rr eval --recurrences R` on the same ARC-Easy items (the local copy; task YAML
# scripts/lm_eval_tasks/rr_arc_easy.yaml), side by side (scripts/lm_eval_tasks/compare.py).
#
#   bash scripts/setup_lm_eval.sh          # once: .venv-lm-eval (or set PY to its python)
#   cargo xtask build
#   bash scripts/lm_eval_remote_code.sh RECURRENT_DIR OUT_DIR [LIMIT] [R]
#
# Both sides draw their own random initial state (rr: keyed by position; transformers: the
# authors' trunc_normal draw), so per-item log-likelihoods differ in the last digits and the
# accuracies agree within the harness's standard error, not bit for bit.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "$1")
out=$(realpath -m "$2")
limit=${3:-100}
r=${4:-4}
data=$(realpath "${RR_SHARED_DATA:-../shared/data}")
rr=${RR:-target/debug/rr}
py=${PY:-.venv-lm-eval/bin/python}
[ -x "$py" ] || { echo "error: $py missing; run scripts/setup_lm_eval.sh" >&2; exit 1; }
[ -x "$rr" ] || { echo "error: $rr missing; run cargo xtask build" >&2; exit 1; }
[ -e "$model/raven_modeling_minimal.py" ] || { echo "error: $model: no raven_modeling_minimal.py (not an rr recurrent checkpoint)" >&2; exit 1; }

mkdir -p "$out/tasks" "$out/lm-eval" "$out/rr"
sed -e "s#@DATA@#$data#g" scripts/lm_eval_tasks/rr_arc_easy.yaml > "$out/tasks/rr_arc_easy.yaml"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=$(nproc) \
    "$py" -m lm_eval --model hf \
    --model_args "pretrained=$model,trust_remote_code=True,mean_recurrence=$r,dtype=float32,add_bos_token=True" \
    --include_path "$out/tasks" --tasks rr_arc_easy --batch_size 16 --device cpu \
    --log_samples --output_path "$out/lm-eval/rr_arc_easy" --limit "$limit"
"$rr" eval --model "$model" --device cpu --dtype f32 --tasks arc_easy --recurrences "$r" \
    --data "$data" --batch-size 16 --log-samples --out "$out/rr/arc_easy.json" --limit "$limit"
"$py" scripts/lm_eval_tasks/compare.py "$out" arc_easy:rr_arc_easy | tee "$out/side_by_side.md"
