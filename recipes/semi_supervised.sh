#!/usr/bin/env bash
# The semi-supervised preset end to end: a teacher trained on the labelled reviews (configs/teacher.yaml),
# then ROUNDS students (configs/student.yaml), each learning the labelled reviews and the previous
# model's soft labels of the 50,000 unlabelled ones, then `test` once on the last student's best
# checkpoint by validation.
#
#   bash recipes/semi_supervised.sh DATA_DIR OUT_DIR [extra arguments for every fit, e.g. --seed_everything 1]
#   ROUNDS=2 bash recipes/semi_supervised.sh ...    (default 1; each round's student teaches the next)
#   PYTHON=/path/to/python bash recipes/semi_supervised.sh ...    (default: python)
#
# DATA_DIR is in the ../shared/imdb layout (train/test/unsupervised parquet). Everything is written
# under OUT_DIR (token caches, runs, one log per stage); the last line printed is the test accuracy.
# The test reviews are read once, by the final `test`: no stage trains on them or builds a vocabulary
# from them. The same stages by hand:
#
#   python cli.py fit --config configs/teacher.yaml --data.dataset DATA_DIR --trainer.default_root_dir OUT_DIR/teacher
#   python cli.py fit --config configs/student.yaml --data.dataset DATA_DIR --trainer.default_root_dir OUT_DIR/student1 \
#       --model.teacher OUT_DIR/teacher/lightning_logs/version_0/checkpoints/best-*.ckpt
#   python cli.py test --config OUT_DIR/student1/lightning_logs/version_0/config.yaml --ckpt_path best
#
# The other semi-supervised pipeline, language-model pretraining then fine-tuning (not run by this
# script): pretrain bigru.yaml's network on the labelled and unlabelled reviews, then start the
# classifier from its last checkpoint (--model.init_from also brings its tokenizer along):
#
#   python cli.py pretrain --config configs/lm.yaml --data.dataset DATA_DIR --trainer.default_root_dir OUT_DIR/lm
#   python cli.py fit --config configs/lm_finetune.yaml --data.dataset DATA_DIR --trainer.default_root_dir OUT_DIR/finetune \
#       --model.init_from OUT_DIR/lm/lightning_logs/version_0/checkpoints/last.ckpt
#   python cli.py test --config OUT_DIR/finetune/lightning_logs/version_0/config.yaml --ckpt_path best
set -euo pipefail
DATA=${1:?usage: recipes/semi_supervised.sh DATA_DIR OUT_DIR [args...]}
OUT=${2:?usage: recipes/semi_supervised.sh DATA_DIR OUT_DIR [args...]}
shift 2
ROUNDS=${ROUNDS:-1}
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

best() {  # best ROOT : the best-by-validation checkpoint of the run under ROOT
    ls "$1"/lightning_logs/version_0/checkpoints/best-*.ckpt | tail -1
}

stage teacher "$PY" cli.py fit --config configs/teacher.yaml "${common[@]}" --trainer.default_root_dir "$OUT/teacher"
model=$(best "$OUT/teacher")
echo "teacher: $(basename "$model")"
for round in $(seq 1 "$ROUNDS"); do
    stage "student$round" "$PY" cli.py fit --config configs/student.yaml "${common[@]}" \
        --model.teacher "$model" --trainer.default_root_dir "$OUT/student$round"
    model=$(best "$OUT/student$round")
    echo "student$round: $(basename "$model")"
done
stage test "$PY" cli.py test --config "$(dirname "$(dirname "$model")")/config.yaml" --ckpt_path "$model"
grep -E "test/(acc|auroc)" "$OUT/test.log" | tr -s ' │' ' '
grep -E "test/acc" "$OUT/test.log" | tr -s ' │' ' ' | awk '{print "test accuracy", $2}'
