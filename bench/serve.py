"""Serving figures: start-up, one-text latency, throughput under concurrency, peak memory; beside them the
linear baseline (TF-IDF + logistic regression) served by the same app, and ``predict``'s batch throughput.

    pip install -e ".[bench]"
    python -m bench.serve --data ../shared/imdb --ckpt base=RUN/checkpoints/best-....ckpt --ckpt bigru_bigram=...

Each model is served by ``python cli.py serve`` on 127.0.0.1 (a free port), in a process of its own; the load
generator is this process (asyncio, keep-alive HTTP/1.1 connections, a fixed number in flight), on the same
machine: on 2 cores the client takes CPU from the server, so the figures bound what a remote client would see.
Requests carry IMDB test reviews (cut to their last 2,000 characters). One model runs at a time.
"""

import argparse
import asyncio
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

from rnn_lightning.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
LINEAR_WORKER = """
import pickle, sys
from bench.serve import LinearModel
from rnn_lightning import server
server.main(sys.argv[1:], model_class=LinearModel)
"""


class LinearModel:
    """The TF-IDF + logistic regression baseline behind the server's interface (``server.ServedModel``)."""

    net = None  # no explanations

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:  # written by this benchmark just before, from the IMDB training split
            self.pipeline = pickle.load(f)
        self.name, self.class_names = "tfidf_logreg", ["neg", "pos"]
        self.task = make_task(self.class_names)

    def info(self) -> dict:
        return {"model": self.name, "class_names": self.class_names, "explain": False}

    def predict(self, texts: list[str]) -> list[dict]:
        probs = self.pipeline.predict_proba(texts).tolist()
        return [self.task.decision(p) for p in probs]


def fit_linear(data: Path, out: Path) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    table = pq.read_table(data / "train.parquet", columns=["text", "label"])
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(C=8, max_iter=2000, solver="liblinear"),
    )
    pipeline.fit(table.column("text").to_pylist(), table.column("label").to_pylist())
    with open(out, "wb") as f:
        pickle.dump(pipeline, f)


