#!/usr/bin/env bash
# The semi-supervised preset end to end: language-model pretraining on the training and unlabelled
# reviews, fine-tuning the classifier from it, then `test` once on the best checkpoint by validation.
#
#   bash bench/semi_supervised.sh DATA_DIR OUT_DIR [extra arguments for every stage, e.g. --seed_everything 1]
#
# DATA_DIR is in the ../shared/imdb layout (train/test/unsupervised parquet). Everything is written
# under OUT_DIR (token caches, runs, one log per stage); the last line printed is the test accuracy.
set -euo pipefail
DATA=${1:?usage: bench/semi_supervised.sh DATA_DIR OUT_DIR [args...]}
OUT=${2:?usage: bench/semi_supervised.sh DATA_DIR OUT_DIR [args...]}
shift 2
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
common=(--data.dataset "$DATA" --data.cache_dir "$OUT/cache" "$@")

stage() {  # stage NAME COMMAND... : runs it with its log in OUT/NAME.log, prints its wall time
    local name=$1 t0
    shift
    t0=$(date +%s)
    if ! "$@" >"$OUT/$name.log" 2>&1; then
        tail -5 "$OUT/$name.log" >&2
        echo "$name failed; log: $OUT/$name.log" >&2
        exit 1
    fi
    echo "$name: $(($(date +%s) - t0)) s wall"
}

stage pretrain "$PY" pretrain.py fit --config configs/bigru.yaml --config configs/lm.yaml "${common[@]}" \
    --trainer.default_root_dir "$OUT/lm"
LM=$(ls -d "$OUT"/lm/lightning_logs/version_* | sort -V | tail -1)/checkpoints/last.ckpt
grep -o "val/ppl=[0-9.]*" "$OUT/pretrain.log" | tail -1 || true
finetune=(--config configs/bigru.yaml --config configs/semi_supervised.yaml "${common[@]}" --model.init_from "$LM"
          --trainer.default_root_dir "$OUT/classifier")
stage finetune "$PY" cli.py fit "${finetune[@]}"
stage test "$PY" cli.py test "${finetune[@]}" --ckpt_path best
grep -E "test/(acc|auroc)" "$OUT/test.log" | tr -s ' │' ' '
grep -E "test/acc" "$OUT/test.log" | tr -s ' │' ' ' | awk '{print "test accuracy", $2}'
