"""Scale check of the data path: tokenizing and training configs/base.yaml at 50k, 500k, 5M reviews.

    python bench/scale.py --data ../shared/imdb --out /tmp/scale --sizes 50000 500000 5000000 --steps 0

For each size N it writes ``train.parquet`` (N reviews drawn with replacement from IMDB's 50,000
labelled ones, in row groups so writing never holds them all) and a 2,000-review ``test.parquet``,
then runs, each in a fresh process watched from here:

1. ``prepare``: the data module's ``prepare_data`` (read, split, train the tokenizer, encode into the
   memory-mapped cache): reviews/s of the whole, and of the encoding alone (run again by itself);
2. ``fit``: ``cli.py fit`` of base.yaml on the cached data for ``--steps`` optimizer steps, or with
   ``--steps 0`` one whole epoch (~4,400 steps at 5M reviews): training reviews/s, and the time from
   launch to the first training step (the warm start);
3. with ``--predict_mb``, ``cli.py predict`` of the first size's checkpoint (or ``--predict_ckpt``) on
   text files of that many MB (one review a line, IMDB's reviews repeated): reviews/s and peak
   memory, which must not grow with the file;

and reports each one's peak resident memory: all of it (VmHWM, which counts the pages of memory-mapped
files the process has read, reclaimable by the kernel) and the anonymous part alone (RssAnon, polled),
which is what must not grow with N. Repeating IMDB's text is fine for a scale test, not for accuracy.
"""

import argparse
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from lightning.pytorch import Callback

from rnn_lightning import checkpoint
from rnn_lightning.text import TextDataModule

ROOT = Path(__file__).resolve().parents[1]


