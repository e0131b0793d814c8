"""Training speed of two checkouts of this project side by side, beside the tutorial's TensorFlow program.

    git worktree add /tmp/before <commit>
    python -m bench.compare_checkouts --before /tmp/before --after . --epochs 6 --rounds 2 \
        --tf-python /tmp/tf-venv/bin/python

Each round runs the TensorFlow program once (no validation), then ``fit`` of ``configs/base.yaml`` in each
checkout for float32 ``auto``, bf16 ``auto`` and float32 ``fused``, alternating before and after so that the
machine's drift falls on both alike. Prints the median ms per 1000 training reviews over epochs 2..N of all
rounds, each as a ratio to the TensorFlow program of the same run, and every run's validation accuracy per
epoch (the two checkouts should agree where they compute the same function).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rnn_lightning.training.trust import EXTRA_IMPORTS_ENV

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> the fit arguments it adds
    "float32 auto": ["--model.implementation", "auto"],
    "bf16 auto": ["--trainer.precision", "bf16-mixed"],
    "float32 fused": ["--model.implementation", "fused"],
}


def fit(tree: Path, side: str, data: str, epochs: int, work: Path, extra: list[str]) -> list[dict]:
    """One ``fit`` in checkout ``tree``; its per-epoch rows from ``bench.timing.EpochTimer``."""
    env = {**os.environ, EXTRA_IMPORTS_ENV: "bench", "RNN_LIGHTNING_NATIVE_DIR": str(work / f"native-{side}")}
    cmd = [sys.executable, "cli.py", "fit", "--config", "configs/base.yaml", "--data.dataset", data,
           "--data.cache_dir", str(work / f"cache-{side}"), "--trainer.max_epochs", str(epochs),
           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(work / "runs"),
           "--trainer.callbacks+=bench.timing.EpochTimer", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"fit in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r for r in rows if r.get("event") == "epoch"]


def tf_ms(python: str, anchors: Path, epochs: int) -> list[float]:
    """ms per 1000 reviews of the TensorFlow program's epochs 2..N (24 batches of 1024 each)."""
    proc = subprocess.run([python, str(anchors / "seed_tf.py"), str(epochs), "--no-val"], cwd=anchors,
                          capture_output=True, text=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})  # fmt: skip
    seconds = [float(s) for s in re.findall(r"EPOCH \d+ seconds=([\d.]+)", proc.stdout)]
    if not seconds:
        sys.exit(f"the TensorFlow program printed no epochs:\n{proc.stderr[-3000:]}")
    return [1e6 * s / (24 * 1024) for s in seconds[1:]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="a checkout of the code to compare against")
    p.add_argument("--after", type=Path, default=ROOT)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "imdb"))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tf-python", required=True, help="a Python with tensorflow-cpu and tf-keras")
    p.add_argument("--anchors", type=Path, default=ROOT.parent / "shared" / "anchors")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rnn-compare-"))
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    data = str(Path(args.data).resolve())
    for side, tree in sides.items():  # build the compiled loop and the token cache outside the timed runs
        fit(tree, side, data, 1, work, ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0"])
    ms: dict[str, list[float]] = {"TensorFlow program": []}
    accuracy: dict[str, list[list[float]]] = {}
    for _ in range(args.rounds):
        ms["TensorFlow program"] += tf_ms(args.tf_python, args.anchors, args.epochs)
        for variant, extra in VARIANTS.items():
            for side, tree in sides.items():
                epochs = fit(tree, side, data, args.epochs, work, extra)
                name = f"fit, {variant}, {side}"
                ms.setdefault(name, []).extend(1e6 * e["train_s"] / e["reviews"] for e in epochs[1:])
                accuracy.setdefault(name, []).append([round(e["val_acc"], 4) for e in epochs])
    reference = statistics.median(ms["TensorFlow program"])
    print("\n| program | ms per 1000 reviews trained (median) | vs TensorFlow |\n| --- | --- | --- |")
    for name, values in ms.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / reference:.2f}x |")
    for name, rounds in accuracy.items():
        print(f"- {name}: validation accuracy per epoch, each round: {rounds}")


if __name__ == "__main__":
    main()
