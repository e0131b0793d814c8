"""``python cli.py tune``: an Optuna study over the same configs, each trial a real ``fit`` of the same CLI.

    python cli.py tune --search configs/search/sst5.yaml --trials 40 --config configs/sst5.yaml --data.dataset ../shared/sst5

The tune options (``--search``, ``--trials``, ``--storage``, ``--study_name``, ``--seed``, ``--pruner``,
``--timeout_s``) come first or anywhere; every other argument is ``fit``'s, as on its command line. The study
lives in Optuna's RDB storage (SQLite under ``trainer.default_root_dir`` unless ``--storage`` names PostgreSQL
or MySQL, which several machines can share), so the same command continues it. A trial whose tuner died is
failed and retried once: at the next start on the same machine (its folder's lock is free), or elsewhere by
Optuna's heartbeat once its grace period passes. ``--trials`` counts complete and pruned trials; a tuner stops
after ``FAILURES_IN_A_ROW`` failed trials of its own in a row. Optuna is the ``tune`` extra, imported by this
command only.
"""

import argparse
import csv
import fcntl
import glob
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import yaml

from rnn_lightning.errors import InputError, said
from rnn_lightning.files import atomic_file

SEARCH_KINDS = {"float": ("low", "high", "log"), "int": ("low", "high", "log"), "categorical": ("choices",)}
HEARTBEAT_S, GRACE_S = 30, 90  # a running trial's pulse, and how long past it the trial counts as dead
OPEN_TRIES = 3  # attempts at opening the storage
TRIAL_FOLDER = "trial_{:04d}"  # each trial's trainer.default_root_dir, under the tune's
OWNER_LOCK = "tune.lock"  # in a trial's folder, locked by the tuner running it (flock: freed when it dies)
FAILURES_IN_A_ROW = 3  # a tuner's failed trials in a row that end it: a fault every trial meets, not bad luck
LIGHTEST = 0.4  # the parallel plot's colours start here on Optuna's scale: its lightest end is the axes' grey
# fit settings that name files to read (data.tokenizer_from follows the last two): made absolute once, with
# data.cache_dir, so that trials and best.yaml run from any folder
PATH_SETTINGS = ("data.dataset", "model.init_from", "model.teacher")


def parse_search(path: str) -> dict:
    """The search file: ``metric`` (a ``val/`` metric; None: the one fit's checkpoint monitors), ``direction``
    (None: to be settled with fit's config) and ``space`` (dotted key -> a distribution). Each problem is one
    line naming the key."""
    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"search: cannot read {path!r} ({type(e).__name__}: {said(e)})") from None
    if not isinstance(spec, dict) or set(spec) - {"metric", "direction", "space"} or "space" not in spec:
        raise InputError(f"search: {path!r} must be a mapping of metric, direction and space")
    metric, direction = spec.get("metric"), spec.get("direction")
    if metric is not None and (not isinstance(metric, str) or not metric.startswith("val/")):
        raise InputError(f"search.metric: {metric!r}; expected a validation metric (val/...), never the test split")
    if direction not in (None, "maximize", "minimize"):
        raise InputError(f"search.direction: {direction!r}; expected maximize or minimize")
    space = spec["space"]
    if not isinstance(space, dict) or not space:
        raise InputError("search.space: expected a mapping of config keys to distributions")
    for key, dist in space.items():
        where = f"search.space.{key}"
        if not isinstance(key, str):
            raise InputError(f"{where} in {path!r}: a key is a fit setting's dotted name (a string), got {key!r}")
        if key.split(".")[0] not in ("model", "data", "optimizer", "lr_scheduler", "trainer", "seed_everything"):
            raise InputError(f"{where}: not a fit config key (model.*, data.*, optimizer.*, trainer.*, ...)")
        if key.startswith(("data.dataset", "data.test", "data.predict")):
            raise InputError(f"{where}: the data itself is not searched (the test split is never read)")
        if not isinstance(dist, dict) or dist.get("type") not in SEARCH_KINDS:
            raise InputError(f"{where}: expected {{type: float|int|categorical, ...}}, got {dist!r}")
        extra = set(dist) - {"type", *SEARCH_KINDS[dist["type"]]}
        if extra:
            raise InputError(f"{where}: unknown field {sorted(extra)[0]!r} for type {dist['type']}")
        if dist["type"] == "categorical":
            if not isinstance(dist.get("choices"), list) or not dist["choices"]:
                raise InputError(f"{where}: expected a non-empty list of choices")
            continue
        number = int if dist["type"] == "int" else (int, float)
        low, high = dist.get("low"), dist.get("high")
        if not (isinstance(low, number) and isinstance(high, number)) or isinstance(low, bool):
            raise InputError(f"{where}: low and high must be {dist['type']}s, got {low!r} and {high!r}")
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InputError(f"{where}: low and high must be finite, got {low!r} and {high!r}")
        if low > high:
            raise InputError(f"{where}: low {low} > high {high}")
        if dist.get("log") and low <= 0:
            raise InputError(f"{where}: log needs low > 0, got {low}")
    return {"metric": metric, "direction": direction, "space": space}


