#!/usr/bin/env bash
# The whole pipeline on your own data, one bertkit command per stage:
#   vocab -> prepare -> pretrain -> finetune -> evaluate -> predict -> fill-mask -> export (-> serve)
#
#   bash examples/pipeline.sh CORPUS_DIR TRAIN.tsv DEV.tsv OUT_DIR
#
# CORPUS_DIR: UTF-8 *.txt, one sentence a line, a blank line between documents.
# TRAIN.tsv / DEV.tsv: `text<TAB>label` with a header line (or text_a/text_b/label: set TASK=pair).
# Sizes come from the environment; the defaults are a ~15-minute CPU run, not a good model:
#   PRESET=mini VOCAB=8000 SEQ=128 STEPS=2000 BATCH=32 LR=5e-4 NSP_WEIGHT=0.1 EPOCHS=3 TASK=cls
#   FILL_MASK="今天天气很[MASK]，我们不得不取消户外运动。" (a sentence in your corpus's language)
# Every stage skips itself when its output exists, so a re-run resumes after the last finished stage.
set -euo pipefail
if [ $# -ne 4 ]; then sed -n '2,13p' "$0"; exit 2; fi
CORPUS=$1 TRAIN=$2 DEV=$3 OUT=$4
PRESET=${PRESET:-mini} VOCAB=${VOCAB:-8000} SEQ=${SEQ:-128} STEPS=${STEPS:-2000} BATCH=${BATCH:-32}
LR=${LR:-5e-4} NSP_WEIGHT=${NSP_WEIGHT:-0.1} EPOCHS=${EPOCHS:-3} TASK=${TASK:-cls}
FILL_MASK=${FILL_MASK:-今天天气很[MASK]，我们不得不取消户外运动。}
BERTKIT=${BERTKIT:-bertkit}
mkdir -p "$OUT"
shopt -s nullglob
corpus=("$CORPUS"/*.txt)
[ ${#corpus[@]} -gt 0 ] || { echo "no *.txt in $CORPUS" >&2; exit 2; }

[ -f "$OUT/tokenizer/vocab.txt" ] ||
  $BERTKIT vocab --corpus "${corpus[@]}" --vocab-size "$VOCAB" --out "$OUT/tokenizer"
[ -f "$OUT/data/manifest.json" ] ||
  $BERTKIT prepare --corpus "${corpus[@]}" --tokenizer "$OUT/tokenizer" --max-seq-length "$SEQ" --out "$OUT/data"
[ -f "$OUT/pretrain/model/model.safetensors" ] ||
  $BERTKIT pretrain --data "$OUT/data" --model "$PRESET" --out "$OUT/pretrain" --max-steps "$STEPS" \
    --batch-size "$BATCH" --learning-rate "$LR" --nsp-weight "$NSP_WEIGHT" --resume
[ -f "$OUT/$TASK/metrics.json" ] ||
  $BERTKIT finetune --task "$TASK" --model "$OUT/pretrain/model" --train "$TRAIN" --dev "$DEV" --out "$OUT/$TASK" \
    --epochs "$EPOCHS" --max-seq-length "$SEQ"
$BERTKIT evaluate --model "$OUT/$TASK" --data "$DEV" --out "$OUT/dev_metrics.json" | tail -1
$BERTKIT predict --model "$OUT/$TASK" --input "$DEV" --out "$OUT/dev_predictions.jsonl"
$BERTKIT fill-mask --model "$OUT/pretrain/model" "$FILL_MASK"
$BERTKIT export --model "$OUT/$TASK" --out "$OUT/$TASK.onnx"
echo "done: models in $OUT/pretrain/model and $OUT/$TASK; serve with: $BERTKIT serve --model $OUT/$TASK"
