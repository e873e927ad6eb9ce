#!/usr/bin/env bash
# rr on one GPU, in one run of under 10 minutes (H200): written by `cargo xtask gpu-bundle`.
# Needs Python torch 2.11.0 (any CUDA build of the same ABI); no cargo. Results go to $OUT
# (default ./results): summary.md and results.json for docs/perf/, a log per step.
#
#  1. smoke: surgery, data pack, train, score, generate on a stories260K retrofit (CUDA)
#  2. CUDA graphs: `rr generate --cuda-graphs on` against `off`: same text? tokens/s of each
#  3. data parallel: `rr train` at world 1 (NCCL on CUDA) and, with WORLDS="1 2 ...", more
#     local ranks: tokens/s and the trainer's communication time per step (comm_s)
#  4. serving: `rr bench-serve` (1, 4, 16 clients against sequential `rr generate`)
#  5. benchmarks: `rr bench recurrence` beside bench/recurrent_ref.py (eager, compile)
#
# A failing step is recorded and the next one runs. BUDGET (seconds, default 570) bounds the
# whole run: the benchmarks get what is left. DEVICE=cpu SHAPE=tiny LAYERS=1,2,1 BATCH=2
# SEQ=32 REPEATS=1 MODES=eager RECURRENCES=2 BACKPROP=1 GEN_PROMPT=8 GEN_TOKENS=4 is the dry
# run without a GPU (Gloo instead of NCCL, no CUDA graphs).
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
TORCH_LIB="$("$PY" -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OUT="${OUT:-$HERE/results}"
DEVICE="${DEVICE:-cuda}"
SHAPE="${SHAPE:-llama3.2-1b}"
BUDGET="${BUDGET:-570}"
STARTED=$(date +%s)
RR="$HERE/rr"
WORK="$OUT/work"
mkdir -p "$OUT/logs" "$WORK"
: > "$OUT/steps.jsonl"
printf '# rr GPU run\n\n| step | exit | seconds |\n|---|---|---|\n' > "$OUT/summary.md"

left() { echo $(( BUDGET - ($(date +%s) - STARTED) )); }

# step NAME CMD...: runs CMD with its output in logs/NAME.log, records exit code and time.
step() {
  local name="$1"; shift
  local t0=$(date +%s.%N) rc
  "$@" > "$OUT/logs/$name.log" 2>&1; rc=$?
  local s=$("$PY" -c "import sys;print(round(float(sys.argv[2])-float(sys.argv[1]),2))" "$t0" "$(date +%s.%N)")
  echo "{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $s}" >> "$OUT/steps.jsonl"
  echo "| $name | $rc | $s |" >> "$OUT/summary.md"
  [ $rc -eq 0 ] || echo "step $name failed ($rc): see logs/$name.log" >&2
  return $rc
}

"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")' | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/env.txt" 2>/dev/null || true

recipe() { # recipe STEPS: the smoke and data-parallel job on the packed TinyStories
  cat <<EOF
name = "gpu-smoke"
seed = 7
[model]
init = "$WORK/rec"
[data]
train = [{ path = "$WORK/packed" }]
[training]
steps = $1
micro_batch_size = 8
grad_accum = 1
device = "$DEVICE"
log_every = 1
checkpoint_every = $1
eval_every = $1
eval_recurrences = [4]
eval_rows = 4
[curriculum.mean]
shape = "linear"
target = 4
ramp_fraction = 0.5
[lr]
kind = "warmup_stable_decay"
peak = 1e-3
warmup_steps = 2
decay_fraction = 0.5
floor_ratio = 0.1
[optimizer]
kind = "adamw"
EOF
}

SMOKE="$HERE/smoke"
if [ -d "$SMOKE" ]; then
  # 1. Every command on CUDA.
  step surgery "$RR" surgery --model "$SMOKE/stories260K" --layers 1,3,1 --out "$WORK/rec"
  step data-pack "$RR" data pack --tokenizer "$WORK/rec" --input "$SMOKE/stories.txt" \
    --format text --seq-len 64 --out "$WORK/packed" --heldout-fraction 0.05
  recipe 20 > "$WORK/smoke.toml"
  step train "$RR" train --config "$WORK/smoke.toml" --run-dir "$WORK/train"
  step score "$RR" score --model "$WORK/train/checkpoints/step-000020" --device "$DEVICE" \
    --text-file "$SMOKE/stories.txt" --max-tokens 512 --recurrence 4 --json
  # 2. CUDA graphs against eager decoding, same greedy settings.
  gen() { "$RR" generate --model "$WORK/rec" --device "$DEVICE" --recurrence 8 --greedy \
    --prompt "Once upon a time, there was a little" --max-new-tokens 200 --cuda-graphs "$1"; }
  step generate-eager gen off
  if [ "$DEVICE" = cuda ]; then step generate-cuda-graphs gen on; fi
  # 3. Data parallel: NCCL (CUDA) or Gloo (CPU) from world 1 on.
  recipe 30 > "$WORK/dp.toml"
  for w in ${WORLDS:-1}; do
    if [ "$w" = 1 ]; then
      step "dp-world-1" env WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 \
        MASTER_PORT=$((29500 + RANDOM % 1000)) "$RR" train --config "$WORK/dp.toml" --run-dir "$WORK/dp-w1"
    else
      step "dp-world-$w" "$RR" train --config "$WORK/dp.toml" --run-dir "$WORK/dp-w$w" --nproc-per-node "$w"
    fi
  done
  # 4. rr serve under load, the same benchmark as `cargo xtask bench-serve`.
  step bench-serve timeout 120 "$RR" bench-serve --model "$WORK/rec" --device "$DEVICE" \
    --clients "${SERVE_CLIENTS:-1,4,16}" --max-tokens 64 --out "$OUT/serve"
