#!/usr/bin/env bash
# All throughput benchmarks on a CUDA device, one results file: benchmarks/results/throughput_cuda.json.
#   bash benchmarks/gpu.sh
# BERT-base (L12/H768) pre-training at seq 128 with bf16 autocast, plus tiny/mini/small, fine-tuning and
# inference; each against transformers (sdpa) with the same config and batch, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT_FILE:-benchmarks/results/throughput_cuda.json}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$PY benchmarks/throughput.py --device cuda --precision bf16 --only pretrain --presets base --batch-size 128 \
  --rounds 10 --out "$OUT"
$PY benchmarks/throughput.py --device cuda --precision bf16 --only pretrain --presets tiny,mini,small \
  --batch-size 128 --rounds 10 --out "$OUT"
$PY benchmarks/throughput.py --device cuda --precision bf16 --only finetune --rounds 10 --out "$OUT"
echo "results: $OUT"
