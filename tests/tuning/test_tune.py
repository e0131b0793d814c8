"""python cli.py tune: a study of real fits on tiny data, its outputs, its checks, resuming it."""

import csv
import subprocess
import sys
import time

import pytest
import yaml

pytest.importorskip("optuna")

import optuna  # noqa: E402

from rnn_lightning.training import tuning  # noqa: E402
from rnn_lightning.training.cli import main as cli_main  # noqa: E402
from tests.helpers import ROOT, SUBPROCESS_ENV, tiny_cli_args  # noqa: E402

SPACE = {
    "model.hidden_size": {"type": "int", "low": 4, "high": 16},
    "optimizer.init_args.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
    "model.cell": {"type": "categorical", "choices": ["rnn", "gru"]},
}


def search_file(tmp_path, space=SPACE, **top) -> str:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"metric": "val/acc", "direction": "maximize", "space": space, **top}))
    return str(path)


def tune(parquet_dir, root, search: str, trials: int, *extra: str) -> None:
    tuning.main(["--search", search, "--trials", str(trials), *extra, *tiny_cli_args(parquet_dir, root)])


def rows(root) -> list[dict]:
    with open(root / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_runs_real_fits_and_writes_table_best_config_and_plots(parquet_dir, tmp_path, capsys):
    root = tmp_path / "a"
    tune(parquet_dir, root, search_file(tmp_path), 3)
    table = rows(root)
    assert [r["state"] for r in table] == ["COMPLETE"] * 3 and all(float(r["val/acc"]) > 0 for r in table)
    assert {"model.hidden_size", "optimizer.init_args.lr", "model.cell", "duration_s"} <= set(table[0])
    for r in table:  # each trial is a fit of the CLI, with its run folder and saved config
        saved = yaml.safe_load(
            next((root / f"trial_{int(r['trial']):04d}").glob("lightning_logs/*/config.yaml")).read_text()
        )
        assert (
            saved["model"]["hidden_size"] == int(r["model.hidden_size"]) and saved["model"]["cell"] == r["model.cell"]
        )
    best = max(table, key=lambda r: float(r["val/acc"]))
    saved = yaml.safe_load((root / "best.yaml").read_text())
    assert saved["model"]["hidden_size"] == int(best["model.hidden_size"])
    assert {p.name for p in root.glob("*.png")} >= {"history.png", "parallel.png"}
    assert "best: trial" in capsys.readouterr().out
    cli_main(["fit", "--config", str(root / "best.yaml"), "--trainer.default_root_dir", str(tmp_path / "again"),
              "--trainer.max_epochs", "1"])  # fmt: skip
    assert (tmp_path / "again" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    # the same command and seed proposes the same trials
    tune(parquet_dir, tmp_path / "b", search_file(tmp_path), 3)
    params = lambda t: [(r["model.hidden_size"], r["optimizer.init_args.lr"], r["model.cell"]) for r in t]  # noqa: E731
    assert params(rows(tmp_path / "b")) == params(table)


def test_the_same_command_continues_the_study(parquet_dir, tmp_path):
    search = search_file(tmp_path)
    tune(parquet_dir, tmp_path, search, 2)
    tune(parquet_dir, tmp_path, search, 3)  # one more, not three
    assert [r["trial"] for r in rows(tmp_path)] == ["0", "1", "2"]
    tune(parquet_dir, tmp_path, search, 3)  # done: no trial runs
    assert len(rows(tmp_path)) == 3


def test_poor_trials_are_pruned_after_a_validation(parquet_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(tuning.PRUNERS, "median", lambda: optuna.pruners.ThresholdPruner(lower=1.01))
    tune(parquet_dir, tmp_path, search_file(tmp_path), 2)
    assert [r["state"] for r in rows(tmp_path)] == ["PRUNED", "PRUNED"]
    assert not list(tmp_path.glob("trial_*/lightning_logs/*/checkpoints/best-epoch01*"))  # stopped after epoch 0


BAD = [
    ("unknown key", {"model.hidden": {"type": "int", "low": 4, "high": 8}}, {}, "model.hidden"),
    ("wrong type", {"model.cell": {"type": "float", "low": 0.1, "high": 0.2}}, {}, "model.cell"),
    ("low above high", {"model.hidden_size": {"type": "int", "low": 9, "high": 4}}, {}, "low 9 > high 4"),
    ("a float for an int", {"model.hidden_size": {"type": "int", "low": 4.5, "high": 8}}, {}, "must be ints"),
    (
        "log from zero",
        {"model.dropout": {"type": "float", "low": 0, "high": 0.5, "log": True}},
        {},
        "log needs low > 0",
    ),
    ("the test split", SPACE, {"metric": "test/acc"}, "expected a validation metric"),
    ("the data", {"data.dataset": {"type": "categorical", "choices": ["a"]}}, {}, "the data itself is not searched"),
    ("no kind", {"model.dropout": {"low": 0, "high": 1}}, {}, "search.space.model.dropout: expected {type"),
]


@pytest.mark.parametrize("name, space, top, message", BAD, ids=[b[0] for b in BAD])
def test_bad_search_files_are_one_line_before_any_trial(parquet_dir, tmp_path, capsys, name, space, top, message):
    with pytest.raises(SystemExit) as e:
        tune(parquet_dir, tmp_path, search_file(tmp_path, space, **top), 2)
    said = str(e.value) if isinstance(e.value.code, str) else capsys.readouterr().err
    assert message in said and said.strip().count("\n") == 0
    assert not list(tmp_path.glob("trial_*")) and not (tmp_path / "study.db").exists()


@pytest.mark.parametrize("search", sorted((ROOT / "configs" / "search").glob("*.yaml")), ids=lambda p: p.name)
def test_each_shipped_search_space_fits_the_preset_its_command_names(search, parquet_dir):
    command = search.read_text().split("--config ", 1)[1].split()[0]  # the file opens with the command to run
    space = tuning.parse_search(str(search))["space"]
    assert space and tuning.check_fit_args(["--config", str(ROOT / command), "--data.dataset", str(parquet_dir)], space)


def test_a_storage_that_cannot_be_opened_is_one_line(parquet_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        tune(parquet_dir, tmp_path, search_file(tmp_path), 2, "--storage", "postgresql://nobody@127.0.0.1:1/none")
    assert str(e.value).startswith("error: storage: cannot open 'postgresql://") and "\n" not in str(e.value)
    assert not list(tmp_path.glob("trial_*"))


def test_a_tuner_that_loses_the_race_to_create_the_schema_tries_again(parquet_dir, tmp_path, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    made = optuna.storages.RDBStorage
    calls = []

    class Racing(made):  # the first open meets another tuner's schema version row, as two new tuners do
        def __init__(self, url, **kwargs):
            calls.append(url)
            if len(calls) == 1:
                made(url, **kwargs)
                raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
            super().__init__(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    monkeypatch.setattr(tuning.time, "sleep", lambda s: None)
    tune(parquet_dir, tmp_path, search_file(tmp_path), 1, "--pruner", "none")
    assert len(calls) == 2 and len(rows(tmp_path)) == 1


@pytest.mark.slow
def test_two_tuners_on_one_sqlite_study_finish_with_the_right_count(parquet_dir, tmp_path):
    search = search_file(tmp_path)
    command = [sys.executable, str(ROOT / "cli.py"), "tune", "--search", search, "--trials", "4",
               *tiny_cli_args(parquet_dir, tmp_path)]  # fmt: skip
    procs = [subprocess.Popen(command, cwd=ROOT, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]  # fmt: skip
    for proc in procs:
        assert proc.wait(600) == 0, proc.stderr.read().decode()[-2000:]
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    finished = [
        t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == 4 and all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)


KILLER = """
import os, signal, sys
from lightning.pytorch import Callback
from rnn_lightning.training import cli, tuning
tuning.HEARTBEAT_S, tuning.GRACE_S = 1, 2
class Die(Callback):  # the second trial's process dies after its first epoch
    def on_train_epoch_end(self, trainer, pl_module):
        if "trial_0001" in str(trainer.default_root_dir):
            os.kill(os.getpid(), signal.SIGKILL)
init = cli.RNNLightningCLI.__init__
def with_die(self, *args, trainer_defaults=None, **kwargs):
    if trainer_defaults and os.environ.get("KILL_TRIAL") == "1":
        trainer_defaults = {**trainer_defaults, "callbacks": [*trainer_defaults["callbacks"], Die()]}
    init(self, *args, trainer_defaults=trainer_defaults, **kwargs)
cli.RNNLightningCLI.__init__ = with_die
tuning.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_trial_killed_mid_fit_is_failed_and_retried_not_counted(parquet_dir, tmp_path):
    search = search_file(tmp_path)
    args = ["--search", search, "--trials", "3", *tiny_cli_args(parquet_dir, tmp_path)]
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=ROOT, env={**SUBPROCESS_ENV, "KILL_TRIAL": "1"},
                            capture_output=True)  # fmt: skip
    assert killed.returncode == -9
    time.sleep(4)  # past the heartbeat's grace period
    again = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states[1] == "FAIL" and states.count("COMPLETE") + states.count("PRUNED") == 3
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert retried and retried[0].params == study.trials[1].params
