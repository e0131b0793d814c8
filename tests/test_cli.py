"""The command line, end to end on tiny data: fit -> test -> predict, configs, and one-line errors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnn_lightning.cli import RNNLightningCLI
from tests.conftest import ROOT


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    if check and proc.returncode != 0:
        pytest.fail(f"cli.py {' '.join(args[:1])} failed:\n{proc.stderr[-3000:]}")
    return proc


def test_fit_then_test_then_predict(tiny_args, tmp_path):
    run_cli("fit", *tiny_args)
    run_dir = tmp_path / "lightning_logs" / "version_0"
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(name.startswith("best-") for name in ckpts)
    assert (run_dir / "config.yaml").exists()
    assert list(run_dir.glob("events.out.tfevents.*"))
    best = next(p for p in (run_dir / "checkpoints").glob("best-*.ckpt"))

    ckpt = torch.load(best, map_location="cpu", weights_only=True)  # plain types only: safe to load
    assert ckpt["hyper_parameters"]["vocab_size"] == 64
    assert "tokenizer" in ckpt["IMDBDataModule"] and '"<pad>":0' in ckpt["IMDBDataModule"]["tokenizer"]

    test = run_cli("test", *tiny_args, "--ckpt_path", str(best))
    assert "test/acc" in test.stdout

    run_cli("predict", *tiny_args, "--ckpt_path", str(best))


def test_model_summary_prints_exact_parameter_count(tiny_args, tmp_path):
    proc = run_cli(
        "fit",
        *tiny_args,
        "--data.vocab_size",
        "10000",
        "--data.max_len",
        "8",
        "--model.embed_dim",
        "100",
        "--model.hidden_size",
        "64",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
    )
    assert "total" in proc.stdout + proc.stderr
    assert "1,018,881" in proc.stdout + proc.stderr


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_config_parses_and_builds(config, parquet_dir, tmp_path):
    """Every config builds its model, data module and trainer; a trainer fragment (no ``model:``)
    is combined with base.yaml, and a GPU one is built on the CPU here."""
    path = ROOT / "configs" / config
    text = path.read_text()
    args = ["--config", str(path)]
    if "\nmodel:" not in text:
        args = ["--config", str(ROOT / "configs" / "base.yaml"), *args]
    if "accelerator: gpu" in text:
        args += [
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.strategy",
            "auto",
            "--trainer.precision",
            "32-true",
        ]
    cli = RNNLightningCLI(
        args=[*args, "--data.dataset", str(parquet_dir), "--data.cache_dir", str(tmp_path)], run=False
    )
    assert cli.model.hparams.vocab_size == cli.datamodule.vocab_size  # linked, never stated twice
    assert cli.model.hparams.pad_id == cli.datamodule.pad_id


@pytest.mark.parametrize(
    "override, field",
    [
        (["--model.cell", "transformer"], "model.cell"),
        (["--data.vocab_size", "2"], "data.vocab_size"),
        (["--data.max_len", "0"], "data.max_len"),
        (["--data.dataset", "./does/not/exist"], "data.dataset"),
        (["--model.no_such_key", "1"], "no_such_key"),
    ],
)
def test_bad_config_fails_at_once_with_one_line_naming_the_field(tiny_args, override, field):
    proc = run_cli("fit", *tiny_args, *override, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert field in last, proc.stderr[-2000:]


def test_parquet_without_text_column_fails_with_one_line(tiny_args, tmp_path):
    import pandas as pd

    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "test"):
        pd.DataFrame({"review": ["a b c"] * 4, "label": [0, 1] * 2}).to_parquet(bad / f"{split}.parquet")
    proc = run_cli("fit", *tiny_args, "--data.dataset", str(bad), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "data.dataset" in proc.stderr.strip().splitlines()[-1] and "'text'" in proc.stderr


def test_aclimdb_folder_trains_through_the_cli(tiny_args, aclimdb_dir, tmp_path):
    # Also: an LR scheduler, gradient accumulation, clipping and bf16 autocast chosen on the command line.
    run_cli(
        "fit", *tiny_args, "--data.dataset", str(aclimdb_dir), "--trainer.max_epochs", "1",
        "--lr_scheduler", "CosineAnnealingLR", "--lr_scheduler.T_max", "3",
        "--trainer.accumulate_grad_batches", "2", "--trainer.gradient_clip_val", "1.0", "--trainer.precision", "bf16-mixed",
    )  # fmt: skip
    assert list(Path(tmp_path, "lightning_logs", "version_0", "checkpoints").glob("last.ckpt"))


def test_lr_scheduler_can_step_every_optimizer_step(tiny_args, tmp_path):
    run_cli(
        "fit", *tiny_args, "--lr_scheduler", "CosineAnnealingLR", "--lr_scheduler.T_max", "100",
        "--lr_scheduler_interval", "step",
    )  # fmt: skip
    last = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] > 2  # more steps than epochs
    assert last["lr_schedulers"][0]["last_epoch"] == last["global_step"]  # stepped once per optimizer step


def test_learning_rate_finder_runs_from_the_cli(tiny_args, tmp_path):
    proc = run_cli(
        "fit", *tiny_args, "--trainer.callbacks+=rnn_lightning.callbacks.LearningRateSuggestion",
        "--trainer.callbacks.num_training_steps=30", "--trainer.max_epochs", "1", "--data.batch_size", "2",
    )  # fmt: skip
    assert re.search(r"Suggested learning rate: [\d.e-]+", proc.stdout + proc.stderr)
    assert (tmp_path / "lightning_logs" / "version_0" / "lr_finder.png").exists()
