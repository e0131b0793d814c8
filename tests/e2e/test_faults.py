"""Faults: a killed run resumes exactly, checkpoints are atomic, NaN stops cleanly, bad input is refused."""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.text.sources import load_labelled
from rnn_lightning.training.cli import RNNLightningCLI
from tests.helpers import (
    ROOT,
    SUBPROCESS_ENV,
    ckpt_dir,
    make_dm,
    make_reviews,
    one_line_error,
    run_cli,
    runs,
    tiny_cli_args,
    write_splits,
)  # fmt: skip

PROGRESS = ["--trainer.callbacks+=tests.helpers.Progress", "--trainer.deterministic", "true"]


# ---------------------------------------------------------------- kill and resume


@pytest.mark.parametrize("helper, code", [("SigtermAt", 128 + signal.SIGTERM), ("SigintAt", 128 + signal.SIGINT)])
def test_signal_mid_epoch_saves_that_point_exits_nonzero_and_resumes_to_the_same_weights(
    cli, tiny_args, tmp_path, helper, code
):
    """SIGTERM/SIGINT at epoch 1, batch 2 (6 batches an epoch): the batch completes, last.ckpt holds global
    step 9, the exit status is 128 + signal; resuming gives bitwise the weights of an uninterrupted run."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"

    def args(root):
        return [
            *tiny_args,
            "--trainer.max_epochs",
            "3",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.deterministic",
            "true",
        ]

    cli("fit", *args(whole))
    result = cli("fit", *args(stopped), f"--trainer.callbacks+=tests.helpers.{helper}", check=False)
    assert result.code == code and "Traceback" not in result.output
    assert "continue with --ckpt_path last" in result.output
    state = torch.load(ckpt_dir(stopped) / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (1, 9)  # mid-epoch: where it stopped, not the epoch's start
    config = stopped / "lightning_logs" / "version_0" / "config.yaml"
    resumed = cli("fit", "--config", str(config), "--ckpt_path", "last")
    assert "not resumable" not in resumed.output  # Lightning's warning for loaders that restart the epoch
    a = torch.load(ckpt_dir(whole) / "last.ckpt", weights_only=True)
    b = torch.load(ckpt_dir(stopped) / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 18
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name  # bitwise


@pytest.mark.slow
def test_slurm_requeue_saves_at_a_batch_boundary_and_the_requeued_job_continues_the_run(tiny_args, tmp_path):
    """Under SLURM (its environment variables, a stand-in ``scontrol``), SIGUSR1 at the end of epoch 1,
    batch 1 (mid-step for Lightning's loop): the requeue checkpoint is written at the start of batch 2
    and ``scontrol requeue`` is called, which here kills the job at once (SIGKILL, the harshest stop). The same command again (the
    requeued job) resumes from that checkpoint, in the same TensorBoard run, to bitwise the weights of
    an uninterrupted run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\nkill -9 $PPID\n')
    scontrol.chmod(0o755)
    slurm = {**SUBPROCESS_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
             "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip
    whole, job = tmp_path / "whole", tmp_path / "job"

    def args(root):
        return [*tiny_args, "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(root), "--trainer.deterministic", "true"]  # fmt: skip

    run_cli("fit", *args(whole), env=SUBPROCESS_ENV)
    first = run_cli("fit", *args(job), "--trainer.callbacks+=tests.helpers.RequeueAt", env=slurm, check=False)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = job / "hpc_ckpt_1.ckpt"
    state = torch.load(hpc, weights_only=True)
    assert state["global_step"] == 8 and state["run_version"] == 0  # epoch 1 (6 batches an epoch), batch 2 not begun
    second = run_cli("fit", *args(job), env=slurm)
    assert f"SLURM requeue: resuming {hpc}" in second.stdout + second.stderr
    assert runs(job) == ["version_0"]  # the run continues
    a = torch.load(ckpt_dir(whole) / "last.ckpt", weights_only=True)
    b = torch.load(ckpt_dir(job) / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 18
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name  # bitwise


def test_last_with_a_runs_config_resumes_that_run_not_the_newest(cli, tiny_args, tmp_path):
    cli("fit", *tiny_args, "--trainer.max_epochs", "1")
    cli("fit", *tiny_args, "--trainer.max_epochs", "1", "--model.hidden_size", "12")  # version_1, newer
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    result = cli("fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs", "2")
    assert "version_0/checkpoints/last.ckpt" in result.output and "version_1/checkpoints" not in result.output
    assert torch.load(ckpt_dir(tmp_path, 0) / "last.ckpt", weights_only=True)["epoch"] == 1  # version_0 went on
    assert torch.load(ckpt_dir(tmp_path, 1) / "last.ckpt", weights_only=True)["epoch"] == 0  # version_1 untouched


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_what_was_written(cli, tiny_args, tmp_path, monkeypatch):
    import errno

    cli("fit", *tiny_args, "--trainer.max_epochs", "1")
    before = (ckpt_dir(tmp_path) / "last.ckpt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    line = one_line_error(
        cli("fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs", "2", check=False)
    )
    monkeypatch.setattr(torch, "save", real_save)
    assert line.startswith("error: No space left on device writing ") and ".ckpt" in line and "--ckpt_path last" in line
    assert (ckpt_dir(tmp_path) / "last.ckpt").read_bytes() == before  # the last good checkpoint, whole
    assert not [p for p in ckpt_dir(tmp_path).iterdir() if p.suffix == ".tmp"]  # no partial file left


@pytest.mark.slow
def test_two_fits_started_together_in_one_folder_get_two_runs(tiny_args, tmp_path):
    """Same working directory and the same (not yet written) token cache: both tokenize at once."""
    cmd = [sys.executable, str(ROOT / "cli.py"), "fit", *tiny_args, "--trainer.max_epochs", "1"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=SUBPROCESS_ENV) for _ in range(2)]  # fmt: skip
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert runs(tmp_path) == ["version_0", "version_1"]
    for version in (0, 1):
        assert (ckpt_dir(tmp_path, version) / "last.ckpt").exists()
        assert (tmp_path / "lightning_logs" / f"version_{version}" / "config.yaml").exists()
    caches = [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name != "arrow"]
    assert len(caches) == 1 and not caches[0].startswith(".tmp"), caches  # one cache, no half-written one left


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_same_weights(tiny_args, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    def args(root):
        return [*tiny_args, "--trainer.max_epochs", "4", "--trainer.default_root_dir", str(root), *PROGRESS]

    run_cli("fit", *args(whole))

    cmd = [sys.executable, str(ROOT / "cli.py"), "fit", *args(killed)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=SUBPROCESS_ENV,
    )
    for line in proc.stdout:
        if line.startswith("PROGRESS 2 3"):  # epoch 2 (0-based), 4th batch: last.ckpt holds epoch 1
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert torch.load(ckpt_dir(killed) / "last.ckpt", weights_only=True)["epoch"] == 1
    config = killed / "lightning_logs" / "version_0" / "config.yaml"
    config_before = config.read_text()

    resumed = run_cli("fit", "--config", str(config), "--ckpt_path", "last")
    assert "the TensorBoard run version_0 continues" in resumed.stdout + resumed.stderr
    assert runs(killed) == ["version_0"]  # no second run
    assert config.read_text() == config_before

    a = torch.load(ckpt_dir(whole) / "last.ckpt", weights_only=True)
    b = torch.load(ckpt_dir(killed) / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (3, a["global_step"])
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name  # bitwise
    for pa, pb in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert checkpoint.tokenizer_json(a) == checkpoint.tokenizer_json(b)


def test_resume_with_last_and_no_run_is_refused(cli, tiny_args):
    line = one_line_error(cli("fit", *tiny_args, "--ckpt_path", "last", check=False))
    assert "ckpt_path: 'last' but no run under" in line


# ---------------------------------------------------------------- atomic checkpoints


@pytest.mark.slow
def test_kill_during_checkpoint_write_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "last.ckpt"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from rnn_lightning.training.checkpoint_io import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"w": torch.arange(1000)}}, {str(target)!r})
        def dying_save(obj, f, *args, **kwargs):  # half a file, then SIGKILL, as a crash mid-save
            f.write(b"\\x80" * 4096); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        io.save_checkpoint({{"w": torch.zeros(1000)}}, {str(target)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(1000))  # the old one, intact
    assert list(tmp_path.glob(".last.ckpt.*.tmp"))  # the half-written temporary file...
    from rnn_lightning.training.checkpoint_io import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, str(target))
    assert not list(tmp_path.glob(".last.ckpt.*.tmp"))  # ...is swept by the next successful save
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))