else
  echo "no smoke/ folder (stories260K): smoke, CUDA-graph and data-parallel steps skipped" | tee -a "$OUT/summary.md"
fi

# 5. The benchmarks, in what the budget leaves.
for layers in ${LAYERS:-4,8,4 4,6,4}; do
  d="$OUT/$SHAPE-${layers//,/-}"
  mkdir -p "$d"
  remaining=$(left)
  if [ "$remaining" -lt 60 ]; then echo "budget spent: bench $layers skipped" | tee -a "$OUT/summary.md"; continue; fi
  step "bench-rr-${layers//,/-}" timeout "$remaining" "$RR" bench recurrence --device "$DEVICE" \
    --shape "$SHAPE" --layers "$layers" \
    --recurrences "${RECURRENCES:-4,8,32}" --backprop "${BACKPROP:-4,8}" \
    --batch "${BATCH:-8}" --seq "${SEQ:-1024}" \
    --gen-prompt "${GEN_PROMPT:-512}" --gen-tokens "${GEN_TOKENS:-64}" --warmup 2 --repeats "${REPEATS:-5}" --out "$d/rr.json" || continue
  remaining=$(left)
  if [ "$remaining" -gt 30 ]; then
    step "bench-pytorch-${layers//,/-}" timeout "$remaining" "$PY" "$HERE/recurrent_ref.py" \
      --spec "$d/rr.json" --out "$d/pytorch.json" --modes "${MODES:-eager,compile}"
  fi
  if [ -f "$d/pytorch.json" ]; then
    step "bench-report-${layers//,/-}" "$RR" bench report "$d/rr.json" --reference "$d/pytorch.json" --out "$d"
  else
    step "bench-report-${layers//,/-}" "$RR" bench report "$d/rr.json" --out "$d"
  fi
done

# results.json: the numbers the docs quote, from the logs and the runs' own metrics.
"$PY" - "$OUT" "$WORK" <<'EOF'
import json, os, re, statistics, sys
out, work = sys.argv[1], sys.argv[2]
def text(name):
    p = os.path.join(out, "logs", name + ".log")
    return open(p).read() if os.path.exists(p) else None
def generation(name):
    t = text(name)
    if t is None:
        return None
    m = re.search(r"(\d+) tokens in ([\d.]+) s \(([\d.]+) tokens/s\)", t)
    return {"tokens": int(m.group(1)), "seconds": float(m.group(2)), "tokens_per_s": float(m.group(3))} if m else {"error": t[-500:]}, t
res = {"steps": [json.loads(l) for l in open(os.path.join(out, "steps.jsonl"))]}
eager, graphs = generation("generate-eager"), generation("generate-cuda-graphs")
if eager:
    res["generate_eager"] = eager[0]
if graphs:
    res["generate_cuda_graphs"] = graphs[0]
if eager and graphs:
    strip = lambda t: "\n".join(l for l in t.splitlines() if "tokens/s" not in l and "core iterations" not in l)
    res["cuda_graphs_same_text"] = strip(eager[1]) == strip(graphs[1])
dp = {}
for d in sorted(os.listdir(work)) if os.path.isdir(work) else []:
    m = os.path.join(work, d, "metrics.jsonl")
    if d.startswith("dp-w") and os.path.exists(m):
        lines = [json.loads(l) for l in open(m) if '"tokens_per_s"' in l]
        lines = lines[1:] or lines  # the first window holds the held-out evaluation
        med = lambda k: statistics.median(l[k] for l in lines if l.get(k) is not None) if any(l.get(k) is not None for l in lines) else None
        dp[d] = {"steps": len(lines), "tokens_per_s": med("tokens_per_s"), "comm_s_per_step": med("comm_s")}
res["data_parallel"] = dp
serve = os.path.join(out, "serve", "serve.json")
if os.path.exists(serve):
    res["serve"] = json.load(open(serve))
json.dump(res, open(os.path.join(out, "results.json"), "w"), indent=1)
with open(os.path.join(out, "summary.md"), "a") as f:
    f.write("\n```json\n" + json.dumps({k: v for k, v in res.items() if k != "steps"}, indent=1) + "\n```\n")
print(json.dumps({k: v for k, v in res.items() if k != "steps"}, indent=1))
EOF
echo "results in $OUT (summary.md, results.json, logs/)"
