#!/usr/bin/env bash
# One prepared pass on a GPU machine: the implementation tests on the GPU, the base config's epoch
# times per implementation and precision (fit and the bare loop), then a sweep of from-scratch
# BiGRU variants judged on the movie-disjoint ("blocks") validation split only.
#
#   OUT=results DATA=../shared/imdb bash bench/gpu_run.sh
#
# Env: DATA (train/test parquet folder), OUT (where logs go), PY (python), EPOCHS (base timing epochs),
# SWEEP_EPOCHS, SMOKE=1 (a few batches on the CPU, to check the script itself).
set -u
PY=${PY:-python3}
DATA=${DATA:-../shared/imdb}
OUT=${OUT:-bench/results}
EPOCHS=${EPOCHS:-4}
SWEEP_EPOCHS=${SWEEP_EPOCHS:-6}
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
    timeout "$limit" "$PY" cli.py fit --config "$config" "${common[@]}" --trainer.default_root_dir "$RUNS/$name" \
        --trainer.logger.init_args.save_dir "$RUNS/$name" "$@" >"$RUNS/$name.log" 2>&1
    echo "== $name rc=$? $*"
    grep -E '^\{"event": "epoch"|Error|error:' "$RUNS/$name.log" | tail -"$((SWEEP_EPOCHS + 4))"
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
    for impl in fused bptt autograd; do
        for prec in 32-true bf16-mixed; do
            fit 150 "base-$impl-$prec" configs/base.yaml --trainer.max_epochs "$EPOCHS" \
                --model.implementation "$impl" --trainer.precision "$prec"
        done
    done
    if [ "$ACCEL" = gpu ]; then
        for bf in "" --bf16; do
            echo "== bare loop fused $bf"
            timeout 100 "$PY" bench/bare_loop.py --data "$DATA" --epochs "$EPOCHS" --device cuda --implementation fused $bf 2>&1 | grep '^{'
        done
    fi
} >"$OUT/speed.txt" 2>&1

# 2. Accuracy sweep, several runs at once (the GPU has room; each run is small). Caches first, once.
for args in "--data.val_split blocks" "--data.val_split random" "--data.val_split blocks --data.max_len 800"; do
    "$PY" -c "
import sys; from rnn_lightning.data import IMDBDataModule
kw = dict(zip(sys.argv[1::2], sys.argv[2::2]))
IMDBDataModule(dataset='$DATA', cache_dir='$CACHE', vocab_size=30000, max_len=int(kw.get('--data.max_len', 400)), val_split=kw['--data.val_split']).prepare_data()
" $args &
done
wait
declare -A variants=(
    [blocks]=""
    [random]="--data.val_split random"
    [bigram128k]="--model.bigram_buckets 131072"
    [bigram512k]="--model.bigram_buckets 524288"
    [len800]="--data.max_len 800"
    [bigram128k-len800]="--model.bigram_buckets 131072 --data.max_len 800"
    [hidden192]="--model.hidden_size 192"
    [worddrop03]="--model.word_dropout 0.3"
    [wd01]="--optimizer.init_args.weight_decay 0.1"
    [bigram128k-wd01]="--model.bigram_buckets 131072 --optimizer.init_args.weight_decay 0.1"
)
{
    for seed in 42 1; do  # all at once: 20 single-threaded processes on 16 cores and one GPU
        for name in "${!variants[@]}"; do
            # shellcheck disable=SC2086
            OMP_NUM_THREADS=1 fit 280 "sweep-$name-$seed" configs/bigru.yaml --data.val_split blocks \
                --seed_everything "$seed" --trainer.max_epochs "$SWEEP_EPOCHS" ${variants[$name]} &
        done
    done
    wait
    # The shipped preset (random split) and its blocks twin: test once each, to see which
    # validation split tells the truth about test (both presets' test figures are already published).
    for name in blocks random; do
        args="--data.val_split blocks ${variants[$name]}"
        # shellcheck disable=SC2086
        "$PY" cli.py test --config configs/bigru.yaml "${common[@]}" --trainer.default_root_dir "$RUNS/sweep-$name-42" \
            --trainer.logger.init_args.save_dir "$RUNS/sweep-$name-42" $args --ckpt_path best 2>&1 | grep -E "test/acc|Error" | head -3 | sed "s/^/$name: /"
    done
} >"$OUT/sweep.txt" 2>&1
echo done