# ---------------------------------------------------------------- NaN / inf


def test_infinite_gradient_stops_with_the_step_and_keeps_checkpoints(cli, tiny_args, tmp_path):
    # 86 fit reviews / 16 = 6 batches per epoch: step 8 is in epoch 1, after epoch 0's checkpoints.
    proc = cli(
        "fit",
        *tiny_args,
        "--trainer.max_epochs",
        "3",
        "--trainer.callbacks+=tests.helpers.PoisonGradient",
        "--trainer.callbacks.at_step=8",
        check=False,
    )
    line = one_line_error(proc)
    assert "training stopped: a gradient is NaN/inf at global step 8 (epoch 1)" in line
    last = ckpt_dir(tmp_path) / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 0 and all(torch.isfinite(t).all() for t in state["state_dict"].values())


def test_nan_loss_stops_with_the_step(cli, tiny_args, tmp_path):
    proc = cli(
        "fit",
        *tiny_args,
        "--trainer.max_epochs",
        "3",
        "--trainer.callbacks+=tests.helpers.PoisonWeights",
        "--trainer.callbacks.at_step=8",
        check=False,
    )
    assert "training stopped: the training loss is nan at global step 8 (epoch 1, batch 2)" in one_line_error(proc)
    best = next(ckpt_dir(tmp_path).glob("best-*.ckpt"))
    assert all(torch.isfinite(t).all() for t in torch.load(best, weights_only=True)["state_dict"].values())


