#!/usr/bin/env bash
# rr eval and lm-evaluation-harness (through transformers) on the same weights and the same
# items, side by side: docs/EVAL_PARITY.md is made by this script.
#
#   bash scripts/setup_lm_eval.sh                     # once: .venv-lm-eval
#   cargo xtask build                                 # target/debug/rr (optimised)
#   bash scripts/lm_eval_side_by_side.sh MODEL_DIR OUT_DIR [LIMIT]
#
# LIMIT (optional) keeps the first LIMIT items of every task on both sides; without it the full
# sets run (GSM8K 1,319, ARC-Easy 2,376, ARC-Challenge 1,172, HellaSwag 10,042). Both sides run
# in fp32 with BOS prepended and 1-shot GSM8K / 0-shot multiple choice, as the paper's authors.
# The data directory is $RR_SHARED_DATA (default ../shared/data). The harness runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "$1")
out=$(realpath -m "$2")
limit=${3:-}
data=$(realpath "${RR_SHARED_DATA:-../shared/data}")
rr=${RR:-target/debug/rr}
py=.venv-lm-eval/bin/python
[ -x "$py" ] || { echo "error: .venv-lm-eval missing; run scripts/setup_lm_eval.sh" >&2; exit 1; }
[ -x "$rr" ] || { echo "error: $rr missing; run cargo xtask build" >&2; exit 1; }

mkdir -p "$out/tasks" "$out/lm-eval" "$out/rr"
for f in scripts/lm_eval_tasks/*.yaml; do
    sed -e "s#@DATA@#$data#g" -e "s#@WORK@#$out/tasks#g" "$f" > "$out/tasks/$(basename "$f")"
done
cp scripts/lm_eval_tasks/utils.py "$out/tasks/"
"$py" scripts/lm_eval_tasks/hellaswag_to_jsonl.py "$data/mc/hellaswag_val_full.txt.bz2" \
    "$out/tasks/hellaswag_val_full.jsonl"

limit_args=()
[ -n "$limit" ] && limit_args=(--limit "$limit")
threads=$(nproc)
# rr task name : harness task name (see crates/rr-eval/src/tasks/mod.rs)
pairs="gsm8k:rr_gsm8k_cot_sean arc_easy:rr_arc_easy arc_challenge:rr_arc_challenge hellaswag:rr_hellaswag"
for pair in $pairs; do
    rr_task=${pair%%:*}
    h_task=${pair##*:}
    if [ ! -e "$out/lm-eval/$h_task.done" ]; then
        HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=$threads \
            .venv-lm-eval/bin/lm_eval --model hf \
            --model_args "pretrained=$model,dtype=float32,add_bos_token=True" \
            --include_path "$out/tasks" --tasks "$h_task" --batch_size 16 --device cpu \
            --gen_kwargs max_gen_toks=256 --log_samples --output_path "$out/lm-eval/$h_task" \
            "${limit_args[@]}"
        touch "$out/lm-eval/$h_task.done"
    fi
    if [ ! -e "$out/rr/$rr_task.json" ]; then
        "$rr" eval --model "$model" --device cpu --dtype f32 --tasks "$rr_task" \
            --data "$data" --max-new-tokens 256 --batch-size 16 --log-samples \
            --out "$out/rr/$rr_task.json" "${limit_args[@]}"
    fi
done
"$py" scripts/lm_eval_tasks/compare.py "$out" $pairs > "$out/side_by_side.md"
cat "$out/side_by_side.md"
