#!/usr/bin/env bash
# bertkit on one CUDA GPU, checked and measured in one command (on an H200 about 9 minutes; its stages' time limits
# add up to 10); every result is a JSON file in one folder.
#   bash benchmarks/gpu.sh [RESULTS_DIR]           # default benchmarks/results
#   DRY_RUN=1 bash benchmarks/gpu.sh [RESULTS_DIR] # the same stages on the CPU at tiny sizes: checks the script
#                                                  # (default: a new temporary folder, never benchmarks/results)
# Stages (each under its own time limit; a failed stage is reported and the others still run; exit 1 if any failed):
#   checks   benchmarks/cuda_checks.py: fast path = plain path, = transformers (fp32, bf16), bf16 training tracks
#            fp32, fine-tuning parity, resume exactness                                  -> cuda_checks.json
#   speed    benchmarks/throughput.py: BERT-base pre-training at sequence 128 and 512 and tiny/mini/small, bf16,
#            inference of MiniLM's shape and BERT-base at batch 1 and 128, each against transformers (sdpa)
#                                                                                         -> throughput_cuda.json
#   profile  benchmarks/gpu_profile.py: where a BERT-base and a `small` pre-training step's time goes, bertkit and
#            transformers: GPU busy time, kernel launches, kernels by kind       -> gpu_profile[_small]_cuda.json
#   budget   benchmarks/pretrain_zh_budget.py: a Chinese `small` pre-trained for 4 minutes on pretrain_zh, then
#            fine-tuned on ChnSentiCorp and CLUENER2020 against random init              -> pretrain_zh_budget_cuda.json
# Needs the shared data ($BERTKIT_DATA, else ../shared/data) and a Python with torch and transformers. bertkit runs
# from this checkout's src/ when it is not installed (a GPU machine may have no package index to install from).
# $WORK (default: a new temporary folder) holds the budget run's data and models; $LOGS gets its logs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -n "${DRY_RUN:-}" ]; then default_results=$(mktemp -d); else default_results=benchmarks/results; fi
RESULTS=$(mkdir -p "${1:-$default_results}" && cd "${1:-$default_results}" && pwd) || exit 1
if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT  # a folder of its own making: removed at the end (the logs are copied out first)
fi
$PY -c "import bertkit" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

failed=()
stage() {  # stage NAME SECONDS COMMAND...: run COMMAND under a time limit, note a failure, go on
  local name=$1 limit=$(($2 * SCALE)) start=$SECONDS rc
  shift 2
  echo "== $name (at most ${limit} s)"
  timeout -k 10 "$limit" "$@"
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

if [ -n "${DRY_RUN:-}" ]; then
  DEV=cpu SCALE=4 QUICK=--quick BASE=mini SMALL=tiny BATCH=8 LONG_BATCH=2 ROUNDS=1 INFER_BATCHES=1,8 INFER_MODELS=minilm
  BUDGET=(--quick --workers 2)
else
  DEV=cuda SCALE=1 QUICK= BASE=base SMALL=tiny,mini,small BATCH=128 LONG_BATCH=32 ROUNDS=5 INFER_BATCHES=1,128 INFER_MODELS=minilm,base
  BUDGET=(--model small --minutes 4 --calibrate "$RESULTS/throughput_cuda.json")
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
fi
$PY -c "import torch, transformers, bertkit; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'transformers', transformers.__version__, 'bertkit', bertkit.__file__)"

stage checks 100 $PY benchmarks/cuda_checks.py --device $DEV $QUICK --out "$RESULTS/cuda_checks.json"
TP=(benchmarks/throughput.py --device $DEV --precision bf16 --optimizers fused --rounds $ROUNDS
    --out "$RESULTS/throughput_cuda.json")
stage speed_base_128 35 $PY "${TP[@]}" --only pretrain --presets $BASE --vocab 21128,30522 --batch-size $BATCH
stage speed_base_512 30 $PY "${TP[@]}" --only pretrain --presets $BASE --vocab 30522 --batch-size $LONG_BATCH \
  --seq-len 512
stage speed_small_infer 60 $PY "${TP[@]}" --only pretrain,infer --presets $SMALL --vocab 21128 \
  --batch-size $BATCH --infer-batches $INFER_BATCHES --infer-models $INFER_MODELS
stage profile 25 $PY benchmarks/gpu_profile.py --device $DEV --preset $BASE --batch-size $BATCH \
  --out "$RESULTS/gpu_profile_cuda.json"
stage profile_small 20 $PY benchmarks/gpu_profile.py --device $DEV --preset ${SMALL##*,} --vocab 21128 \
  --batch-size $BATCH --out "$RESULTS/gpu_profile_small_cuda.json"
stage budget 330 $PY benchmarks/pretrain_zh_budget.py --device $DEV "${BUDGET[@]}" --out "$WORK/budget" \
  --results "$RESULTS/pretrain_zh_budget_cuda.json"
# The budget run's own logs (pre-training, each fine-tuning run) in one file, in $LOGS (default: the results folder).
LOGS=${LOGS:-$RESULTS}
tar -czf "$LOGS/pretrain_zh_budget_logs.tar.gz" -C "$WORK/budget" pretrain.log logs 2>/dev/null &&
  echo "logs: $LOGS/pretrain_zh_budget_logs.tar.gz"

echo "results in $RESULTS: $(cd "$RESULTS" && ls | tr '\n' ' ')"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed stages: ${failed[*]}"
  exit 1
fi
echo "every stage passed"
