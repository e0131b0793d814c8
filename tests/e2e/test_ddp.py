"""DDP on 2 CPU processes (gloo) through the same CLI: one run directory, exact metrics, one vocabulary;
a lost process ends the run in one line naming what became of it."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rnn_lightning.training.failures import one_line
from rnn_lightning.training.peers import describe_peers
from tests.helpers import ROOT, Result, make_reviews, one_line_error, run_cli, runs

DDP = ["--config", str(ROOT / "configs" / "ddp_cpu.yaml")]
slow = pytest.mark.slow  # each test so marked starts several multi-process runs


def parse_test_metrics(stdout: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(test/\w+)\s+([-\d.e]+)", stdout)}


@pytest.fixture()
def odd_data(tmp_path):
    """47 test reviews: not divisible by 2 processes, so a padding sampler would count one twice."""
    root = tmp_path / "odd"
    root.mkdir()
    make_reviews(96, seed=1).to_parquet(root / "train.parquet")
    make_reviews(47, seed=5).to_parquet(root / "test.parquet")
    return root


@slow
def test_ddp_fit_writes_one_run_and_tests_exactly_like_one_process(tiny_args, odd_data, tmp_path):
    args = [*tiny_args, "--data.dataset", str(odd_data), "--data.batch_size", "5"]
    fit = run_cli("fit", *args, *DDP)
    assert re.search(r"Tokenizer [0-9a-f]{16} identical on all 2 processes", fit.stdout + fit.stderr)
    assert runs(tmp_path) == ["version_0"]  # one TensorBoard run, written by rank 0 only
    ckpt_dir = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert len(list(ckpt_dir.glob("best-*.ckpt"))) == 1 and (ckpt_dir / "last.ckpt").exists()
    last = str(ckpt_dir / "last.ckpt")

    two = parse_test_metrics(run_cli("test", *args, *DDP, "--ckpt_path", last).stdout)
    one = parse_test_metrics(run_cli("test", *args, "--ckpt_path", last).stdout)  # the DDP checkpoint, 1 process
    assert {"test/acc", "test/f1", "test/auroc", "test/loss"} <= two.keys()
    for key in ("test/acc", "test/f1", "test/auroc"):
        assert two[key] == one[key], key  # every one of the 47 reviews counted exactly once
    assert two["test/loss"] == pytest.approx(one["test/loss"], abs=1e-6)

    # Predictions from 2 processes come back in input order, one row per input line.
    lines = [f"review {i} " + ("great superb" if i % 3 else "awful dull") for i in range(23)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    outputs = {}
    for name, extra in (("two", DDP), ("one", [])):
        out = tmp_path / f"{name}.csv"
        run_cli(
            "predict",
            *args,
            *extra,
            "--ckpt_path",
            last,
            "--data.predict_path",
            str(tmp_path / "in.txt"),
            "--prediction_writer.output",
            str(out),
        )
        outputs[name] = out.read_text()
    assert outputs["two"] == outputs["one"]
    assert [row.split(",")[0] for row in outputs["two"].splitlines()[1:]] == [str(i) for i in range(1, 24)]


@slow
def test_ddp_run_resumes_from_last_checkpoint(tiny_args, tmp_path):
    import torch

    run_cli("fit", *tiny_args, *DDP, "--trainer.max_epochs", "1")
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    resumed = run_cli("fit", *tiny_args, *DDP, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    assert runs(tmp_path) == ["version_0"]  # the run continues
    state = torch.load(last, weights_only=True)
    assert (first["epoch"], state["epoch"]) == (0, 1) and state["global_step"] == 2 * first["global_step"]


@slow
def test_ddp_multiclass_test_metrics_equal_one_process(tmp_path):
    """Three classes from files with their own column names: under DDP the multiclass metrics (macro-F1,
    one-vs-rest AUROC, per-class F1, balanced accuracy) equal one process's, with 41 test texts."""
    import json

    from tests.text.test_datasets import args_for, three_classes

    files = {}
    for split, n, seed in (("train", 90, 0), ("test", 41, 2)):
        three_classes(n, seed).to_csv(tmp_path / f"{split}.csv", index=False)
        files[split] = str(tmp_path / f"{split}.csv")
    args = [*args_for(json.dumps(files), tmp_path), "--data.val_fraction", "0.2", "--trainer.max_epochs", "2"]
    run_cli("fit", *args, *DDP)
    last = str(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    two = parse_test_metrics(run_cli("test", *args, *DDP, "--ckpt_path", last).stdout)
    one = parse_test_metrics(run_cli("test", *args, "--ckpt_path", last).stdout)
    assert {"test/acc", "test/f1", "test/auroc", "test/balanced_acc", "test/f1_ok"} <= two.keys()
    for key in two:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


@slow
@pytest.mark.parametrize(
    "how, seen",
    [
        ("stop", "waited past trainer.strategy.init_args.timeout for another process (process 1 is stopped (SIGSTOP))"),
        ("exit", "lost another process (process 1 exited with code 9)"),
    ],
)
def test_a_stuck_or_dead_process_ends_the_run_in_one_line_naming_it(tiny_args, tmp_path, how, seen):
    """Process 1 stops (alive, never answering) or dies at its third batch: process 0 ends within the
    strategy's timeout with one line naming process 1's state, and no process of the run is left. A dead
    process's connection closes before its exit status can be read: process 0 waits for the status."""
    result = run_cli(
        "fit", *tiny_args, *DDP, "--trainer.strategy.init_args.timeout", "0:00:40",
        "--trainer.callbacks+=tests.helpers.RankFails", "--trainer.callbacks.init_args.how", how, check=False,
    )  # fmt: skip
    line = one_line_error(Result(result.returncode, result.stdout + result.stderr))
    assert line.startswith("error: DDP: process 0 ") and seen in line, line
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftover == [], "a process of the run is still there"


# ---------------------------------------------------------------- peer forensics, without a run


def launched(*procs) -> SimpleNamespace:
    """A stand-in trainer whose launcher started ``procs`` for local ranks 1, 2, ..."""
    return SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(procs=list(procs))))