def suggest(trial, space: dict) -> dict:
    """One value per key of ``space``, from ``trial``."""
    out = {}
    for key, dist in space.items():
        if dist["type"] == "categorical":
            out[key] = trial.suggest_categorical(key, dist["choices"])
        elif dist["type"] == "int":
            out[key] = trial.suggest_int(key, dist["low"], dist["high"], log=bool(dist.get("log")))
        else:
            out[key] = trial.suggest_float(key, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))
    return out


def overrides(values: dict) -> list[str]:
    """{dotted key: value} -> ``--key value`` arguments (YAML-formatted values, as jsonargparse reads them)."""
    args = []
    for key, value in values.items():
        args += [f"--{key}", yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()]
    return args


def make_callbacks(trial, metric: str, direction: str):
    """Optuna's Lightning pruning callback, and one that keeps the best ``metric`` of the trial's validations:
    at the first it refuses a metric the fit does not log (every trial would fail alike), and it gives the
    fit's stop line (Ctrl+C, SIGTERM) tune's advice instead of fit's."""
    from lightning.pytorch import Callback
    from optuna_integration import PyTorchLightningPruningCallback

    from rnn_lightning.training.graceful_stop import GracefulStop

    class Best(Callback):
        value = None

        def setup(self, trainer, pl_module, stage: str) -> None:
            for callback in trainer.callbacks:
                if isinstance(callback, GracefulStop):
                    callback.resume_advice = "the same tune command runs this trial again"

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            if metric not in trainer.callback_metrics:
                logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
                raise InputError(
                    f"search.metric: fit logs no {metric!r}; it logs {', '.join(logged) or 'no val/ metric'}"
                )
            value = float(trainer.callback_metrics[metric])
            if math.isfinite(value) and (
                self.value is None or (value > self.value if direction == "maximize" else value < self.value)
            ):
                self.value = value

    return Best(), PyTorchLightningPruningCallback(trial, monitor=metric)


def check_fit_args(fit_args: list[str], space: dict):
    """Parse ``fit``'s arguments with each end of every range and every choice, as ``fit`` would (its
    parser, its one-line errors), before any trial; returns fit's config."""
    from rnn_lightning.training.cli import RNNLightningCLI

    cli = RNNLightningCLI(args=fit_args, run=False)  # fit's parser and config, without a subcommand
    parser = cli.parser
    for key, dist in space.items():
        values = dist["choices"] if dist["type"] == "categorical" else [dist["low"], dist["high"]]
        for value in values:
            cfg = parser.parse_args([*fit_args, *overrides({key: value})])
            if cfg.get(key) is None and value is not None:
                raise InputError(f"search.space.{key}: fit has no such setting")
    # the monitor the built checkpoint callback follows: a multi-label task's (val/macro_f1) once the data is read
    cli.config.checkpoint.monitor = cli.config_init.checkpoint.monitor
    return cli.config


def settle_metric(search: dict, config) -> dict:
    """``search`` with its metric and direction settled: where the file names none, those of fit's checkpoint
    (``checkpoint.monitor``, ``checkpoint.mode``), which is how fit itself picks its best epoch."""
    monitor, mode = config.get("checkpoint.monitor"), config.get("checkpoint.mode")
    metric, direction = search["metric"] or monitor, search["direction"]
    if not isinstance(metric, str) or not metric.startswith("val/"):
        raise InputError(f"search.metric: not given, and fit's checkpoint.monitor is {metric!r}; name a val/ metric")
    if direction is None:
        if metric != monitor or mode not in ("max", "min"):
            raise InputError(f"search.direction: not given; say maximize or minimize for {metric}")
        direction = "maximize" if mode == "max" else "minimize"
    return {**search, "metric": metric, "direction": direction}