class FirstStep(Callback):
    """Prints ``FIRST_STEP`` when the first training batch starts (the watcher times it)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and batch_idx == 0:
            print("FIRST_STEP", flush=True)


def write_data(source: Path, folder: Path, n: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (folder / "train.parquet").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.concat_tables(
        [pq.read_table(source / f"{s}.parquet", columns=["text", "label"]) for s in ("train", "test")]
    )
    rng = np.random.default_rng(seed)
    tmp = folder / ".train.parquet.tmp"
    with pq.ParquetWriter(tmp, table.schema) as writer:
        for start in range(0, n, 100_000):
            writer.write_table(table.take(rng.integers(0, len(table), min(100_000, n - start))))
    tmp.rename(folder / "train.parquet")
    pq.write_table(table.take(rng.integers(0, len(table), 2000)), folder / "test.parquet")


def watch(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd``; its wall time, peak VmHWM and peak RssAnon (MiB), and the time of its first training step."""
    start = time.perf_counter()
    first_step: list[float] = []
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        peak = {"VmHWM": 0, "RssAnon": 0}

        def poll() -> None:
            while proc.poll() is None:
                try:
                    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                        key, _, value = line.partition(":")
                        if key in peak:
                            peak[key] = max(peak[key], int(value.split()[0]))
                except OSError:
                    pass
                time.sleep(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        for line in proc.stdout:
            out.write(line)
            if "FIRST_STEP" in line and not first_step:
                first_step.append(time.perf_counter() - start)
        proc.wait()
        poller.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed; see {log}")
    return {
        "wall_s": time.perf_counter() - start,
        "peak_rss_mib": peak["VmHWM"] / 1024,
        "peak_anon_mib": peak["RssAnon"] / 1024,
        "first_step_s": first_step[0] if first_step else None,
    }


PREPARE = """
import sys, tempfile, time
from pathlib import Path
from rnn_lightning.text import TextDataModule
from rnn_lightning.text.token_cache import encode_to_file
dm = TextDataModule(dataset=sys.argv[1], cache_dir=sys.argv[2])
t = time.perf_counter(); source = dm._source; print("READ_S", time.perf_counter() - t)
t = time.perf_counter(); dm.prepare_data(); print("PREPARE_S", time.perf_counter() - t)
dm.setup("fit")
texts = source.splits["train"].texts
with tempfile.TemporaryDirectory(dir=sys.argv[2]) as tmp:
    t = time.perf_counter(); encode_to_file(Path(tmp) / "ids.npy", dm.tokenizer, texts)
    print("ENCODE_PER_S", len(texts) / (time.perf_counter() - t))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", type=int, nargs="*", default=[50_000, 500_000, 5_000_000])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps of fit; 0: one whole epoch")
    p.add_argument("--predict_mb", type=int, nargs="*", default=[])
    p.add_argument("--predict_ckpt", type=Path, help="default: the last checkpoint of the first size's fit")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    results = []
    for n in args.sizes:
        folder, cache = args.out / f"data_{n}", args.out / f"cache_{n}"
        t = time.perf_counter()
        write_data(args.data, folder, n)
        print(f"{n}: data written in {time.perf_counter() - t:.0f} s", flush=True)
        prep = watch([sys.executable, "-c", PREPARE, str(folder), str(cache)], env, args.out / f"prepare_{n}.log")
        facts = {line.split()[0]: float(line.split()[1]) for line in open(args.out / f"prepare_{n}.log")
                 if line.startswith(("READ_S", "PREPARE_S", "ENCODE_PER_S"))}  # fmt: skip
        prepare_s = facts["PREPARE_S"]
        fit_cmd = [
            sys.executable, "cli.py", "fit", "--config", "configs/base.yaml", "--data.dataset", str(folder),
            "--data.cache_dir", str(cache), "--trainer.max_steps", str(args.steps or -1), "--trainer.max_epochs", "1",
            "--trainer.limit_val_batches", "2",
            "--trainer.default_root_dir", str(args.out / f"runs_{n}"), "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks+=bench.scale.FirstStep",
        ]  # fmt: skip
        fit = watch(fit_cmd, env, args.out / f"fit_{n}.log")
        fit_s = fit["wall_s"] - fit["first_step_s"]  # the training steps, two validation batches and the checkpoint
        steps = checkpoint.load_checkpoint(last_checkpoint(args.out, n))["global_step"]
        batch = inspect.signature(TextDataModule).parameters["batch_size"].default  # base.yaml keeps it
        row = {
            "reviews": n,
            "read_s": round(facts["READ_S"], 1),  # datasets' Arrow copy and the label checks
            "prepare_s": round(prepare_s, 1),  # read + split + train the tokenizer + encode + write
            "prepare_reviews_per_s": round(n / (facts["READ_S"] + prepare_s)),
            "encode_reviews_per_s": round(facts["ENCODE_PER_S"]),  # the encoding alone, again, timed by itself
            "prepare_peak_rss_mib": round(prep["peak_rss_mib"]),
            "prepare_peak_anon_mib": round(prep["peak_anon_mib"]),
            "fit_first_step_s": round(fit["first_step_s"], 1),
            "fit_steps": steps,
            "fit_steps_per_s": round(steps / fit_s, 2),
            "fit_reviews_per_s": round(steps * batch / fit_s),  # the last batch counted as full
            "fit_peak_rss_mib": round(fit["peak_rss_mib"]),
            "fit_peak_anon_mib": round(fit["peak_anon_mib"]),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    ckpt = args.predict_ckpt or last_checkpoint(args.out, args.sizes[0])
    for mb in args.predict_mb:
        path, n = write_lines(args.data, args.out / f"predict_{mb}mb.txt", mb)
        cmd = [
            sys.executable, "cli.py", "predict", "--ckpt_path", str(ckpt), "--data.predict_path", str(path),
            "--data.cache_dir", str(args.out / "predict_cache"), "--prediction_writer.output", str(path.with_suffix(".csv")),
            "--trainer.enable_progress_bar", "false",
        ]  # fmt: skip
        run = watch(cmd, env, args.out / f"predict_{mb}mb.log")
        row = {"predict_mb": mb, "reviews": n, "reviews_per_s": round(n / run["wall_s"]),
               "peak_rss_mib": round(run["peak_rss_mib"]), "peak_anon_mib": round(run["peak_anon_mib"])}  # fmt: skip
        results.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=1))


def last_checkpoint(out: Path, n: int) -> Path:
    """``last.ckpt`` of the newest fit run of size ``n``."""
    return checkpoint.find_checkpoint(out / f"runs_{n}" / "lightning_logs", "last")


def write_lines(source: Path, path: Path, mb: int) -> tuple[Path, int]:
    """A text file of about ``mb`` MB, one IMDB review a line (repeated in order); its path and line count."""
    import pyarrow.parquet as pq

    texts = [
        t.replace("\n", " ").encode()
        for t in pq.read_table(source / "train.parquet", columns=["text"]).column("text").to_pylist()
    ]
    n, size = 0, 0
    with open(path, "wb") as f:
        while size < mb * 1_000_000:
            line = texts[n % len(texts)] + b"\n"
            f.write(line)
            n, size = n + 1, size + len(line)
    return path, n


if __name__ == "__main__":
    main()
