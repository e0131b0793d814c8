"""``python cli.py tune``: an Optuna study over the same configs, each trial a real ``fit`` of the same CLI.

    python cli.py tune --search configs/search/sst5.yaml --trials 40 --config configs/sst5.yaml --data.dataset ../shared/sst5

The tune options (``--search``, ``--trials``, ``--storage``, ``--study_name``, ``--seed``, ``--pruner``,
``--timeout_s``) come first or anywhere; every other argument is ``fit``'s, as on its command line. The study
lives in Optuna's RDB storage (SQLite under ``trainer.default_root_dir`` unless ``--storage`` names PostgreSQL
or MySQL, which several machines can share), so the same command continues it. A trial whose process died is
failed by Optuna's heartbeat once its grace period passes and retried once; ``--trials`` counts complete and
pruned trials only. Optuna is the ``tune`` extra, imported by this command only.
"""

import argparse
import csv
import math
import random
import shutil
import sys
import time
from pathlib import Path

import yaml

from rnn_lightning.errors import InputError, said

SEARCH_KINDS = {"float": ("low", "high", "log"), "int": ("low", "high", "log"), "categorical": ("choices",)}
HEARTBEAT_S, GRACE_S = 30, 90  # a running trial's pulse, and how long past it the trial counts as dead
OPEN_TRIES = 3  # attempts at opening the storage
TRIAL_FOLDER = "trial_{:04d}"  # each trial's trainer.default_root_dir, under the tune's


def parse_search(path: str) -> dict:
    """The search file: ``metric`` (a ``val/`` metric), ``direction`` and ``space`` (dotted key -> a
    distribution). Each problem is one line naming the key."""
    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"search: cannot read {path!r} ({type(e).__name__}: {said(e)})") from None
    if not isinstance(spec, dict) or set(spec) - {"metric", "direction", "space"} or "space" not in spec:
        raise InputError(f"search: {path!r} must be a mapping of metric, direction and space")
    metric, direction = spec.get("metric", "val/acc"), spec.get("direction", "maximize")
    if not isinstance(metric, str) or not metric.startswith("val/"):
        raise InputError(f"search.metric: {metric!r}; expected a validation metric (val/...), never the test split")
    if direction not in ("maximize", "minimize"):
        raise InputError(f"search.direction: {direction!r}; expected maximize or minimize")
    space = spec["space"]
    if not isinstance(space, dict) or not space:
        raise InputError("search.space: expected a mapping of config keys to distributions")
    for key, dist in space.items():
        where = f"search.space.{key}"
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
    """Optuna's Lightning pruning callback, and one that keeps the best ``metric`` of the trial's validations."""
    from lightning.pytorch import Callback
    from optuna_integration import PyTorchLightningPruningCallback

    class Best(Callback):
        value = None

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or metric not in trainer.callback_metrics:
                return
            value = float(trainer.callback_metrics[metric])
            if math.isfinite(value) and (
                self.value is None or (value > self.value if direction == "maximize" else value < self.value)
            ):
                self.value = value

    return Best(), PyTorchLightningPruningCallback(trial, monitor=metric)


def check_fit_args(fit_args: list[str], space: dict) -> Path:
    """Parse ``fit``'s arguments with each end of every range and every choice, as ``fit`` would (its
    parser, its one-line errors), before any trial; returns ``trainer.default_root_dir``."""
    from rnn_lightning.training.cli import RNNLightningCLI

    cli = RNNLightningCLI(args=fit_args, run=False)  # fit's parser and config, without a subcommand
    parser = cli.parser
    for key, dist in space.items():
        values = dist["choices"] if dist["type"] == "categorical" else [dist["low"], dist["high"]]
        for value in values:
            cfg = parser.parse_args([*fit_args, *overrides({key: value})])
            if cfg.get(key) is None and value is not None:
                raise InputError(f"search.space.{key}: fit has no such setting")
    return Path(cli.config.trainer.default_root_dir or ".")


def _optuna():
    import optuna

    return optuna