def absolute_paths(config) -> list[str]:
    """``--key value`` for each of ``PATH_SETTINGS`` that names files relative to this folder, made absolute
    (a name found nowhere here, such as a Hub dataset, stays as it is), and for a relative ``data.cache_dir``."""

    def absolute(value):
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if isinstance(value, dict):
            return {k: absolute(v) for k, v in value.items()}
        if (
            isinstance(value, str)
            and value
            and not os.path.isabs(value)
            and (os.path.exists(value) or glob.glob(value))
        ):
            return os.path.abspath(value)  # a glob pattern (model.init_from's best-*.ckpt) stays one
        return value

    values = {key: absolute(config.get(key)) for key in PATH_SETTINGS}
    cache = config.get("data.cache_dir")
    if isinstance(cache, str) and not os.path.isabs(os.path.expanduser(cache)):
        values["data.cache_dir"] = os.path.abspath(cache)
    return overrides({k: v for k, v in values.items() if v != config.get(k)})


def _optuna():
    import optuna

    return optuna


# after each validation (an epoch): stop a trial whose metric is poor against the others' at that epoch
PRUNERS = {
    "median": lambda: _optuna().pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
    "hyperband": lambda: _optuna().pruners.HyperbandPruner(min_resource=1),
    "none": lambda: _optuna().pruners.NopPruner(),
}


def trial_seeded_sampler(seed: int):
    """Optuna's TPE sampler, seeded afresh for each trial from ``seed`` and the trial's number: a continued
    study, and tuners sharing one (the storage gives each number once), draw values no trial drew; the same
    seed proposes the same first trials of a new study."""
    import numpy as np
    import optuna

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.tpe = optuna.samplers.TPESampler(seed=seed)

        def before_trial(self, study, trial) -> None:
            self.tpe = optuna.samplers.TPESampler(
                seed=int(np.random.SeedSequence([seed, trial.number]).generate_state(1)[0])
            )
            self.tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.tpe.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.tpe.after_trial(study, trial, state, values)

    return TrialSeeded()


