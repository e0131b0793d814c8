"""What several test modules share: tiny data, CLI runners, and callbacks the fault tests add through
the CLI (``--trainer.callbacks+=tests.helpers.X``). Fixtures are in ``conftest.py``."""

import logging
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]

NEUTRAL = "the a movie film plot actor scene story it was and of to in this that with".split()
POSITIVE = "great wonderful excellent superb loved brilliant".split()
NEGATIVE = "awful terrible boring worst hated dull".split()


def make_reviews(n: int, seed: int) -> pd.DataFrame:
    """``n`` reviews, half positive: neutral filler with a few sentiment words, some ``<br />`` tags."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(5, 30))]
        for _ in range(3):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        text = " ".join(words).capitalize() + rng.choice([".", "!", " <br /><br />Really."])
        rows.append({"text": text, "label": label})
    return pd.DataFrame(rows)


def write_splits(folder: Path, train: pd.DataFrame, test: pd.DataFrame | None = None) -> Path:
    """``folder/train.parquet`` and ``folder/test.parquet`` (the train frame again if no test frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    train.to_parquet(folder / "train.parquet")
    (train if test is None else test).to_parquet(folder / "test.parquet")
    return folder


def make_dm(dataset, tmp_path: Path, **kwargs):
    """A data module on tiny settings, caching under ``tmp_path``."""
    from rnn_lightning.text import TextDataModule

    kwargs = {"vocab_size": 40, "max_len": 12, "batch_size": 8, "cache_dir": str(tmp_path / "cache"), **kwargs}
    return TextDataModule(dataset=dataset if isinstance(dataset, dict) else str(dataset), **kwargs)


def tiny_cli_args(dataset: Path, root: Path) -> list[str]:
    """CLI arguments for a fast run of configs/base.yaml on tiny data, every output under ``root``."""
    return [
        "--config", str(ROOT / "configs" / "base.yaml"),
        "--data.dataset", str(dataset),
        "--data.cache_dir", str(root / "cache"),
        "--data.vocab_size", "64",
        "--data.max_len", "24",
        "--data.batch_size", "16",
        "--model.embed_dim", "16",
        "--model.hidden_size", "8",
        "--trainer.max_epochs", "2",
        "--trainer.log_every_n_steps", "2",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def runs(root: Path) -> list[str]:
    """The run folders a command left under ``root``."""
    folder = root / "lightning_logs"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def ckpt_dir(root: Path, version: int = 0) -> Path:
    return root / "lightning_logs" / f"version_{version}" / "checkpoints"


@dataclass
class Result:
    code: int
    output: str  # stdout and stderr together

    @property
    def last_line(self) -> str:
        lines = self.output.strip().splitlines()
        return lines[-1] if lines else ""


class InProcessCLI:
    """Runs ``cli.py``'s ``main`` in this process (no interpreter start and imports per run), as a user would."""

    def __init__(self, capfd, caplog) -> None:
        self.capfd, self.caplog = capfd, caplog  # Lightning's messages go through logging under pytest
        caplog.set_level(logging.INFO)

    def __call__(self, *args: str, check: bool = True) -> Result:
        from rnn_lightning.training.cli import main

        self.capfd.readouterr()
        self.caplog.clear()
        code, message = 0, ""
        try:
            main(list(args))
        except SystemExit as e:  # sys.exit("error: ...") carries the line the interpreter would print
            code, message = (1, e.code) if isinstance(e.code, str) else (e.code or 0, "")
        out, err = self.capfd.readouterr()
        result = Result(code, self.caplog.text + out + err + message)
        if check and code != 0:
            pytest.fail(f"cli {args[0]} failed ({code}):\n{result.output[-3000:]}")
        return result


def run_cli(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``python cli.py ...`` in a subprocess: for signals, DDP and what needs a process of its own."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=600, **kwargs
    )
    if check and proc.returncode != 0:
        pytest.fail(f"cli.py {' '.join(args[:1])} failed:\n{proc.stderr[-3000:]}")
    return proc


def one_line_error(result: Result) -> str:
    """The error line of a failed command, after checking it failed without a traceback."""
    assert result.code != 0
    assert "Traceback" not in result.output, result.output[-3000:]
    return result.last_line


# ---------------------------------------------------------------- callbacks for fault tests


class Progress(Callback):
    """Prints ``PROGRESS <epoch> <batch>`` before each training batch and sleeps a little, so a test
    can kill the process at a known point in the middle of an epoch."""

    def __init__(self, sleep: float = 0.05) -> None:
        self.sleep = sleep

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        print(f"PROGRESS {trainer.current_epoch} {batch_idx}", flush=True)
        time.sleep(self.sleep)


class SigtermAt(Callback):
    """Sends this process SIGTERM as batch ``batch`` of epoch ``epoch`` starts (it still completes)."""

    signum = signal.SIGTERM

    def __init__(self, epoch: int = 1, batch: int = 2) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)


class SigintAt(SigtermAt):
    """The same with SIGINT (Ctrl+C)."""

    signum = signal.SIGINT


class RequeueAt(Callback):
    """Sends this process SIGUSR1 (SLURM's notice that the job will be stopped and requeued) at the end
    of batch ``batch`` of epoch ``epoch``: after its optimizer step, before Lightning counts it done."""

    def __init__(self, epoch: int = 1, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGUSR1)


class SigtermAtPredict(Callback):
    """Sends this process SIGTERM as the first ``predict`` batch starts."""

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class RankFails(Callback):
    """Under DDP, process ``rank`` stops (SIGSTOP: alive but stuck) or dies (exit 9) as training batch
    ``batch`` starts; the others wait for it in the next collective."""

    def __init__(self, rank: int = 1, batch: int = 2, how: str = "stop") -> None:
        self.rank, self.batch, self.how = rank, batch, how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and batch_idx == self.batch:
            if self.how == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(9)


class PoisonGradient(Callback):
    """Makes one gradient infinite at global step ``at_step``."""

    def __init__(self, at_step: int = 0) -> None:
        self.at_step = at_step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.at_step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")


class PoisonWeights(Callback):
    """Sets the embedding to NaN before the batch of global step ``at_step``: the loss becomes NaN."""

    def __init__(self, at_step: int = 0) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                pl_module.net.embedding.weight.fill_(float("nan"))


SUBPROCESS_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