# after each validation (an epoch): stop a trial whose metric is poor against the others' at that epoch
PRUNERS = {
    "median": lambda: _optuna().pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
    "hyperband": lambda: _optuna().pruners.HyperbandPruner(min_resource=1),
    "none": lambda: _optuna().pruners.NopPruner(),
}


def open_study(args, root: Path, direction: str):
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
    pruner = PRUNERS[args.pruner]()
    sampler = optuna.samplers.TPESampler(seed=args.seed)
    try:
        return optuna.create_study(study_name=args.study_name, storage=storage, sampler=sampler, pruner=pruner,
                                   direction=direction, load_if_exists=True)  # fmt: skip
    except ValueError as e:  # an existing study of another direction
        raise InputError(f"study_name: {args.study_name!r}: {e}") from None


def counted_states() -> tuple:
    """The trial states that count towards ``--trials``: complete and pruned."""
    state = _optuna().trial.TrialState
    return state.COMPLETE, state.PRUNED


def objective_for(study, search: dict, fit_args: list[str], root: Path, n_trials: int):
    import optuna

    from rnn_lightning.training.cli import TRAINER_DEFAULTS, RNNLightningCLI, release_run_folders

    def objective(trial) -> float:
        live = (optuna.trial.TrialState.RUNNING, *counted_states())
        before = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        if len(before) >= n_trials:  # another process took the last place: this one is not run, not counted
            study.stop()
            raise RuntimeError(f"not run: the study already has its {n_trials} trials")
        values = suggest(trial, search["space"])
        folder = root / TRIAL_FOLDER.format(trial.number)
        trial.set_user_attr("run", str(folder))
        best, pruning = make_callbacks(trial, search["metric"], search["direction"])
        args = ["fit", *fit_args, *overrides(values), "--trainer.default_root_dir", str(folder)]
        try:
            RNNLightningCLI(args=args, trainer_defaults={**TRAINER_DEFAULTS, "callbacks": [best, pruning]})
        finally:
            release_run_folders()
        if best.value is None:
            raise RuntimeError(f"no {search['metric']} was logged")
        return best.value

    return objective


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
        shutil.copyfile(saved[-1], root / "best.yaml")
        print(f"best: trial {best.number}, {search['metric']} {best.value:.4f}; its config: {root / 'best.yaml'}")
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots

    for name, plot in (("history", plots.plot_optimization_history), ("importances", plots.plot_param_importances),
                       ("parallel", plots.plot_parallel_coordinate)):  # fmt: skip
        try:
            with warnings.catch_warnings():  # Optuna calls its matplotlib plots "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except (ValueError, RuntimeError) as e:  # importances need two complete trials that differ
            print(f"{name}.png not drawn: {e}")
            continue
        figure = (axes[0] if hasattr(axes, "__len__") else axes).figure
        figure.savefig(root / f"{name}.png", dpi=100, bbox_inches="tight")
        matplotlib.pyplot.close(figure)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="rnn-lightning tune", allow_abbrev=False, add_help=True,
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--search", required=True, help="the search file (configs/search/*.yaml)")
    p.add_argument("--trials", type=int, required=True, help="complete + pruned trials the study should hold")
    p.add_argument("--storage", default=None, help="an Optuna RDB URL; default sqlite:///<root>/study.db")
    p.add_argument("--study_name", default="tune")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
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
    try:
        if args.trials < 1:
            raise InputError(f"trials: {args.trials}; expected at least 1")
        search = parse_search(args.search)
        root = check_fit_args(fit_args, search["space"])
        study = open_study(args, root, search["direction"])
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        done = len(study.get_trials(deepcopy=False, states=counted_states()))
        if done < args.trials:
            print(
                f"study {args.study_name!r} in {args.storage or root / 'study.db'}: "
                f"{done} of {args.trials} trials done",
                flush=True,
            )
            limit = optuna.study.MaxTrialsCallback(args.trials, states=counted_states())
            study.optimize(objective_for(study, search, fit_args, root, args.trials), timeout=args.timeout_s,
                           callbacks=[limit], catch=(RuntimeError,))  # fmt: skip
        write_outputs(study, root, search)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