def open_study(args, root: Path, direction: str):
    """The study (created, or loaded to continue it) and the callback that queues a dead trial again; the
    trials left running by a dead tuner of this machine are failed and queued again first."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import DBAPIError

    url = args.storage or f"sqlite:///{(root / 'study.db').resolve()}"
    root.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # Optuna calls its own retry callback "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
    for attempt in range(OPEN_TRIES):
        try:
            with warnings.catch_warnings():  # and its heartbeat
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                     heartbeat_stale_trial_callback=retry)  # fmt: skip
            break
        except Exception as e:  # SQLAlchemy's errors for a bad URL, a missing driver, an unreachable server
            # tuners starting together on a new database race to create Optuna's schema (a DBAPIError): the
            # losers' next try finds it made; a dead server fails every try
            if isinstance(e, DBAPIError) and attempt + 1 < OPEN_TRIES:
                time.sleep(1 + random.random())
                continue
            raise InputError(f"storage: cannot open {url!r} ({type(e).__name__}: {said(e)})") from None
    try:
        study = optuna.create_study(study_name=args.study_name, storage=storage, sampler=trial_seeded_sampler(args.seed),
                                    pruner=PRUNERS[args.pruner](), direction=direction, load_if_exists=True)  # fmt: skip
    except ValueError as e:  # an existing study of another direction
        raise InputError(f"study_name: {args.study_name!r}: {e}") from None
    except optuna.exceptions.StorageInternalError as e:  # its first write: a read-only file or server
        cause = e.__cause__ or e
        raise InputError(f"storage: cannot write {url!r} ({type(cause).__name__}: {said(cause)})") from None
    for number in fail_orphans(study, retry):
        print(f"trial {number}: its tuner died; failed, and queued to run again", flush=True)
    return study, retry


class TrialLocks:
    """An ``optimize`` callback holding ``OWNER_LOCK`` in the folder of each trial this tuner runs, until Optuna
    has stored how the trial ended; a free lock beside a running trial tells the next tuner that its own died."""

    def __init__(self) -> None:
        self.held: dict[int, int] = {}  # trial number -> the lock file's descriptor

    def hold(self, number: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new trial's folder: no one else holds it
        except OSError:
            pass  # a file system without locks: Optuna's heartbeat alone tells a dead tuner
        self.held[number] = fd

    def __call__(self, study, trial) -> None:
        fd = self.held.pop(trial.number, None)
        if fd is not None:
            os.close(fd)

    def release_all(self) -> None:
        while self.held:
            os.close(self.held.popitem()[1])


def owner_gone(folder: Path) -> bool:
    """Whether the tuner running the trial in ``folder`` died: the folder's ``OWNER_LOCK`` is here and free.
    A folder of another machine (absent here), or one on a file system without locks, tells nothing."""
    try:
        fd = os.open(folder / OWNER_LOCK, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def run_folder(trial) -> Path | None:
    """The folder of ``trial``'s fit, once it has one: a retried trial starts with its original's in its copied
    attributes, which name another number."""
    run = trial.user_attrs.get("run")
    return Path(run) if run and Path(run).name == TRIAL_FOLDER.format(trial.number) else None


def fail_orphans(study, retry) -> list[int]:
    """Fail the running trials whose tuner died (``owner_gone``) and give each to ``retry`` (None: not run
    again); returns their numbers. Optuna's heartbeat does the same once a trial's pulse is ``GRACE_S`` old."""
    import optuna

    state = optuna.trial.TrialState
    failed = []
    for trial in study.get_trials(states=(state.RUNNING,)):
        folder = run_folder(trial)
        if folder is None or not owner_gone(folder):
            continue
        try:
            study.tell(trial.number, state=state.FAIL)
        except RuntimeError:  # it ended meanwhile, or another tuner failed it first
            continue
        if retry is not None:
            retry(study, trial)
        failed.append(trial.number)
    return failed


def counted_states() -> tuple:
    """The trial states that count towards ``--trials``: complete and pruned."""
    state = _optuna().trial.TrialState
    return state.COMPLETE, state.PRUNED


class FailureStreak:
    """An ``optimize`` callback that stops the study once ``FAILURES_IN_A_ROW`` trials of this tuner failed in
    a row (failed trials do not count towards ``--trials``, so a fault every trial meets would never end);
    ``line`` then says so, with the last trial's error."""

    def __init__(self) -> None:
        self.in_a_row, self.line = 0, None

    def __call__(self, study, trial) -> None:
        if run_folder(trial) is None:  # not run: the study was full
            return
        if trial.state != _optuna().trial.TrialState.FAIL:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row >= FAILURES_IN_A_ROW:
            error = trial.user_attrs.get("error", "see the log")
            self.line = f"tune: the last {self.in_a_row} trials failed, the last one with: {error}"
            study.stop()


def objective_for(study, search: dict, fit_args: list[str], root: Path, n_trials: int, locks: TrialLocks):
    import optuna

    from rnn_lightning.training.cli import TRAINER_DEFAULTS, RNNLightningCLI, release_run_folders

    def objective(trial) -> float:
        live = (optuna.trial.TrialState.RUNNING, *counted_states())
        before = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        if len(before) >= n_trials:  # another process took the last place: this one is not run, not counted
            study.stop()
            raise RuntimeError(f"not run: the study already has its {n_trials} trials")
        values = suggest(trial, search["space"])
        folder = (root / TRIAL_FOLDER.format(trial.number)).resolve()
        locks.hold(trial.number, folder)
        trial.set_user_attr("run", str(folder))  # after the lock: a trial with a run and a free lock is dead
        best, pruning = make_callbacks(trial, search["metric"], search["direction"])
        args = ["fit", *fit_args, *overrides(values), "--trainer.default_root_dir", str(folder)]
        try:
            RNNLightningCLI(args=args, trainer_defaults={**TRAINER_DEFAULTS, "callbacks": [best, pruning]})
            if best.value is None:
                raise RuntimeError(f"{search['metric']} was never finite")
        except RuntimeError as e:  # a failed trial (Optuna catches these): its reason, for FailureStreak's line
            trial.set_user_attr("error", said(e))
            raise
        finally:
            release_run_folders()
        return best.value

    return objective