def test_skip_policy_skips_the_bad_update_and_finishes(cli, tiny_args, tmp_path):
    with pytest.warns(UserWarning, match=r"skipped the update at global step 3 \(epoch 0\): a gradient is NaN/inf"):
        cli("fit", *tiny_args, "--model.on_nonfinite", "skip",
            "--trainer.callbacks+=tests.helpers.PoisonGradient", "--trainer.callbacks.at_step=3")  # fmt: skip
    state = torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["state_dict"].values())


# ---------------------------------------------------------------- output folder


def test_unwritable_run_folder_fails_before_training(cli, tiny_args, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = cli("fit", *tiny_args, "--trainer.default_root_dir", str(blocker / "runs"), check=False)
    line = one_line_error(proc)
    assert line.startswith("error: trainer.default_root_dir: cannot create") and "a_file" in line
    assert "Epoch" not in proc.output


def test_nearly_full_disk_fails_before_training(tiny_args, monkeypatch):
    import rnn_lightning.files as files_module

    usage = shutil.disk_usage("/")._replace(total=10 * 2**30, used=10 * 2**30 - 2**20, free=2**20)  # namedtuple's
    monkeypatch.setattr(files_module.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(InputError, match=r"only 1 MB free under .*this run needs about \d+ MB"):
        RNNLightningCLI(args=["fit", *tiny_args])


# ---------------------------------------------------------------- bad data


def test_one_class_only_is_refused(tmp_path):
    data = write_splits(tmp_path / "d", pd.DataFrame({"text": ["good film"] * 20, "label": [1] * 20}))
    with pytest.raises(
        InputError, match=r"data.label_field: .*holds only the class\(es\) \['1'\]; a classifier needs two or more"
    ):
        make_dm(data, tmp_path).prepare_data()


def test_a_single_class_name_is_refused(tmp_path):
    data = write_splits(tmp_path / "d", pd.DataFrame({"text": ["good film"] * 20, "label": ["pos"] * 20}))
    with pytest.raises(
        InputError, match=r"data.label_field: .*holds only the class\(es\) \['pos'\]; a classifier needs two or more"
    ):
        make_dm(data, tmp_path).prepare_data()


def test_validation_without_both_classes_is_refused(tmp_path):
    data = write_splits(tmp_path / "d", make_reviews(6, seed=0))
    with pytest.raises(InputError, match="data.val_fraction"):
        make_dm(data, tmp_path, val_fraction=0.05).prepare_data()


def test_fewer_reviews_than_a_batch_empty_texts_and_a_1mb_review_train(cli, tiny_args, tmp_path):
    train = make_reviews(12, seed=3)
    train.loc[0, "text"] = ""
    train.loc[1, "text"] = "great " * 200_000  # 1.2 MB
    data = write_splits(tmp_path / "d", train)
    with pytest.warns(UserWarning, match=r"1 empty training text\(s\) kept"):
        cli("fit", *tiny_args, "--data.dataset", str(data), "--data.batch_size", "1024",
            "--data.val_fraction", "0.3", "--trainer.max_epochs", "1")  # fmt: skip
    assert (ckpt_dir(tmp_path) / "last.ckpt").exists()


def test_non_utf8_review_files_are_read_with_replacement(aclimdb_dir, tmp_path):
    import shutil

    copy = tmp_path / "aclImdb"
    shutil.copytree(aclimdb_dir, copy)
    (copy / "train" / "pos" / "999_10.txt").write_bytes(b"caf\xe9 was great")
    assert "caf\ufffd was great" in load_labelled(str(copy)).splits["train"].texts.to_list()


def test_missing_split_file_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    make_reviews(10, seed=0).to_parquet(tmp_path / "d" / "train.parquet")
    (tmp_path / "e").mkdir()
    make_reviews(10, seed=0).to_parquet(tmp_path / "e" / "test.parquet")
    with pytest.raises(InputError, match="data.train_name: .* has no split 'train'"):
        load_labelled(str(tmp_path / "e"))
    assert "test" not in load_labelled(str(tmp_path / "d")).splits  # fit needs no test split; test says so:
    dm = make_dm(tmp_path / "d", tmp_path, val_fraction=0.3)
    dm.prepare_data()
    dm.setup("test")
    with pytest.raises(InputError, match="data.test_name: .* has no split 'test' to test on"):
        dm.test_dataloader()


# ---------------------------------------------------------------- bad config


def test_vocabulary_larger_than_the_words_warns_and_trains(cli, tiny_args, tmp_path):
    proc = cli("fit", *tiny_args, "--data.vocab_size", "5000", "--trainer.max_epochs", "1")
    assert "data.vocab_size is 5000 but the training texts hold only" in proc.output


# ---------------------------------------------------------------- bad checkpoints


@pytest.fixture(scope="module")
def tiny_ckpt(parquet_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    args = [*tiny_cli_args(parquet_dir, root), "--trainer.max_epochs", "1"]
    from rnn_lightning.training.cli import main

    main(["fit", *args])
    return args, ckpt_dir(root) / "last.ckpt"


@pytest.mark.parametrize("kind", ["text", "truncated", "pickled_object", "foreign_dict", "missing"])
def test_bad_checkpoints_are_refused_in_one_line(cli, tiny_ckpt, tmp_path, kind):
    args, good = tiny_ckpt
    bad, extra = tmp_path / "bad.ckpt", []
    if kind == "text":
        bad.write_text("hello")
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "pickled_object":
        state = torch.load(good, weights_only=True)
        state["extra"] = argparse.Namespace(anything=1)  # an arbitrary Python object: unpickling would run code
        torch.save(state, bad)
    elif kind == "foreign_dict":
        torch.save({"weights": torch.zeros(3)}, bad)
    expected = {
        "text": "is not a readable checkpoint", "truncated": "is not a readable checkpoint",
        "pickled_object": "weights_only loading refuses",
        "foreign_dict": "is not an rnn-lightning checkpoint", "missing": "does not exist",
    }[kind]  # fmt: skip
    line = one_line_error(cli("test", *args, *extra, "--ckpt_path", str(bad), check=False))
    assert line.startswith("error: ckpt_path:") and expected in line


def test_a_checkpoint_brings_its_own_model_shape(cli, tiny_ckpt):
    # LightningCLI takes the model's hyperparameters from the checkpoint: a config of another shape
    # still tests the checkpoint's model instead of failing on mismatched weights.
    args, good = tiny_ckpt
    proc = cli("test", *args, "--model.hidden_size", "4", "--model.cell", "gru", "--ckpt_path", str(good))
    assert "test/acc" in proc.output
    said = next(line for line in proc.output.splitlines() if "holds another network" in line)  # and it says so
    assert "model.cell='rnn' (config: 'gru')" in said and "model.hidden_size=" in said


def test_checkpoints_load_with_weights_only(tiny_ckpt):
    state = torch.load(tiny_ckpt[1], weights_only=True)
    assert isinstance(checkpoint.tokenizer_json(state), str)  # the tokenizer as JSON text
    plain = (int, float, str, bool, type(None))
    for v in state["hyper_parameters"].values():
        assert isinstance(v, plain) or isinstance(v, list) and all(isinstance(x, plain) for x in v), v
    assert np.isfinite(float(state["dropout_rng_state"].float().sum()))


def test_outputs_get_the_users_usual_permissions(cli, tiny_args, tmp_path):
    """Checkpoints and prediction files are written through a temporary file (mode 0600) and renamed: they
    must end with the mode the user's umask gives any other file."""
    old = os.umask(0o027)
    try:
        cli("fit", *tiny_args, "--trainer.max_epochs", "1")
        (tmp_path / "in.txt").write_text("great\n")
        cli("predict", *tiny_args, "--ckpt_path", "last", "--data.predict_path", str(tmp_path / "in.txt"))
    finally:
        os.umask(old)
    for path in (ckpt_dir(tmp_path) / "last.ckpt", tmp_path / "predictions.csv"):
        assert path.stat().st_mode & 0o777 == 0o640, path


def test_two_writers_of_one_file_keep_each_others_temporary_file(tmp_path):
    """A writer's successful rename sweeps only temporaries of dead processes, never one still being written."""
    from rnn_lightning.files import atomic_file

    target = tmp_path / "predictions.csv"
    with atomic_file(target) as slow:
        slow.write("first writer\n")
        with atomic_file(target) as fast:
            fast.write("second writer\n")
        assert target.read_text() == "second writer\n"
        assert len(list(tmp_path.glob(".predictions.csv.*.tmp"))) == 1  # the first writer's, kept
    assert target.read_text() == "first writer\n" and not list(tmp_path.glob(".*.tmp"))