def python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_peer_still_exiting_is_waited_for_and_named_with_its_exit_code():
    dying = python("import os, time; time.sleep(0.5); os._exit(9)")  # alive when asked, dead soon after
    assert describe_peers(launched(dying)) == "process 1 exited with code 9"


def test_a_stopped_peer_is_named_at_once_and_a_running_one_after_the_wait():
    stopped, running = python("import time; time.sleep(60)"), python("import time; time.sleep(60)")
    try:
        stopped.send_signal(signal.SIGSTOP)
        while Path(f"/proc/{stopped.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            time.sleep(0.01)
        start = time.monotonic()
        assert describe_peers(launched(running, stopped)) == "process 2 is stopped (SIGSTOP)"
        assert time.monotonic() - start < 5  # no waiting once a peer's state is known
        start = time.monotonic()
        assert describe_peers(launched(running), wait_s=0.3) == ""  # running: nothing to say of it
        assert 0.3 <= time.monotonic() - start < 5
        assert describe_peers(launched()) == ""  # torchrun, SLURM, one process: no peers of its own
    finally:
        for proc in (stopped, running):
            proc.kill()
            proc.wait()


def test_a_lost_peer_is_one_line_naming_the_rank_what_happened_and_the_transport_error(monkeypatch):
    for name in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    closed = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Read error [127.0.0.1]:26253: Connection reset by peer"
    )
    closed.peers = "process 1 exited with code 9"
    assert one_line(closed) == (
        "error: DDP: process 0 lost another process (process 1 exited with code 9), so every process stops "
        "(Read error [127.0.0.1]:26253: Connection reset by peer)"
    )
    monkeypatch.setenv("LOCAL_RANK", "1")
    timed_out = RuntimeError("[/gloo/pair.cc:102] Timed out waiting 40000ms for send operation to complete")
    assert one_line(timed_out) == (
        "error: DDP: process 1 waited past trainer.strategy.init_args.timeout for another process (dead, stopped or "
        "stuck), so every process stops (Timed out waiting 40000ms for send operation to complete)"
    )
    assert one_line(RuntimeError("CUDA out of memory")) is None  # not a lost peer: a traceback
