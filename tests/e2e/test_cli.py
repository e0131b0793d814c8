"""The command line, end to end on tiny data: fit -> test -> predict, configs, outputs, one-line errors."""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnn_lightning import checkpoint
from rnn_lightning import command as rnn_command
from rnn_lightning.models import LanguageModel, SemiSupervisedClassifier, TextClassifier
from rnn_lightning.serving import ExportedPredictor
from rnn_lightning.training import cli as rnn_cli
from rnn_lightning.training import run_folder
from rnn_lightning.training.cli import RNNLightningCLI, main
from tests.helpers import ROOT, ckpt_dir, make_reviews, one_line_error, run_cli, runs, tiny_cli_args, write_splits

WARNINGS_NOBODY_CAN_ACT_ON = (
    "Skipping setting a default `ModelSummary`",
    "litlogger",
    "LeafSpec",
    "won't be reloaded",
    "exists and is not empty",
    "callbacks used to create the checkpoint need to be provided",
    "LightningCLI's args parameter",  # the command hands each subcommand the rest of its line
)


def test_fit_then_test_then_predict_everything_under_the_root(cli, tiny_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # nothing may land in the current folder
    before = set(p.name for p in (tmp_path / "..").iterdir())
    fit = cli("fit", *tiny_args)
    run_dir = tmp_path / "lightning_logs" / "version_0"
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in names and any(name.startswith("best-") for name in names)
    assert (run_dir / "config.yaml").exists() and list(run_dir.glob("events.out.tfevents.*"))
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    ckpt = checkpoint.load_checkpoint(best)  # plain types only: safe to load
    assert ckpt["hyper_parameters"]["vocab_size"] == 64 and ckpt["hyper_parameters"]["cell"] == "rnn"
    assert '"<pad>":0' in checkpoint.tokenizer_json(ckpt)

    test = cli("test", *tiny_args, "--ckpt_path", "best")
    assert re.search(r"test/acc\s+[\d.]+", test.output)

    (tmp_path / "in.txt").write_text("great superb film\nawful dull boring\n")
    predict = cli("predict", *tiny_args, "--ckpt_path", str(best), "--data.predict_path", str(tmp_path / "in.txt"))
    out = tmp_path / "predictions.csv"  # the default name, under trainer.default_root_dir
    assert f"Wrote 2 predictions to {out}" in predict.output
    rows = out.read_text().splitlines()
    assert rows[0] == "id,label,prob,prob_0,prob_1,error" and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert runs(tmp_path) == ["version_0", "version_1"]  # fit and test; predict opens no run
    assert set(p.name for p in (tmp_path / "..").iterdir()) == before  # nothing beside the root
    for output in (fit.output, test.output, predict.output):
        for warning in WARNINGS_NOBODY_CAN_ACT_ON:
            assert warning not in output, warning


def test_model_summary_prints_exact_parameter_count(cli, tiny_args, monkeypatch):
    monkeypatch.setattr(rnn_cli, "native_bf16", lambda: True)  # whatever this machine's CPU
    result = cli(
        "fit", *tiny_args, "--data.vocab_size", "10000", "--data.max_len", "8", "--model.embed_dim", "100",
        "--model.hidden_size", "64", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1",
    )  # fmt: skip
    assert re.search(r"total\s+1,018,881", result.output)
    assert "This CPU computes bfloat16 natively: --config configs/bf16.yaml" in result.output  # float32 rnn fit


def test_the_bf16_hint_is_only_for_float32_rnn_fits_on_cpus_with_native_bf16(monkeypatch):
    from lightning.pytorch import Trainer

    rnn, gru = TextClassifier(), TextClassifier(cell="gru")
    fp32, bf16 = (Trainer(accelerator="cpu", precision=p, logger=False) for p in ("32-true", "bf16-mixed"))
    monkeypatch.setattr(rnn_cli, "native_bf16", lambda: True)
    assert rnn_cli.bf16_hint(fp32, rnn) and not rnn_cli.bf16_hint(bf16, rnn) and not rnn_cli.bf16_hint(fp32, gru)
    monkeypatch.setattr(rnn_cli, "native_bf16", lambda: False)
    assert not rnn_cli.bf16_hint(fp32, rnn)


def test_checkpointing_and_logging_can_be_switched_off(cli, tiny_args, tmp_path):
    cli("fit", *tiny_args, "--trainer.max_epochs", "1", "--trainer.enable_checkpointing", "false")
    assert runs(tmp_path) == ["version_0"] and not list(tmp_path.rglob("*.ckpt"))
    cli("fit", *tiny_args, "--trainer.max_epochs", "1", "--trainer.logger", "false")
    assert runs(tmp_path) == ["version_0"]  # no second TensorBoard run
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()  # without a logger, under the root


def test_resuming_a_finished_run_says_how_to_go_on(cli, tiny_args, tmp_path):
    cli("fit", *tiny_args, "--trainer.max_epochs", "1")
    again = cli("fit", *tiny_args, "--trainer.max_epochs", "1", "--ckpt_path", "last")
    assert "raise --trainer.max_epochs" in again.output
    further = cli("fit", *tiny_args, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert "raise --trainer.max_epochs" not in further.output
    assert torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)["epoch"] == 1
    assert runs(tmp_path) == ["version_0"]  # the run continued


def configs() -> list[list[str]]:
    """Every recipe alone, and every trainer fragment after base.yaml, as their headers say."""
    base = ROOT / "configs" / "base.yaml"
    layered = {"bf16.yaml": [base], "ddp.yaml": [base], "ddp_cpu.yaml": [base]}
    out = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        out.append([str(p) for p in [*layered.get(path.name, []), path]])
    return out


@pytest.mark.parametrize("stack", configs(), ids=lambda stack: "+".join(s.rsplit("/", 1)[-1] for s in stack))
def test_every_config_parses_and_builds(stack, parquet_dir, tmp_path):
    """Every config builds its model, data module and trainer (a GPU one is built on the CPU here)."""
    args = [a for path in stack for a in ("--config", path)]
    if any("ddp.yaml" in s for s in stack):
        args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"]
    model_class = LanguageModel if stack[-1].endswith("lm.yaml") else SemiSupervisedClassifier  # the pretrain command's
    data = parquet_dir
    if stack[-1].endswith("goemotions.yaml"):  # multi-label: its label column holds lists
        data = tmp_path / "emotions"
        frame = make_reviews(48, seed=1)
        frame["label"] = [["pos"] if y else ["neg", "pos"] if i % 3 == 0 else [] for i, y in enumerate(frame["label"])]
        write_splits(data, frame.rename(columns={"label": "labels"}))
    if stack[-1].endswith("student.yaml"):  # reads the unlabelled split; the teacher is loaded by fit
        data = write_splits(tmp_path / "data", make_reviews(96, seed=1), make_reviews(48, seed=2))
        make_reviews(50, seed=3).drop(columns="label").to_parquet(data / "unsupervised.parquet")
        main(["fit", *tiny_cli_args(data, tmp_path / "teacher"), "--trainer.max_epochs", "1"])
        args += ["--model.teacher", str(ckpt_dir(tmp_path / "teacher") / "last.ckpt")]
    cli = RNNLightningCLI(
        model_class,
        args=[*args, "--data.dataset", str(data), "--data.cache_dir", str(tmp_path),
              "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )  # fmt: skip
    assert cli.model.hparams.vocab_size == cli.datamodule.vocab_size  # linked, never stated twice
    assert cli.model.hparams.pad_id == cli.datamodule.pad_id
    assert cli.trainer.logger.save_dir == str(tmp_path)  # the run goes where default_root_dir says


def test_preset_fragments_change_only_what_they_say(parquet_dir, tmp_path):
    bigram = RNNLightningCLI(
        args=[
            "--config",
            str(ROOT / "configs" / "bigru.yaml"),
            "--config",
            str(ROOT / "configs" / "bigru_bigram.yaml"),
            "--data.dataset",
            str(parquet_dir),
            "--data.cache_dir",
            str(tmp_path),
        ],
        run=False,
    )
    hp = bigram.model.hparams
    assert (hp.cell, hp.hidden_size, hp.bidirectional, hp.pooling, hp.dropout, hp.bigram_buckets) == (
        "gru",
        96,
        True,
        "max_mean",
        0.5,
        524_288,
    )
    assert bigram.datamodule.val_split == "blocks" and bigram.trainer.max_epochs == 2


@pytest.mark.parametrize(
    "override, field",
    [
        (["--model.cell", "transformer"], "model.cell"),
        (["--data.vocab_size", "2"], "data.vocab_size"),
        (["--data.max_len", "0"], "data.max_len"),
        (["--data.max_len", "eighty"], "data.max_len"),
        (["--data.dataset", "./does/not/exist"], "data.dataset"),
        (["--model.no_such_key", "1"], "no_such_key"),
        (["--model.hidden_size", "0"], "model.hidden_size"),
        (["--model.dropout", "1.5"], "model.dropout"),
        (["--prediction_writer.output", "out.txt"], "prediction_writer.output"),
        (["--optimizer.init_args.lr", "-0.1"], "optimizer / lr_scheduler: Invalid learning rate"),
        (["--data.vocab_size", "100000000000"], "model.vocab_size: 100000000000 rows of 16 need about"),
        (["--data.val_fraction", "0.9999"], "data.val_fraction: 0.9999 of 96 training texts leaves a training set"),
    ],
)
def test_bad_config_fails_at_once_with_one_line_naming_the_field(cli, tiny_args, tmp_path, override, field):
    result = cli("fit", *tiny_args, *override, check=False)
    assert field in one_line_error(result), result.output[-2000:]
    assert "Epoch" not in result.output and runs(tmp_path) == []  # nothing done, no empty run left


def test_parquet_without_text_column_fails_with_one_line(cli, tiny_args, tmp_path):
    import pandas as pd

    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "test"):
        pd.DataFrame({"review": ["a b c"] * 4, "label": [0, 1] * 2}).to_parquet(bad / f"{split}.parquet")
    line = one_line_error(cli("fit", *tiny_args, "--data.dataset", str(bad), check=False))
    assert "data.text_field" in line and "'text'" in line and "['review', 'label']" in line  # names what exists


def test_aclimdb_folder_trains_through_the_cli(cli, tiny_args, aclimdb_dir, tmp_path):
    # Also: an LR scheduler, gradient accumulation, clipping and bf16 autocast chosen on the command line.
    cli(
        "fit", *tiny_args, "--data.dataset", str(aclimdb_dir), "--trainer.max_epochs", "1",
        "--lr_scheduler", "CosineAnnealingLR", "--lr_scheduler.T_max", "3",
        "--trainer.accumulate_grad_batches", "2", "--trainer.gradient_clip_val", "1.0",
        "--config", str(ROOT / "configs" / "bf16.yaml"),
    )  # fmt: skip
    last = torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and last["global_step"] > 0


def test_lr_scheduler_can_step_every_optimizer_step(cli, tiny_args, tmp_path):
    cli(
        "fit", *tiny_args, "--lr_scheduler", "CosineAnnealingLR", "--lr_scheduler.T_max", "100",
        "--lr_scheduler_interval", "step",
    )  # fmt: skip
    last = torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)
    assert last["global_step"] > 2  # more steps than epochs
    assert last["lr_schedulers"][0]["last_epoch"] == last["global_step"]  # stepped once per optimizer step


def test_cosine_over_fit_anneals_to_zero_over_the_runs_own_steps(cli, tiny_args, tmp_path):
    """No step count in the config: the run's (epochs x batches, accumulation counted) sizes it."""
    cli(
        "fit", *tiny_args, "--lr_scheduler", "rnn_lightning.training.schedules.CosineOverFit",
        "--trainer.accumulate_grad_batches", "2",
    )  # fmt: skip
    last = torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)
    assert last["global_step"] > 2 and last["lr_schedulers"][0]["last_epoch"] == last["global_step"]
    assert "total_steps" not in last["lr_schedulers"][0]  # a resume counts its own
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_cosine_over_fit_is_pytorchs_cosine_with_the_step_count_filled_in():
    from rnn_lightning.training.schedules import CosineOverFit

    opts = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3) for _ in range(2)]
    ours, theirs = CosineOverFit(opts[0], eta_min=1e-5), torch.optim.lr_scheduler.CosineAnnealingLR(opts[1], 176, 1e-5)
    ours.total_steps = 176
    for _ in range(176):
        assert opts[0].param_groups[0]["lr"] == pytest.approx(opts[1].param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opts[0].step(), opts[1].step(), ours.step(), theirs.step()
    for _ in range(3):  # past the end it stays at eta_min (PyTorch's would climb back up)
        ours.step()
        assert opts[0].param_groups[0]["lr"] == pytest.approx(1e-5)


def test_learning_rate_finder_runs_from_the_cli(cli, tiny_args, tmp_path):
    result = cli(
        "fit", *tiny_args, "--trainer.callbacks+=rnn_lightning.training.callbacks.LearningRateSuggestion",
        "--trainer.callbacks.num_training_steps=30", "--trainer.max_epochs", "1", "--data.batch_size", "2",
    )  # fmt: skip
    assert re.search(r"Suggested learning rate: [\d.e-]+", result.output)
    assert (tmp_path / "lightning_logs" / "version_0" / "lr_finder.png").exists()


@pytest.mark.slow
def test_console_of_real_commands_shows_no_warning_nobody_can_act_on(tiny_args, tmp_path):
    """As a user runs them, in processes of their own: fit, resume, test, predict."""
    (tmp_path / "in.txt").write_text("great film\n")
    outputs = [
        run_cli("fit", *tiny_args, "--trainer.max_epochs", "1"),
        run_cli("fit", *tiny_args, "--trainer.max_epochs", "2", "--ckpt_path", "last"),
        run_cli("test", *tiny_args, "--ckpt_path", "best"),
        run_cli("predict", *tiny_args, "--ckpt_path", "last", "--data.predict_path", str(tmp_path / "in.txt")),
    ]
    for proc in outputs:
        for warning in WARNINGS_NOBODY_CAN_ACT_ON:
            assert warning not in proc.stdout + proc.stderr, warning
    assert "Wrote 1 predictions to" in outputs[-1].stdout + outputs[-1].stderr


# ---------------------------------------------------------------- the one command (rnn_lightning/command.py)


def command(capsys, *args: str) -> tuple[int, str]:
    """``rnn-lightning *args`` in this process: (exit code, stdout + stderr + the exit message)."""
    capsys.readouterr()
    code, message = 0, ""
    try:
        rnn_command.main(list(args))
    except SystemExit as e:
        code, message = (1, e.code) if isinstance(e.code, str) else (e.code or 0, "")
    out, err = capsys.readouterr()
    return code, out + err + message


@pytest.mark.parametrize("args, code", [(["--help"], 0), ([], 2)])
def test_the_command_lists_its_eight_subcommands(capsys, args, code):
    exit_code, output = command(capsys, *args)
    assert exit_code == code
    listed = re.findall(r"^  (\w+)  +\S", output, flags=re.MULTILINE)
    assert listed == ["fit", "validate", "test", "predict", "pretrain", "export", "serve", "tune"]


@pytest.mark.parametrize(
    "name, shows",
    [
        ("fit", "--model.cell"),
        ("test", "--ckpt_path"),
        ("pretrain", "--model.cutoffs"),  # LanguageModel's own setting
        ("export", "ckpt_path"),
        ("serve", "--max_chars"),
        ("tune", "--search"),
    ],
)
def test_each_subcommand_has_its_own_help(capsys, name, shows):
    code, output = command(capsys, name, "--help")
    assert code == 0 and shows in output
    assert f"rnn-lightning {name}" in output or f"rnn-lightning [options] {name}" in output


def test_an_unknown_subcommand_is_one_line(capsys):
    code, output = command(capsys, "fitt", "--config", "x.yaml")
    assert code == 1 and output.strip().count("\n") == 0
    assert output.startswith("error: 'fitt' is not a command; choose from fit, validate, test, predict, pretrain")


def test_fit_export_and_pretrain_through_the_command(capsys, tiny_args, tmp_path):
    code, output = command(capsys, "fit", *tiny_args, "--trainer.max_epochs", "1")
    assert code == 0, output[-2000:]
    last = ckpt_dir(tmp_path) / "last.ckpt"
    code, output = command(capsys, "export", str(last), str(tmp_path / "exported"))
    assert code == 0 and f"exported to {tmp_path / 'exported'}" in output
    assert ExportedPredictor(str(tmp_path / "exported"))(["a fine film"])[0]["label"] is not None
    code, output = command(capsys, "export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out"))
    assert code == 1 and output.startswith("error: ") and output.strip().count("\n") == 0
    lm_root = tmp_path / "lm"
    lm_args = [a if a != str(tmp_path) else str(lm_root) for a in tiny_args]
    code, output = command(capsys, "pretrain", *lm_args, "--trainer.max_epochs", "1", "--model.cutoffs", "[50]")
    assert code == 0, output[-2000:]
    saved = checkpoint.load_checkpoint(str(ckpt_dir(lm_root) / "last.ckpt"))
    assert "cutoffs" in saved[checkpoint.HPARAMS_KEY]  # a language model


