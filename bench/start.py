"""Start-up time: launch of ``cli.py fit`` (base.yaml, warm token cache) to its first training step.

    python bench/start.py --data ../shared/imdb [--runs 5]

Runs the fit once to fill the cache, then ``--runs`` times with it warm (one training batch, no
validation), and prints the median of: launch to first step; import of the CLI module alone (a fresh
interpreter each time); the rest (parsing, building the trainer, model and data, reading the cache).
Last, the slowest imports by their own cumulative time (``python -X importtime``).
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
    code = "import time; t = time.perf_counter(); import rnn_lightning.cli; print(time.perf_counter() - t)"
    return float(run([sys.executable, "-c", code]).strip())


def slowest_imports(n: int = 12) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the top-level packages the CLI imports, slowest first."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import rnn_lightning.cli"],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) <= 2:  # a package imported by the CLI itself or one level below
            rows.append((int(m.group(1)) / 1e6, m.group(3)))
    return sorted(rows, reverse=True)[:n]


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
    print(f"import rnn_lightning.cli: median {statistics.median(imports):.2f} s")
    print(f"callbacks built to first step: median {statistics.median(built):.2f} s")
    for seconds, module in slowest_imports():
        print(f"  {seconds:6.2f} s  {module}")


if __name__ == "__main__":
    main()
