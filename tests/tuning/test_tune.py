"""python cli.py tune: a study of real fits on tiny data, its outputs, its checks, resuming it."""

import csv
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import yaml

pytest.importorskip("optuna")

import optuna  # noqa: E402

from rnn_lightning.errors import InputError  # noqa: E402
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


def test_a_study_runs_real_fits_and_writes_table_best_config_and_plots(parquet_dir, tmp_path, capsys, monkeypatch):
    root = tmp_path / "a"
    monkeypatch.chdir(tmp_path)  # the data, the cache and the root named relative to the study's folder
    args = tiny_cli_args(Path(os.path.relpath(parquet_dir)), Path("a"))
    tuning.main(["--search", search_file(tmp_path), "--trials", "3", *args])
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
    # best.yaml trains from any folder, into that folder (or the one --trainer.default_root_dir names)
    assert "default_root_dir" not in saved["trainer"] and Path(saved["data"]["dataset"]) == parquet_dir
    monkeypatch.chdir((tmp_path / "elsewhere").mkdir() or tmp_path / "elsewhere")
    cli_main(["fit", "--config", str(root / "best.yaml"), "--trainer.max_epochs", "1"])
    assert (tmp_path / "elsewhere" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert [p.name for p in (root / f"trial_{int(best['trial']):04d}" / "lightning_logs").iterdir()] == ["version_0"]
    # the same command and seed proposes the same trials
    tune(parquet_dir, tmp_path / "b", search_file(tmp_path), 3)
    assert params(rows(tmp_path / "b")) == params(table)


def params(table: list[dict]) -> list[tuple]:
    return [(r["model.hidden_size"], r["optimizer.init_args.lr"], r["model.cell"]) for r in table]


def test_the_same_command_continues_the_study(parquet_dir, tmp_path):
    search = search_file(tmp_path)
    tune(parquet_dir, tmp_path, search, 2)
    tune(parquet_dir, tmp_path, search, 3)  # one more, not three
    assert [r["trial"] for r in rows(tmp_path)] == ["0", "1", "2"]
    assert len(set(params(rows(tmp_path)))) == 3  # the continued study proposes values no trial ran
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
    ("a NaN bound", {"model.dropout": {"type": "float", "low": float("nan"), "high": 0.5}}, {}, "must be finite"),
    ("an infinite bound", {"model.dropout": {"type": "float", "low": 0.1, "high": float("inf")}}, {}, "must be finite"),
    ("a number for a key", {1: {"type": "int", "low": 4, "high": 8}}, {}, "search.space.1 in '"),
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
def test_a_trial_killed_mid_fit_is_failed_and_retried_at_once_not_counted(parquet_dir, tmp_path):
    search = search_file(tmp_path)
    args = ["--search", search, "--trials", "3", *tiny_cli_args(parquet_dir, tmp_path)]
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=ROOT, env={**SUBPROCESS_ENV, "KILL_TRIAL": "1"},
                            capture_output=True)  # fmt: skip
    assert killed.returncode == -9
    # at once, well inside the heartbeat's grace: the dead tuner's trial is known by its free lock
    again = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states[1] == "FAIL" and states.count("COMPLETE") + states.count("PRUNED") == 3
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert retried and retried[0].params == study.trials[1].params


def test_tuners_sharing_a_study_propose_different_values(tmp_path):
    args = tuning.parse_args(["--search", "unused", "--trials", "2"])[0]
    first, _ = tuning.open_study(args, tmp_path, "maximize")  # two tuners of the same command, started together
    second, _ = tuning.open_study(args, tmp_path, "maximize")
    a, b = first.ask(), second.ask()
    assert tuning.suggest(a, SPACE) != tuning.suggest(b, SPACE)