def start(command: list[str]) -> tuple[subprocess.Popen, str, float]:
    """The server process, its URL and the seconds from launch to the first answered /predict."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"on (http://[\d.]+:\d+/)", line)
    if not match:
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    url = match[1]
    body = json.dumps({"texts": ["a first request"]}).encode()
    while True:
        try:
            request = urllib.request.Request(url + "predict", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30):
                return proc, url, time.perf_counter() - t0
        except urllib.error.HTTPError as e:  # 503 while loading
            if e.code != 503:
                raise
            time.sleep(0.01)


async def load(url: str, bodies: list[bytes], in_flight: int, seconds: float) -> tuple[list[float], int]:
    """``in_flight`` connections each sending the next body as soon as the last is answered, for ``seconds``:
    (latencies in s, requests answered)."""
    host, port = re.match(r"http://([\d.]+):(\d+)/", url).groups()
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < stop:
            body = bodies[next(counter) % len(bodies)]
            head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: {len(body)}\r\n\r\n"
            t0 = time.perf_counter()
            writer.write(head.encode() + body)
            await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
            if not answer.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"answer: {answer[:200]!r}")
            await reader.readexactly(int(re.search(rb"(?i)content-length: (\d+)", answer)[1]))
            latencies.append(time.perf_counter() - t0)
        writer.close()

    await asyncio.gather(*(client() for _ in range(in_flight)))
    return latencies, len(latencies)


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024


def explain_latencies(url: str, texts: list[str]) -> list[float]:
    """Seconds per /explain request, one after another."""
    out = []
    for text in texts:
        body = json.dumps({"text": text}).encode()
        t0 = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url + "explain", body), timeout=60) as response:
            response.read()
        out.append(time.perf_counter() - t0)
    return out


def measure(name: str, command: list[str], texts: list[str], seconds: float, explain: bool = True) -> dict:
    proc, url, started = start(command)
    try:
        one = [json.dumps({"texts": [t]}).encode() for t in texts]
        batched = [json.dumps({"texts": texts[i : i + 64]}).encode() for i in range(0, len(texts) - 63, 64)]
        asyncio.run(load(url, one, 1, 2.0))  # warm-up
        row = {"model": name, "start_s": round(started, 2)}
        latencies, _ = asyncio.run(load(url, one, 1, seconds))
        row["p50_ms"] = round(1e3 * statistics.median(latencies), 2)
        row["p99_ms"] = round(1e3 * statistics.quantiles(latencies, n=100)[98], 2)
        for in_flight in (1, 8, 32):
            _, n = asyncio.run(load(url, one, in_flight, seconds))
            row[f"texts_per_s_c{in_flight}"] = round(n / seconds)
        _, n = asyncio.run(load(url, batched, 4, seconds))
        row["texts_per_s_64_per_request_c4"] = round(64 * n / seconds)
        if explain:
            row["explain_p50_ms"] = round(1e3 * statistics.median(explain_latencies(url, texts[:30])), 1)
        row["peak_rss_mib"] = round(peak_rss_mib(proc.pid))
        return row
    finally:
        proc.terminate()
        proc.wait(60)


def completeness(ckpt: str, texts: list[str]) -> dict:
    """/explain's remainder over ``texts``: the largest |delta| (logits), and |delta| / |logit - baseline_logit|."""
    import torch

    from rnn_lightning.explain import explain_ids
    from rnn_lightning.inference import Predictor
    from rnn_lightning.text.tokenizer import encode

    predictor = Predictor.from_checkpoint(ckpt)
    ratios, deltas = [], []
    for start in range(0, len(texts), 16):
        ids = torch.from_numpy(encode(predictor.tokenizer, texts[start : start + 16])).long()
        for row in explain_ids(predictor.net, ids, predictor.class_names):
            ratios.append(abs(row["delta"]) / max(abs(row["logit"] - row["baseline_logit"]), 1e-6))
            deltas.append(abs(row["delta"]))
    return {
        "delta_max": float(f"{max(deltas):.2g}"),
        "delta_ratio_median": float(f"{statistics.median(ratios):.2g}"),
        "delta_ratio_max": float(f"{max(ratios):.2g}"),
    }


def predict_throughput(ckpt: str, texts: list[str], folder: Path) -> float:
    """texts/s of ``python cli.py predict`` on ``texts`` (one per line), start-up included."""
    source = folder / "texts.txt"
    source.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "cli.py", "predict", "--ckpt_path", ckpt, "--data.predict_path", str(source),
                    "--prediction_writer.output", str(folder / "out.csv")], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an IMDB folder (test.parquet, train.parquet)")
    p.add_argument("--ckpt", action="append", default=[], help="NAME=PATH, repeatable")
    p.add_argument("--seconds", type=float, default=8.0, help="per load level")
    p.add_argument("--predict_texts", type=int, default=25_000)
    args = p.parse_args()
    reviews = pq.read_table(args.data / "test.parquet", columns=["text"]).column("text").to_pylist()
    texts = [r[-2000:] for r in reviews[::25][:1000]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.ckpt:
            name, path = spec.split("=", 1)
            serve = [sys.executable, "cli.py", "serve", "--ckpt_path", path, "--port", "0"]
            rows.append(measure(name, serve, texts, args.seconds))
            rows[-1]["predict_cli_texts_per_s"] = round(
                predict_throughput(path, reviews[: args.predict_texts], Path(tmp))
            )
            rows[-1].update(completeness(path, texts[:200]))  # after the timings: not timed
            print(json.dumps(rows[-1]), flush=True)
        linear = Path(tmp) / "linear.pkl"
        fit_linear(args.data, linear)
        serve = [sys.executable, "-c", LINEAR_WORKER, "--ckpt_path", str(linear), "--port", "0"]
        rows.append(measure("tfidf_logreg", serve, texts, args.seconds, explain=False))
        print(json.dumps(rows[-1]), flush=True)
    print(f"# {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