def interrupted(study, retry, locks: TrialLocks, stop: BaseException) -> int | str | None:
    """After a stop inside a trial (Ctrl+C, SIGTERM, a fit that exited), which leaves its trial running: fail
    it, and queue it again when a signal stopped it; returns the exit status."""
    code = stop.code if isinstance(stop, SystemExit) else 128 + signal.SIGINT  # KeyboardInterrupt: a 2nd Ctrl+C
    signum = code - 128 if isinstance(code, int) and code - 128 in (signal.SIGINT, signal.SIGTERM) else None
    locks.release_all()
    failed = fail_orphans(study, retry if signum else None)
    if signum:
        queued = f"trial {', '.join(map(str, failed))} failed and queued to run again; " if failed else ""
        print(f"tune stopped by {signal.Signals(signum).name}: {queued}the same command continues the study",
              file=sys.stderr, flush=True)  # fmt: skip
    return code


def write_outputs(study, root: Path, search: dict) -> None:
    """``trials.csv`` (printed too), ``best.yaml`` (the best trial's whole fit config) and the plots."""
    import optuna

    names = sorted({k for t in study.trials for k in t.params})
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"trial": t.number, "state": t.state.name, search["metric"]: t.value,
                     "duration_s": None if duration is None else round(duration, 1),
                     **{n: t.params.get(n) for n in names}, "run": t.user_attrs.get("run")})  # fmt: skip
    fields = ["trial", "state", search["metric"], "duration_s", *names, "run"]
    with open(root / "trials.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print("  ".join(f"{k}={row[k]}" for k in fields if k != "run"))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        print("no trial completed: no best.yaml")
        return
    best = study.best_trial
    saved = sorted(Path(best.user_attrs["run"]).glob("lightning_logs/version_*/config.yaml"))
    if saved:
        write_best_config(saved[-1], root / "best.yaml")
        print(f"best: trial {best.number}, {search['metric']} {best.value:.4f}; its config: {root / 'best.yaml'}")
    import matplotlib.pyplot as plt

    for name, figure in draw_plots(study, search["metric"]).items():
        figure.savefig(root / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(figure)


def write_best_config(saved: Path, target: Path) -> None:
    """The trial's saved fit config without its run folder, so that ``fit --config best.yaml`` writes where
    that command says (its paths were made absolute before the trials)."""
    text = saved.read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    config.get("trainer", {}).pop("default_root_dir", None)
    header = text.splitlines()[0] + "\n" if text.startswith("#") else ""  # the Lightning version that wrote it
    with atomic_file(target) as f:
        f.write(header + yaml.safe_dump(config, sort_keys=False))


def draw_plots(study, metric: str) -> dict:
    """Optuna's history, importances and parallel-coordinate figures, sized to their content; the parallel
    plot's colours darkened at the light end, which Optuna's grey axes would hide."""
    import warnings

    import matplotlib
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap
    from optuna.visualization import matplotlib as plots

    matplotlib.use("Agg")  # files only, never a window
    figures = {}
    complete = [t for t in study.trials if t.state == _optuna().trial.TrialState.COMPLETE]
    for name, plot in (("history", plots.plot_optimization_history), ("importances", plots.plot_param_importances),
                       ("parallel", plots.plot_parallel_coordinate)):  # fmt: skip
        if name != "history" and len(complete) < 2:  # one trial has no spread to rank settings by or draw lines of
            print(f"{name}.png not drawn: it needs two complete trials")
            continue
        try:
            with warnings.catch_warnings():  # Optuna calls its matplotlib plots "experimental"
                warnings.simplefilter("ignore", _optuna().exceptions.ExperimentalWarning)
                axes = plot(study, target_name=metric)
        except (ValueError, RuntimeError) as e:  # importances need two complete trials that differ
            print(f"{name}.png not drawn: {e}")
            continue
        figure = (axes[0] if hasattr(axes, "__len__") else axes).figure
        if name == "parallel":
            n_axes = 1 + len({k for t in study.trials for k in t.params})  # the metric's and each setting's
            figure.set_size_inches(max(6.4, 1.6 * n_axes + 1.5), 4.8)  # room for each axis's tick labels
            for lines in (c for ax in figure.axes for c in ax.collections if isinstance(c, LineCollection)):
                cmap = lines.get_cmap()
                light_low = sum(cmap(0.0)[:3]) > sum(cmap(1.0)[:3])
                span = (LIGHTEST, 1.0) if light_low else (0.0, 1.0 - LIGHTEST)
                lines.set_cmap(ListedColormap(cmap(np.linspace(*span, 256))))
        fit_to_content(figure)
        figures[name] = figure
    return figures


def fit_to_content(figure, pad_in: float = 0.1) -> None:
    """Grow ``figure`` and move its axes so that all it draws (titles, tick labels, a legend beside the axes)
    lies inside it, as savefig's ``bbox_inches="tight"`` does to the file. Matplotlib's constrained layout
    would do it, but not for Optuna's parallel plot (a colorbar beside axes placed by hand)."""
    figure.canvas.draw()
    content = figure.get_tightbbox(figure.canvas.get_renderer())  # inches
    width, height = figure.get_size_inches()
    new_width, new_height = content.width + 2 * pad_in, content.height + 2 * pad_in
    boxes = [ax.get_position() for ax in figure.axes]  # fractions of the figure, all read before any moves
    for ax, box in zip(figure.axes, boxes, strict=True):  # twin axes move together: each is set to one place
        x0, y0 = box.x0 * width - content.x0 + pad_in, box.y0 * height - content.y0 + pad_in
        ax.set_position(
            [x0 / new_width, y0 / new_height, box.width * width / new_width, box.height * height / new_height]
        )
    figure.set_size_inches(new_width, new_height)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="rnn-lightning tune", allow_abbrev=False, add_help=True,
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--search", required=True, help="the search file (configs/search/*.yaml)")
    p.add_argument("--trials", type=int, required=True, help="complete + pruned trials the study should hold")
    p.add_argument("--storage", default=None, help="an Optuna RDB URL; default sqlite:///<root>/study.db")
    p.add_argument("--study_name", default="tune")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed, with each trial's number")
    p.add_argument("--pruner", choices=tuple(PRUNERS), default="median")
    p.add_argument("--timeout_s", type=float, default=None, help="stop starting trials after this long")
    return p.parse_known_args(argv)


def main(argv: list[str]) -> None:
    try:
        import optuna
        import optuna_integration  # noqa: F401
    except ImportError:
        raise SystemExit('error: tune needs Optuna: pip install -e ".[tune]"') from None
    args, fit_args = parse_args(argv)
    del sys.argv[1:]  # each trial's fit takes its arguments as args=, and LightningCLI warns when argv has others
    locks = TrialLocks()
    try:
        if args.trials < 1:
            raise InputError(f"trials: {args.trials}; expected at least 1")
        if args.seed < 0:
            raise InputError(f"seed: {args.seed}; expected 0 or more")
        search = parse_search(args.search)
        config = check_fit_args(fit_args, search["space"])
        search = settle_metric(search, config)
        root = Path(config.get("trainer.default_root_dir") or ".")
        fit_args = [*fit_args, *absolute_paths(config)]
        study, retry = open_study(args, root, search["direction"])
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        done = len(study.get_trials(deepcopy=False, states=counted_states()))
        streak = FailureStreak()
        if done < args.trials:
            print(
                f"study {args.study_name!r} in {args.storage or root / 'study.db'}: "
                f"{done} of {args.trials} trials done",
                flush=True,
            )
            limit = optuna.study.MaxTrialsCallback(args.trials, states=counted_states())
            try:
                study.optimize(objective_for(study, search, fit_args, root, args.trials, locks),
                               timeout=args.timeout_s, callbacks=[locks, limit, streak], catch=(RuntimeError,))  # fmt: skip
            except (SystemExit, KeyboardInterrupt) as stop:
                raise SystemExit(interrupted(study, retry, locks, stop)) from None
        write_outputs(study, root, search)
        if streak.line:
            raise SystemExit(f"error: {streak.line}")
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        locks.release_all()