@pytest.mark.slow
def test_the_installed_script_and_cli_py_are_one_program_and_serve_starts_without_lightning():
    script = shutil.which("rnn-lightning", path=str(Path(sys.executable).parent))
    assert script, "pip install -e . installs the rnn-lightning script"
    installed = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    checkout = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], capture_output=True, text=True)
    assert installed.returncode == checkout.returncode == 0
    assert installed.stdout.replace("rnn-lightning", "python cli.py") == checkout.stdout
    code = (
        "import sys; from rnn_lightning.command import main\n"
        "try: main(['serve', '--help'])\n"
        "except SystemExit: pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'torchmetrics'}))"
    )
    started = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert started.stdout.strip().splitlines()[-1] == "[]", started.stderr[-2000:]


# ---------------------------------------------------------------- issue 38: what a run reports


def test_hparams_tab_gets_the_optimizer_scheduler_and_trainer_settings_and_no_bookkeeping(cli, tiny_args, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger

    logged = []
    real = TensorBoardLogger.log_hyperparams

    def spy(self, params, metrics=None, step=None):
        if metrics:  # the call that fills TensorBoard's HPARAMS tab
            logged.append(dict(params))
        return real(self, params, metrics, step)

    monkeypatch.setattr(TensorBoardLogger, "log_hyperparams", spy)
    cli(
        "fit", *tiny_args, "--trainer.max_epochs", "1", "--optimizer.init_args.lr", "0.003",
        "--lr_scheduler", "CosineAnnealingLR", "--lr_scheduler.T_max", "3",
    )  # fmt: skip
    [params] = logged
    assert params["optimizer"] == "Adam" and params["optimizer.lr"] == 0.003
    assert params["lr_scheduler"] == "CosineAnnealingLR" and params["lr_scheduler.T_max"] == 3
    assert params["trainer.max_epochs"] == 1 and params["data.batch_size"] == 16 and params["cell"] == "rnn"
    assert not [k for k in params if "_instantiator" in k or "_class_path" in k]


def test_a_default_run_stopped_by_ctrl_c_then_tested_and_predicted_says_only_what_is_so(
    cli, tiny_args, tmp_path, monkeypatch, recwarn
):
    """No --trainer.default_root_dir (runs under ./lightning_logs): Ctrl+C is named as SIGINT, saving the stop's
    checkpoint says nothing about weights_only, and test/predict of the run's checkpoints do not warn that the
    checkpoint folder changed (nor for a checkpoint moved elsewhere)."""
    monkeypatch.chdir(tmp_path)
    root_at = tiny_args.index("--trainer.default_root_dir")
    args = tiny_args[:root_at] + tiny_args[root_at + 2 :]
    stopped = cli("fit", *args, "--trainer.callbacks+=tests.helpers.SigintAt", check=False)
    assert stopped.code == 128 + signal.SIGINT, stopped.output[-2000:]
    assert "Received SIGINT: 2" in stopped.output and "SIGTERM" not in stopped.output
    assert "weights_only" not in stopped.output
    (tmp_path / "in.txt").write_text("great film\n")
    cli("test", *args, "--ckpt_path", "best")
    moved = shutil.copy(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", tmp_path / "m.ckpt")
    cli("predict", *args, "--ckpt_path", str(moved), "--data.predict_path", str(tmp_path / "in.txt"))
    assert runs(tmp_path) == ["version_0", "version_1"]
    changed = [str(w.message) for w in recwarn if "dirpath has changed" in str(w.message)]
    assert not changed, changed


def test_best_is_the_checkpoint_the_callback_recorded_as_best_not_the_newest_file(tmp_path):
    """save_top_k 2: epoch 0 scored 0.90, epoch 2 scored 0.80 and was written later; each file records, in its
    ModelCheckpoint state, the best so far (epoch 0). The run folder may have moved since (other absolute paths)."""
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    first, later = folder / "best-epoch00-acc0.9000.ckpt", folder / "best-epoch02-acc0.8000.ckpt"
    for path, step in ((first, 6), (later, 18), (folder / "last.ckpt", 18)):
        recorded = f"/moved/lightning_logs/version_0/checkpoints/{first.name}"
        state = {"best_model_path": recorded, "best_k_models": {recorded: torch.tensor(0.9)}}
        torch.save({"global_step": step, "callbacks": {"ModelCheckpoint{'monitor': 'val/acc'}": state}}, path)
        os.utime(path, (step, step))  # written in step order
    assert checkpoint.find_checkpoint(tmp_path / "lightning_logs", "best") == first
    assert checkpoint.find_checkpoint(tmp_path / "lightning_logs", "best", folder.parent) == first
    assert checkpoint.find_checkpoint(tmp_path / "lightning_logs", "last") == folder / "last.ckpt"


def test_a_resume_takes_the_runs_lock_before_it_reads_the_checkpoint(cli, tiny_args, tmp_path):
    """Another process is writing version_0 (it holds the lock) and its last.ckpt is being rewritten (here: not
    a checkpoint at all): a second resume is refused for the lock, without reading the file."""
    import fcntl

    run = tmp_path / "lightning_logs" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"half written")
    with open(run / run_folder.LOCK_NAME, "w") as held:
        held.write("pid 4242 on elsewhere")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = one_line_error(cli("fit", *tiny_args, "--ckpt_path", "last", check=False))
    assert "is being written by pid 4242 on elsewhere" in line and "not a readable checkpoint" not in line
    assert not run_folder._held  # released as the command ended


@pytest.mark.parametrize("function", ["rnn_lightning.command.main", "rnn_lightning.files.atomic_file"])
def test_a_callable_field_may_not_name_a_function_of_this_project(cli, tiny_args, tmp_path, function):
    result = cli(
        "fit", *tiny_args, "--lr_scheduler", "torch.optim.lr_scheduler.LambdaLR",
        "--lr_scheduler.lr_lambda", function, check=False,
    )  # fmt: skip
    line = one_line_error(result)
    assert line.startswith(f"error: lr_scheduler.lr_lambda: {function!r} is not allowed;") and "torch.optim" in line
    assert runs(tmp_path) == []


def test_the_progress_bar_shows_the_losses_and_the_monitored_metric_only(parquet_dir, tmp_path, monkeypatch):
    from lightning.pytorch import Trainer

    from rnn_lightning.training.callbacks import ChosenMetricsBar

    args = [*tiny_cli_args(parquet_dir, tmp_path), "--trainer.enable_progress_bar", "true"]
    built = RNNLightningCLI(args=args, run=False)
    [bar] = [c for c in built.trainer.callbacks if isinstance(c, ChosenMetricsBar)]
    assert built.trainer.progress_bar_callback is bar and bar.monitor == "val/acc"  # the checkpoint's
    logged = {"train/loss_step": 0.7, "val/loss": 0.6, "val/acc": 0.8, **{f"val/f1_{k}": 0.5 for k in range(28)}}
    monkeypatch.setattr(Trainer, "progress_bar_metrics", property(lambda trainer: logged))
    assert set(bar.get_metrics(built.trainer, built.model)) == {"train/loss_step", "val/loss", "val/acc", "v_num"}
    quiet = RNNLightningCLI(args=tiny_cli_args(parquet_dir, tmp_path), run=False)  # enable_progress_bar false
    assert not [c for c in quiet.trainer.callbacks if isinstance(c, ChosenMetricsBar)]


@pytest.mark.slow
@pytest.mark.parametrize("args, code", [(["--help"], 0), ([], 2)])
def test_cli_py_names_serve_and_tune(args, code):
    """``python cli.py --help`` and a bare ``python cli.py``, as a person runs them."""
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    listed = re.findall(r"^  (\w+)  +\S", proc.stdout, flags=re.MULTILINE)
    assert {"serve", "tune"} <= set(listed) and proc.stdout.startswith("usage: python cli.py <command>")
