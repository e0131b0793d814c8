"""Stop signals in every phase (DataLoader workers, validation, tokenizer training, cache building), exact
resumes, and two writers of one run."""

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from rnn_lightning.training.run_folder import LOCK_NAME
from tests.helpers import ROOT, SUBPROCESS_ENV, ckpt_dir, make_reviews, one_line_error, tiny_cli_args, write_splits

HERE = "tests.e2e.test_signals_trust"  # the callbacks below, as a config names them


class SigtermAtValidation(Callback):
    """Sends this process SIGTERM as validation batch ``batch`` of epoch ``epoch`` starts (not the sanity check,
    nor in a resumed run, whose config.yaml names this callback too)."""

    def __init__(self, epoch: int = 1, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or trainer.ckpt_path is not None:
            return
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGTERM)


class ReportValidation(Callback):
    """Prints ``VALIDATED <epoch> <val/acc>`` at the end of every validation (not the sanity check)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            print(f"VALIDATED {trainer.current_epoch} {float(trainer.callback_metrics['val/acc']):.4f}", flush=True)


# ---------------------------------------------------------------- tests


def test_resuming_mid_epoch_with_another_batch_size_is_refused_in_one_line(cli, tiny_args, tmp_path):
    cli("fit", *tiny_args, "--trainer.max_epochs", "3", "--trainer.callbacks+=tests.helpers.SigtermAt", check=False)
    last = ckpt_dir(tmp_path) / "last.ckpt"
    before = last.read_bytes()
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    line = one_line_error(
        cli("fit", "--config", str(config), "--ckpt_path", "last", "--data.batch_size", "8", check=False)
    )
    assert line.startswith("error: data.batch_size: the checkpoint stopped mid-epoch (epoch 1, batch 3)")
    assert "data.batch_size 16, got 8" in line
    assert last.read_bytes() == before


def test_an_end_of_epoch_checkpoint_resumes_with_another_batch_size(cli, tiny_args, tmp_path):
    cli("fit", *tiny_args, "--trainer.max_epochs", "1")
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    cli("fit", "--config", str(config), "--ckpt_path", "last", "--data.batch_size", "8", "--trainer.max_epochs", "2")
    assert torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)["epoch"] == 1


def test_a_run_held_by_another_fit_is_refused_in_one_line(cli, tiny_args, tmp_path):
    cli("fit", *tiny_args, "--trainer.max_epochs", "1")
    last = ckpt_dir(tmp_path) / "last.ckpt"
    before = last.read_bytes()
    run = tmp_path / "lightning_logs" / "version_0"
    with open(run / LOCK_NAME, "r+") as other:  # another process's fit of this run, as its lock shows
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write("pid 4242 on elsewhere")
        other.flush()
        result = cli("fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.max_epochs", "2",
                     check=False)  # fmt: skip
    line = one_line_error(result)
    assert (
        line
        == f"error: ckpt_path: the run {run} is being written by pid 4242 on elsewhere; wait for it to end or stop it, then resume"
    )
    assert last.read_bytes() == before
    cli("fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.max_epochs", "2")  # lock gone
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_sigterm_during_validation_validates_that_epoch_after_resuming(cli, tiny_args, tmp_path):
    """3 validation batches an epoch; SIGTERM as epoch 1's first starts: resumed, epoch 1 is validated (its
    val/acc as in an uninterrupted run) and the run ends bitwise as that one."""

    def args(root):
        return [*tiny_args, "--data.val_fraction", "0.5", "--trainer.max_epochs", "3", "--trainer.default_root_dir",
                str(root), "--trainer.deterministic", "true", f"--trainer.callbacks+={HERE}.ReportValidation"]  # fmt: skip

    def validated(output):
        return [line for line in output.splitlines() if line.startswith("VALIDATED")]

    whole = cli("fit", *args(tmp_path / "whole"))
    stopped = cli("fit", *args(tmp_path / "stopped"), f"--trainer.callbacks+={HERE}.SigtermAtValidation", check=False)
    assert stopped.code == 143 and "Traceback" not in stopped.output
    config = tmp_path / "stopped" / "lightning_logs" / "version_0" / "config.yaml"
    resumed = cli("fit", "--config", str(config), "--ckpt_path", "last")
    assert validated(stopped.output) + validated(resumed.output) == validated(whole.output)
    assert [line.split()[1] for line in validated(whole.output)] == ["0", "1", "2"]
    a = torch.load(ckpt_dir(tmp_path / "whole") / "last.ckpt", weights_only=True)
    b = torch.load(ckpt_dir(tmp_path / "stopped") / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


def _start(args, root: Path) -> subprocess.Popen:
    """``cli.py fit`` in a process group of its own (as SLURM and a terminal start a job)."""
    env = SUBPROCESS_ENV
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "fit", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)  # fmt: skip


def _signal_group_at(proc: subprocess.Popen, marker: str, signum: int) -> str:
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith(marker):
            os.killpg(proc.pid, signum)
            break
    out.append(proc.stdout.read())
    proc.wait(timeout=120)
    return "".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_the_process_group_with_dataloader_workers_saves_and_resumes(tiny_args, tmp_path, signum):
    args = [
        *tiny_args,
        "--trainer.max_epochs",
        "3",
        "--data.num_workers",
        "2",
        "--trainer.callbacks+=tests.helpers.Progress",
    ]
    output = _signal_group_at(_start(args, tmp_path), "PROGRESS 1 2", signum)
    assert "Traceback" not in output and "DataLoader worker" not in output, output[-3000:]
    assert f"Stopped by {signal.Signals(signum).name} at epoch 1" in output
    state = torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (1, 9)  # the stop's point, not epoch 0's end
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    resumed = _start(["--config", str(config), "--ckpt_path", "last"], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()[-3000:]
    assert torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)["global_step"] == 18


@pytest.mark.slow
def test_sigterm_while_tokenizing_exits_143_and_leaves_no_temporary_files(tmp_path):
    data = write_splits(tmp_path / "big", make_reviews(20000, 1), make_reviews(100, 2))
    args = [*tiny_cli_args(data, tmp_path), "--data.vocab_size", "5000"]
    proc = _start(args, tmp_path)
    output = _signal_group_at(proc, "Tokenizing", signal.SIGTERM)
    assert proc.returncode == 143, output[-3000:]
    assert "Stopped by SIGTERM while preparing the data" in output and "Traceback" not in output
    cache = tmp_path / "cache"
    assert not [p for p in cache.rglob("*") if p.name.startswith(".tmp") or p.suffix == ".tmp"]
    assert not [p for p in cache.iterdir() if p.is_dir() and p.name != "arrow"]  # no cache, whole or half
