"""Start-up time: launch of ``cli.py fit`` (base.yaml, warm token cache) to its first training step.

    python -m bench.start --data ../shared/imdb [--runs 5]

Runs the fit once to fill the cache, then ``--runs`` times with it warm (one training batch, no
validation), and prints the median of: launch to first step; import of the CLI module alone (a fresh
interpreter each time); the rest (parsing, building the trainer, model and data, reading the cache).
Last, what the big imports cost, each with everything it pulls in (``python -X importtime``; a module
already imported by an earlier one counts there, so the order of first import matters).
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.benchmark import ROOT, events, fit_cmd, run


def import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import rnn_lightning.training.cli; print(time.perf_counter() - t)"
    return float(run([sys.executable, "-c", code]).strip())


BIG = ("torch", "torch._dynamo", "torchmetrics", "scipy.signal", "matplotlib", "tensorboard", "jsonargparse",
       "tokenizers", "lightning")


def big_imports() -> list[tuple[float, str]]:
    """(cumulative seconds, module) for each of ``BIG`` where the CLI's import first reaches it."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import rnn_lightning.training.cli"],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    seen = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)", line)
        if m and m.group(2) in BIG:
            seen[m.group(2)] = int(m.group(1)) / 1e6  # a module is reported once, where it finished loading
    return sorted(((t, name) for name, t in seen.items()), reverse=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "imdb"))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rnn-start-"))
    extra = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0"]
    run(fit_cmd(args.data, 1, str(work / "cache"), str(work / "cold"), extra))
    launch, built = [], []
    for i in range(args.runs):
        t0 = time.time()
        first = events(run(fit_cmd(args.data, 1, str(work / "cache"), str(work / f"warm{i}"), extra)), "first_step")[0]
        launch.append(first["wall"] - t0)
        built.append(first["since_cli"])
    imports = [import_seconds() for _ in range(args.runs)]
    print(f"launch to first step: median {statistics.median(launch):.2f} s ({', '.join(f'{x:.2f}' for x in launch)})")
    print(f"import rnn_lightning.training.cli: median {statistics.median(imports):.2f} s")
    print(f"callbacks built to first step: median {statistics.median(built):.2f} s")
    for seconds, module in big_imports():
        print(f"  {seconds:6.2f} s  {module}")


if __name__ == "__main__":
    main()
