"""Side-by-side speed benchmark: the tutorial's TensorFlow program, a bare PyTorch loop, and `fit`.

    python bench/benchmark.py --data ../shared/imdb --epochs 5 [--implementations auto,fused] \
        [--tf-python /tmp/tf-venv/bin/python --anchors ../shared/anchors]

Runs each program alone, one after another, on this machine, and prints medians over epochs 2..N
(the first epoch carries warm-up and graph tracing), pooled over --rounds, and ratios. Compare ratios from one run, not
seconds across runs. The TensorFlow program is optional (see ../shared/anchors/README.md to install it).
Also: tokenizer training + encoding of all 50,000 labelled reviews, time to the first training step
with a cold and a warm token cache, and resident memory per epoch of `fit`.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rnn_lightning.training.trust import EXTRA_IMPORTS_ENV

ROOT = Path(__file__).resolve().parents[1]
TF = "TensorFlow tutorial program (seed_tf.py)"
FIT_ENV = {EXTRA_IMPORTS_ENV: "bench"}  # fit_cmd's configs name bench.timing.EpochTimer


def run(cmd: list[str], env: dict | None = None) -> str:
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def events(out: str, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [r for r in rows if r.get("event") == kind]


def tf_epochs(python: str, anchors: Path, epochs: int, no_val: bool) -> list[float]:
    npz = Path(tempfile.gettempdir()) / "imdb_keras.npz"
    if not npz.exists():
        run([python, str(anchors / "keras_style_imdb.py")])
    out = run(
        [python, str(anchors / "seed_tf.py"), str(epochs)] + (["--no-val"] if no_val else []),
        env={"TF_USE_LEGACY_KERAS": "1"},
    )
    return [float(m) for m in re.findall(r"EPOCH \d+ seconds=([\d.]+)", out)]


def fit_cmd(data: str, epochs: int, cache: str, logdir: str, extra: list[str]) -> list[str]:
    return [sys.executable, "cli.py", "fit", "--config", "configs/base.yaml", "--data.dataset", data,
            "--data.cache_dir", cache, "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", logdir,
            "--trainer.callbacks+=bench.timing.EpochTimer", *extra]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "imdb"))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--tf-python", help="a Python with tensorflow-cpu and tf-keras; omit to skip TensorFlow")
    p.add_argument("--anchors", default=str(ROOT.parent / "shared" / "anchors"))
    p.add_argument("--precisions", default="32-true,bf16-mixed")
    p.add_argument(
        "--implementations",
        default="auto",
        help="model.implementation values to run fit with, e.g. auto,fused (the compiled loop against PyTorch's kernel)",
    )
    p.add_argument("--rounds", type=int, default=1, help="run the programs in turn this many times; pool the epochs")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rnn-bench-"))
    notes: list[str] = []

    # Tokenization and start-up.
    out = run([sys.executable, "-c", (
        "import time; from rnn_lightning.text.sources import load_labelled; from rnn_lightning.text.tokenizer import train_tokenizer, encode\n"
        f"raw = load_labelled({args.data!r}); train = raw.splits['train'].texts.to_list(); texts = train + raw.splits['test'].texts.to_list()\n"
        "t = time.perf_counter(); tok = train_tokenizer(train, 10000, 80); t1 = time.perf_counter(); encode(tok, texts); t2 = time.perf_counter()\n"
        "print(f'train_tokenizer {t1 - t:.2f} s, encode {len(texts)} reviews {t2 - t1:.2f} s')")])  # fmt: skip
    notes.append("tokenizer: " + out.strip())
    cache = str(work / "cache")
    for label in ("cold cache", "warm cache"):
        t0 = time.time()
        out = run(
            fit_cmd(
                args.data,
                1,
                cache,
                str(work / "start"),
                ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0"],
            ),
            env=FIT_ENV,
        )
        first = events(out, "first_step")[0]
        notes.append(
            f"{label}: first training step {first['wall'] - t0:.1f} s after launch, {first['since_cli']:.1f} s after the CLI was built (imports and parsing excluded)"
        )

    # Programs run one after another, the whole sequence --rounds times: this VM's speed drifts by
    # 10-20% over minutes, and interleaving spreads the drift over all programs alike.
    runs: dict[str, dict] = {}  # name -> {"train": [...], "eval": [...], "reviews": n}

    def add(name: str, train: list[float], ev: list[float], reviews: int) -> None:
        run_ = runs.setdefault(name, {"train": [], "eval": [], "reviews": reviews, "rounds": []})
        kept = train[1:] if len(train) > 1 else train  # the first epoch carries warm-up
        run_["train"] += kept
        run_["rounds"].append(statistics.median(kept))
        run_["eval"] += ev[1:] if len(ev) > 1 else ev

    def add_epochs(name: str, epochs: list[dict]) -> None:
        """add() from the per-epoch JSON lines of bench/bare_loop.py or bench/timing.py."""
        add(name, [e["train_s"] for e in epochs], [e["val_s"] for e in epochs], epochs[-1]["reviews"])

    for round_ in range(args.rounds):
        if args.tf_python:
            tf_train = tf_epochs(args.tf_python, Path(args.anchors), args.epochs, no_val=True)
            tf_full = tf_epochs(args.tf_python, Path(args.anchors), args.epochs, no_val=False)
            # Its evaluation time: epochs with validation minus epochs without (medians, at the end).
            add(TF, tf_train, [], 24 * 1024)
            add(TF + " with validation", tf_full, [], 24 * 1024)
        for precision in args.precisions.split(","):
            bf16 = precision.startswith("bf16")
            out = run(
                [sys.executable, "-m", "bench.bare_loop", "--data", args.data, "--epochs", str(args.epochs)]
                + (["--bf16"] if bf16 else []),
                env={"PYTHONPATH": str(ROOT)},
            )
            add_epochs(f"bare PyTorch loop, {precision}", events(out, "epoch"))
            for impl in args.implementations.split(","):
                extra = ["--trainer.precision", precision, "--model.implementation", impl]
                ep = events(run(fit_cmd(args.data, args.epochs, cache, str(work / "fit"), extra), env=FIT_ENV), "epoch")
                add_epochs(f"cli.py fit configs/base.yaml, {precision}, implementation {impl}", ep)
                notes.append(
                    f"round {round_ + 1}, fit {precision} {impl}: RSS per epoch (MB) {[e['rss_mb'] for e in ep]}, "
                    f"peak {ep[-1]['peak_rss_mb']} MB; val acc per epoch {[round(e['val_acc'], 4) for e in ep]}"
                )
    tf_full = runs.pop(TF + " with validation", None)
    rows = []
    for name, r in runs.items():
        train = statistics.median(r["train"])
        ev = statistics.median(tf_full["train"]) - train if name == TF else statistics.median(r["eval"])
        rows.append((name, train, ev, r["reviews"]))

    ref = rows[0][1] / rows[0][3]
    print(
        f"\n| program | train s/epoch | reviews/epoch | ms per 1000 reviews trained | vs {rows[0][0].split(' (')[0]} | eval s/epoch |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, train, ev, n in rows:
        print(f"| {name} | {train:.2f} | {n} | {1e6 * train / n:.1f} | {train / n / ref:.2f}x | {ev:.2f} |")
    print()
    notes += [
        f"{name}: train s/epoch, median of each round {[round(v, 2) for v in r['rounds']]}" for name, r in runs.items()
    ]
    for note in notes:
        print("-", note)


if __name__ == "__main__":
    main()