def test_a_metric_fit_does_not_log_ends_the_tune_after_one_trial_naming_those_it_logs(parquet_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        tune(parquet_dir, tmp_path, search_file(tmp_path, metric="val/accuracy"), 1, "--timeout_s", "120")
    line = str(e.value)
    assert line.startswith("error: search.metric: fit logs no 'val/accuracy'; it logs ") and "\n" not in line
    assert "val/acc," in line and "val/loss" in line
    assert [p.name for p in tmp_path.glob("trial_*")] == ["trial_0000"]


def test_trials_that_all_fail_end_the_tune_after_a_few_in_a_row(parquet_dir, tmp_path):
    # every fit's loss is NaN (model.on_nonfinite: stop); --timeout_s only bounds a tune that would not end
    with pytest.raises(SystemExit) as e:
        tune(parquet_dir, tmp_path, search_file(tmp_path), 1, "--pruner", "none", "--timeout_s", "120",
             "--trainer.callbacks+=tests.helpers.PoisonWeights")  # fmt: skip
    assert str(e.value).startswith(f"error: tune: the last {tuning.FAILURES_IN_A_ROW} trials failed, the last one with")
    assert [r["state"] for r in rows(tmp_path)] == ["FAIL"] * tuning.FAILURES_IN_A_ROW


def test_the_metric_and_direction_default_to_those_fit_checkpoints_on(parquet_dir, tmp_path):
    config = tuning.check_fit_args(
        [*tiny_cli_args(parquet_dir, tmp_path), "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "min"], SPACE
    )
    search = tuning.parse_search(search_file(tmp_path, metric=None, direction=None))
    settled = tuning.settle_metric(search, config)
    assert (settled["metric"], settled["direction"]) == ("val/loss", "minimize")
    with pytest.raises(InputError, match="search.direction: not given; say maximize or minimize for val/f1"):
        tuning.settle_metric({**search, "metric": "val/f1"}, config)
    assert "val/acc" not in Path(tuning.__file__).read_text()  # no metric's name is built into tuning


def test_a_read_only_study_database_is_one_line_naming_it(parquet_dir, tmp_path):
    db = tmp_path / "study.db"
    optuna.create_study(study_name="tune", storage=f"sqlite:///{db}")
    url = f"sqlite:///file:{db}?mode=ro&uri=true"  # as a database this user may not write
    with pytest.raises(SystemExit) as e:
        tune(parquet_dir, tmp_path, search_file(tmp_path), 1, "--storage", url)
    assert str(e.value).startswith(f"error: storage: cannot write {url!r} (OperationalError: ")
    assert "readonly database" in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob("trial_*"))


def test_plots_lie_inside_their_figures_name_the_metric_and_show_every_trial():
    study = optuna.create_study(direction="minimize")
    distributions = {
        "model.hidden_size": optuna.distributions.IntDistribution(4, 16),
        "optimizer.init_args.weight_decay": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
        "model.cell": optuna.distributions.CategoricalDistribution(["rnn", "gru"]),
    }
    for i in range(6):
        params = {"model.hidden_size": 4 + 2 * i, "optimizer.init_args.weight_decay": 1e-4 * 3**i,
                  "model.cell": ["rnn", "gru"][i % 2]}  # fmt: skip
        study.add_trial(optuna.create_trial(params=params, distributions=distributions, value=0.7 - 0.05 * i))
    figures = tuning.draw_plots(study, "val/loss")
    assert set(figures) == {"history", "importances", "parallel"}
    for name, figure in figures.items():
        renderer, page = figure.canvas.get_renderer(), figure.bbox
        for ax in figure.axes:  # titles, tick labels and legends included
            box = ax.get_tightbbox(renderer)
            assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 <= box.y1 <= page.y1 + 1, (
                name
            )
    parallel = figures["parallel"].axes[0]
    assert parallel.get_xticklabels()[0].get_text() == "val/loss"
    lines = next(c for c in parallel.collections if isinstance(c, matplotlib.collections.LineCollection))
    grey = matplotlib.colors.to_rgb(parallel.get_facecolor())
    for end in (0.0, 1.0):  # the worst trial's colour as well as the best's stands out from the axes
        colour = lines.get_cmap()(end)[:3]
        assert sum((a - b) ** 2 for a, b in zip(colour, grey, strict=True)) ** 0.5 > 0.25


@pytest.mark.slow
def test_ctrl_c_in_a_trial_fails_and_queues_it_again_and_says_how_tune_goes_on(parquet_dir, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    search = search_file(tmp_path)
    with pytest.raises(SystemExit) as e:  # Ctrl+C in the first trial's second epoch
        tune(parquet_dir, tmp_path, search, 2, "--pruner", "none", "--trainer.callbacks+=tests.helpers.SigintAt")
    assert e.value.code == 128 + signal.SIGINT
    said = caplog.text + capsys.readouterr().err
    assert "--ckpt_path" not in said and "the same tune command runs this trial again" in said
    assert "tune stopped by SIGINT: trial 0 failed and queued to run again; the same command continues" in said
    tune(parquet_dir, tmp_path, search, 2, "--pruner", "none")  # at once: two trials complete, the first again
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].params == study.trials[0].params


def test_one_trial_draws_its_history_only_and_warns_of_nothing(recwarn, capsys):
    study = optuna.create_study(direction="maximize")
    distributions = {"model.dropout": optuna.distributions.FloatDistribution(0.1, 0.6)}
    study.add_trial(optuna.create_trial(params={"model.dropout": 0.3}, distributions=distributions, value=0.5))
    assert set(tuning.draw_plots(study, "val/macro_f1")) == {"history"}
    assert "importances.png not drawn: it needs two complete trials" in capsys.readouterr().out
    assert not [w for w in recwarn if "optuna" in str(w.filename) or "importances" in str(w.message)]
