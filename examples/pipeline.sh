#!/usr/bin/env bash
# The whole pipeline on your own data, one bertkit command per stage:
#   vocab -> prepare -> pretrain -> finetune -> evaluate -> predict -> fill-mask -> export (-> serve)
#
#   bash examples/pipeline.sh CORPUS_DIR TRAIN.tsv DEV.tsv OUT_DIR
#
# CORPUS_DIR: UTF-8 *.txt, one sentence a line, a blank line between documents.
# TRAIN.tsv / DEV.tsv: `text<TAB>label` with a header line (or text_a/text_b/label: set TASK=pair).
# Sizes come from the environment; the defaults are a ~15-minute run on 2 idle CPU cores, not a good model:
#   PRESET=mini VOCAB=8000 SEQ=128 STEPS=2000 BATCH=32 LR=5e-4 NSP_WEIGHT=0.1 EPOCHS=3 TASK=cls
#   FILL_MASK="今天天气很[MASK]，我们不得不取消户外运动。" (a sentence in your corpus's language)
# Every stage skips itself when its output exists, so a re-run resumes after the last finished stage.
# The bertkit command: $BERTKIT if set, else `bertkit` on the PATH, else the .venv/bin/bertkit that `make` installs.
set -euo pipefail
if [ $# -ne 4 ]; then sed -n '2,13p' "$0"; exit 2; fi
CORPUS=$1 TRAIN=$2 DEV=$3 OUT=$4
PRESET=${PRESET:-mini} VOCAB=${VOCAB:-8000} SEQ=${SEQ:-128} STEPS=${STEPS:-2000} BATCH=${BATCH:-32}
LR=${LR:-5e-4} NSP_WEIGHT=${NSP_WEIGHT:-0.1} EPOCHS=${EPOCHS:-3} TASK=${TASK:-cls}
FILL_MASK=${FILL_MASK:-今天天气很[MASK]，我们不得不取消户外运动。}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${BERTKIT:-}" ]; then
  read -r -a BERTKIT_CMD <<< "$BERTKIT"  # may be a command with arguments, e.g. "python -m bertkit.cli"
elif command -v bertkit > /dev/null; then
  BERTKIT_CMD=(bertkit)
elif [ -x "$ROOT/.venv/bin/bertkit" ]; then
  BERTKIT_CMD=("$ROOT/.venv/bin/bertkit")
else
  echo "bertkit not found on the PATH or in $ROOT/.venv: run make in $ROOT (it installs into .venv), then" \
    "source .venv/bin/activate, or set BERTKIT=/path/to/bertkit" >&2
  exit 2
fi
mkdir -p "$OUT"
shopt -s nullglob
corpus=("$CORPUS"/*.txt)
[ ${#corpus[@]} -gt 0 ] || { echo "no *.txt in $CORPUS" >&2; exit 2; }

[ -f "$OUT/tokenizer/vocab.txt" ] ||
  "${BERTKIT_CMD[@]}" vocab --corpus "${corpus[@]}" --vocab-size "$VOCAB" --out "$OUT/tokenizer"
[ -f "$OUT/data/manifest.json" ] ||
  "${BERTKIT_CMD[@]}" prepare --corpus "${corpus[@]}" --tokenizer "$OUT/tokenizer" --max-seq-length "$SEQ" --out "$OUT/data"
[ -f "$OUT/pretrain/model/model.safetensors" ] ||
  "${BERTKIT_CMD[@]}" pretrain --data "$OUT/data" --model "$PRESET" --out "$OUT/pretrain" --max-steps "$STEPS" \
    --batch-size "$BATCH" --learning-rate "$LR" --nsp-weight "$NSP_WEIGHT" --resume
[ -f "$OUT/$TASK/metrics.json" ] ||
  "${BERTKIT_CMD[@]}" finetune --task "$TASK" --model "$OUT/pretrain/model" --train "$TRAIN" --dev "$DEV" --out "$OUT/$TASK" \
    --epochs "$EPOCHS" --max-seq-length "$SEQ" --resume
"${BERTKIT_CMD[@]}" evaluate --model "$OUT/$TASK" --data "$DEV" --out "$OUT/dev_metrics.json" --overwrite | tail -1
"${BERTKIT_CMD[@]}" predict --model "$OUT/$TASK" --input "$DEV" --out "$OUT/dev_predictions.jsonl" --overwrite
"${BERTKIT_CMD[@]}" fill-mask --model "$OUT/pretrain/model" "$FILL_MASK"
"${BERTKIT_CMD[@]}" export --model "$OUT/$TASK" --out "$OUT/$TASK.onnx" --overwrite
echo "done: models in $OUT/pretrain/model and $OUT/$TASK; serve with: ${BERTKIT_CMD[*]} serve --model $OUT/$TASK"
