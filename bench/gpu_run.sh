#!/usr/bin/env bash
# One prepared pass on a GPU machine: the implementation tests on the GPU, the base config's epoch
# times per implementation and precision (fit and the bare loop), then a sweep of from-scratch
# BiGRU variants judged on the movie-disjoint ("blocks") validation split only.
#
#   OUT=results DATA=../shared/imdb bash bench/gpu_run.sh
#
# Env: DATA (train/test parquet folder), OUT (where logs go), PY (python), EPOCHS (base timing epochs),
# SPEED (implementation:precision pairs to time), BARE (0/1: bare-loop timings), SWEEP (a file of
# "name args..." lines, run with seeds 42 and 1 on top of configs/bigru.yaml), SWEEP_EPOCHS,
# TEST_AFTER (sweep names whose seed-42 best checkpoint is tested once; default "blocks random",
# the shipped preset under both validation splits), SMOKE=1 (a few batches on the CPU, to check the script).
set -u
PY=${PY:-python3}
DATA=${DATA:-../shared/imdb}
OUT=${OUT:-bench/results}
EPOCHS=${EPOCHS:-4}
SWEEP_EPOCHS=${SWEEP_EPOCHS:-6}
SPEED=${SPEED:-fused:32-true fused:bf16-mixed bptt:32-true bptt:bf16-mixed autograd:32-true autograd:bf16-mixed}
BARE=${BARE:-1}
SWEEP=${SWEEP:-bench/sweep_bigru.txt}
TEST_AFTER=${TEST_AFTER-blocks random}
CACHE=${CACHE:-/tmp/rnn-cache}
RUNS=${RUNS:-/tmp/rnn-runs}
ACCEL=gpu
EXTRA=()
if [ "${SMOKE:-0}" = 1 ]; then
    ACCEL=cpu
    EXTRA=(--trainer.limit_train_batches 2 --trainer.limit_val_batches 2)
fi
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_DATASETS_OFFLINE=1

common=(--data.dataset "$DATA" --data.cache_dir "$CACHE" --trainer.accelerator "$ACCEL" --trainer.devices 1
    --trainer.enable_progress_bar false --trainer.callbacks+=bench.timing.EpochTimer "${EXTRA[@]}")

fit() {  # fit SECONDS NAME CONFIG ARGS... -> prints the run's per-epoch JSON lines
    local limit=$1 name=$2 config=$3
    shift 3
    timeout "$limit" "$PY" cli.py fit --config "$config" "${common[@]}" --trainer.default_root_dir "$RUNS/$name" "$@" >"$RUNS/$name.log" 2>&1
    local rc=$? lines  # one write per run: runs that end together do not interleave
    lines=$(grep -E '^\{"event": "epoch"|Error|error:' "$RUNS/$name.log" | tail -"$((SWEEP_EPOCHS + 4))")
    printf '== %s rc=%s %s\n%s\n' "$name" "$rc" "$*" "$lines"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
    nproc
} >"$OUT/env.txt" 2>&1

if [ "$ACCEL" = gpu ]; then
    timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_network.py -k "cuda" >"$OUT/gpu_tests.txt" 2>&1
    tail -3 "$OUT/gpu_tests.txt"
fi

# 1. Speed: the base config, alone on the machine, one run after another.
{
    for pair in $SPEED; do
        impl=${pair%%:*} prec=${pair#*:}
        fit 150 "base-$impl-$prec" configs/base.yaml --trainer.max_epochs "$EPOCHS" \
            --model.implementation "$impl" --trainer.precision "$prec"
    done
    if [ "$ACCEL" = gpu ] && [ "$BARE" = 1 ]; then
        for bf in "" --bf16; do
            echo "== bare loop fused $bf"
            timeout 100 "$PY" bench/bare_loop.py --data "$DATA" --epochs "$EPOCHS" --device cuda --implementation fused $bf 2>&1 | grep '^{'
        done
    fi
} >"$OUT/speed.txt" 2>&1

# 2. Accuracy sweep, several runs at once (the GPU has room; each run is small). Caches first, once.
[ -s "$SWEEP" ] || { echo done; exit 0; }
for len in $(grep -o -- '--data.max_len [0-9]*' "$SWEEP" | awk '{print $2}' | sort -u) 400; do
    "$PY" -c "from rnn_lightning.text import TextDataModule
TextDataModule(dataset='$DATA', cache_dir='$CACHE', vocab_size=30000, max_len=$len, val_split='blocks').prepare_data()" &
done
grep -q -- '--data.val_split random' "$SWEEP" && "$PY" -c "from rnn_lightning.text import TextDataModule
TextDataModule(dataset='$DATA', cache_dir='$CACHE', vocab_size=30000, max_len=400).prepare_data()" &
wait
{
    for seed in 42 1; do  # all at once: single-threaded processes on 16 cores and one GPU
        while read -r name args; do
            [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
            # shellcheck disable=SC2086
            OMP_NUM_THREADS=1 fit "${SWEEP_LIMIT:-280}" "sweep-$name-$seed" configs/bigru.yaml --data.val_split blocks \
                --seed_everything "$seed" --trainer.max_epochs "$SWEEP_EPOCHS" $args &
        done <"$SWEEP"
    done
    wait
    # Which validation split tells the truth about test: the preset selected on each, tested once
    # (both are bigru.yaml, whose test figures are already published). Runs absent from SWEEP are skipped.
    for name in $TEST_AFTER; do
        args=$(awk -v n="$name" '$1 == n { $1 = ""; print }' "$SWEEP")
        [ -d "$RUNS/sweep-$name-42" ] || continue
        # shellcheck disable=SC2086
        "$PY" cli.py test --config configs/bigru.yaml "${common[@]}" --trainer.default_root_dir "$RUNS/sweep-$name-42" \
            --data.val_split blocks --seed_everything 42 \
            $args --ckpt_path best 2>&1 | grep -E "test/acc|Error" | head -3 | sed "s/^/$name: /"
    done
} >"$OUT/sweep.txt" 2>&1
echo done
