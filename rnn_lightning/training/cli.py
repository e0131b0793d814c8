"""The command line: LightningCLI wired to the data module and the classifier.

    python cli.py fit  --config configs/base.yaml --data.dataset ../shared/imdb
    python cli.py test --config configs/base.yaml --data.dataset ../shared/imdb --ckpt_path best

Only wiring lives here: defaults every config shares, argument links, and the checks that must run
before any work. Beside it in ``training/``: the callbacks (``callbacks.py``, ``prediction_writer.py``,
``graceful_stop.py``), where a run goes (``run_folder.py``) and what a failure says (``failures.py``);
checkpoint knowledge is in ``rnn_lightning/checkpoint.py``.
"""

import inspect
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal, NoReturn

from jsonargparse import Namespace
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError, bounded
from rnn_lightning.files import check_writable
from rnn_lightning.limits import limit_yaml
from rnn_lightning.models import SemiSupervisedClassifier
from rnn_lightning.models.recurrent_module import RecurrentModule
from rnn_lightning.runtime import native_bf16, tune_cpu_runtime
from rnn_lightning.text import TextDataModule
from rnn_lightning.training.callbacks import ChosenMetricsBar, HParamsWithMetrics, ParameterSummary, RunConfigSaver
from rnn_lightning.training.checkpoint_io import AtomicCheckpointIO
from rnn_lightning.training.failures import check_optimizer, one_line, optimizer_error
from rnn_lightning.training.graceful_stop import GracefulStop
from rnn_lightning.training.prediction_writer import PredictionWriter
from rnn_lightning.training.run_folder import (
    RUNS_DIR_NAME,
    check_resume_position,
    claim_run_folder,
    epochs_done,
    launched_first,
    lock_run_folder,
    release_run_folders,
    runs_dir,
)
from rnn_lightning.training.schedules import CosineOverFit
from rnn_lightning.training.trust import check_functions, refused_import_line, restrict_imports

# What every config shares; a preset states only what it changes.
TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # save_dir follows trainer.default_root_dir (linked below); hp_metric: HParamsWithMetrics logs real ones
        "init_args": {"save_dir": ".", "name": RUNS_DIR_NAME, "default_hp_metric": False},
    },
    "enable_model_summary": False,  # ParameterSummary (below) is the summary, with exact counts
}


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad argument as one line naming the key, instead of the full usage text, and takes
    options by their full names only (argparse would take ``--model.cel`` for ``--model.cell``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # LightningCLI builds every subcommand's parser with this class
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        line = refused_import_line(str(message))  # a class or function the config may not name
        line = line or f"error: {' '.join(str(message).split())} (options: {self.prog} --help)"
        sys.stderr.write(f"{bounded(line)}\n")
        sys.exit(2)


class RunTrainer(Trainer):
    """Lightning's Trainer, without the CLI's own callbacks that a switched-off feature refuses: a
    ``ModelCheckpoint`` under ``enable_checkpointing: false``, ``LearningRateMonitor`` and
    ``HParamsWithMetrics`` under ``logger: false``, ``ChosenMetricsBar`` under ``enable_progress_bar: false``
    or beside a progress bar of the config's (each is always added, as a ``checkpoint``, ``lr_monitor`` ...
    group of the command line)."""

    def __init__(self, **kwargs: Any) -> None:
        callbacks = kwargs.get("callbacks")
        if isinstance(callbacks, list):
            if kwargs.get("enable_checkpointing") is False:
                callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
            if kwargs.get("logger") is False:
                callbacks = [c for c in callbacks if not isinstance(c, (LearningRateMonitor, HParamsWithMetrics))]
            bars = [c for c in callbacks if isinstance(c, ProgressBar)]
            if kwargs.get("enable_progress_bar") is False or len(bars) > 1:  # off, or the config names its own
                callbacks = [c for c in callbacks if not isinstance(c, ChosenMetricsBar)]
            kwargs["callbacks"] = callbacks
        super().__init__(**kwargs)


class RNNLightningCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` with the wiring no config has to repeat.

    The model is ``SemiSupervisedClassifier``: ``TextClassifier`` with the semi-supervised switches, each off
    at 0, so a plain config trains exactly the supervised classifier, and every config and checkpoint saved
    so far (their ``model:`` names those switches) still parses.
    """

    def __init__(self, model_class: type[RecurrentModule] = SemiSupervisedClassifier, *args, **kwargs) -> None:
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("parser_class", OneLineErrorParser)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("trainer_class", RunTrainer)
        self._resumed: dict | None = None  # the checkpoint given to --ckpt_path, once checked
        quiet_lightning()
        limit_yaml()  # a --config file is input: its aliases may not expand without bound (limits.py)
        restrict_imports()  # configs are input: they name classes of the documented packages only (trust.py)
        super().__init__(model_class, TextDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The vocabulary cap is known at parse time; the padding id only once the data module exists.
        parser.link_arguments("data.vocab_size", "model.vocab_size")
        parser.link_arguments("data.pad_id", "model.pad_id", apply_on="instantiate")
        if takes(parser, "model.class_names"):
            # The classes come from the training labels, or, when a checkpoint is given, from it (predicting
            # raw text reads no dataset; testing checks that the data's classes are the checkpoint's).
            for key in ("class_names", "class_counts", "multi_label", "train_texts"):
                parser.link_arguments("data", f"model.{key}", compute_fn=self._class_fact(key), apply_on="instantiate")
        starts = [f"model.{k}" for k in ("init_from", "teacher") if takes(parser, f"model.{k}")]
        if starts:
            # A pretrained network comes with its tokenizer: one vocabulary from pretraining to prediction;
            # a teacher without one brings its own, so that it reads the same tokens as the model.
            parser.link_arguments(tuple(starts), "data.tokenizer_from", compute_fn=first_path)
        # One setting decides where a run goes: the logger's folder follows trainer.default_root_dir.
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir", compute_fn=logger_root)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Lightning writes a save_last checkpoint only when a best checkpoint was written in the same
        # step, so "last" would lag behind; a second callback keeps last.ckpt = the latest epoch.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        monitor, mode = self.model_class.CHECKPOINT_MONITOR, self.model_class.CHECKPOINT_MODE
        parser.set_defaults(
            {
                "checkpoint.monitor": monitor,
                "checkpoint.mode": mode,
                "checkpoint.filename": best_filename(monitor),
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.filename": checkpoint.LAST_NAME,
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(ChosenMetricsBar, "progress_bar")
        parser.link_arguments("checkpoint.monitor", "progress_bar.monitor")
        parser.add_lightning_class_args(ParameterSummary, "summary")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(HParamsWithMetrics, "hparams_metrics")
        parser.add_lightning_class_args(GracefulStop, "graceful_stop")
        parser.add_argument(
            "--lr_scheduler_interval",
            type=Literal["epoch", "step"],
            default="epoch",
            help="step the lr_scheduler after every epoch or every optimizer step (then T_max etc. count steps); "
            "CosineOverFit steps at its own interval",
        )

    def _class_fact(self, key: str):
        """``data.<key>``, or the checkpoint's value when ``--ckpt_path`` gives one (None in an older
        checkpoint: the model's default, IMDB's two classes; an older checkpoint is single-label)."""

        def value(data: TextDataModule):
            if self._resumed is not None:
                found = self._resumed[checkpoint.HPARAMS_KEY].get(key)
                return bool(found) if key == "multi_label" else found
            return getattr(data, key)

        return value

    def configure_optimizers(self, lightning_module: LightningModule, optimizer, lr_scheduler=None):
        """LightningCLI's own wiring, plus ``lr_scheduler_interval`` (Lightning's CLI has no field for it)
        and the length of a ``CosineOverFit``, which steps at its own ``interval``: ``trainer.max_epochs``
        epochs, or the trainer's optimizer steps (once the module is attached to it)."""
        out = LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)
        config = self.config[self.subcommand] if self.subcommand else self.config
        if isinstance(lr_scheduler, CosineOverFit):
            interval = lr_scheduler.interval
            try:
                trainer = lightning_module.trainer
            except RuntimeError:  # not attached to a trainer yet: before_fit's early check of the arguments
                trainer = None
            if interval == "epoch":
                epochs = (trainer if trainer is not None else self.trainer).max_epochs
                if epochs is None or epochs < 1:
                    raise ValueError(
                        f"CosineOverFit(interval='epoch') anneals over trainer.max_epochs, which is {epochs}: "
                        "set trainer.max_epochs, or use interval 'step'"
                    )
                lr_scheduler.T_max = epochs
            elif trainer is not None:
                lr_scheduler.total_steps = trainer.estimated_stepping_batches
        elif lr_scheduler is None or config.lr_scheduler_interval == "epoch":
            return out
        else:
            interval = "step"
        config = out["lr_scheduler"] if isinstance(out, dict) else {"scheduler": lr_scheduler}
        return {"optimizer": optimizer, "lr_scheduler": {**config, "interval": interval}}

    # ---------------------------------------------------------------- before anything is built

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse, then settle ``--ckpt_path``: ``last``/``best`` become a file, and the file is checked
        before LightningCLI reads the model's hyperparameters from it (so a checkpoint brings its
        own model shape, and a junk file is one line instead of a traceback)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        check_functions(cfg)  # a Callable field names a function of the allowed packages, not this project's
        if cfg.get("weights_only") is False:  # always true (before_instantiate_classes)
            raise InputError("weights_only: false would let a checkpoint run code as it loads; it is always true")
        path = cfg.get("ckpt_path")
        if path == "hpc" or (subcommand == "fit" and path is None and SLURMEnvironment.detect()):
            # A requeued SLURM job: Lightning resumes from its requeue checkpoint; checked and named here.
            root = cfg.trainer.get("default_root_dir") or "."
            path = checkpoint.requeue_checkpoint(root)
            if path is None and cfg.get("ckpt_path") == "hpc":
                raise InputError(f"ckpt_path: 'hpc' but {root} holds no {checkpoint.HPC_PATTERN}")
            if path is not None:
                cfg.ckpt_path = str(path)
                rank_zero_info(f"SLURM requeue: resuming {path}")
        if not path:
            return
        # Every checkpoint goes through load_checkpoint: a file:// URL becomes its path, other URLs are refused.
        cfg.ckpt_path = path = checkpoint.local_path(path)
        runs = runs_dir(cfg.trainer)
        if path in ("last", "best"):  # of the run whose config.yaml was given, else of the newest run
            run = checkpoint.run_of_config(cfg.get("config"))
            cfg.ckpt_path = str(checkpoint.find_checkpoint(runs, path, run))
            rank_zero_info(f"ckpt_path {path!r}: {cfg.ckpt_path}")
        version = checkpoint.run_of(Path(cfg.ckpt_path), runs)
        if subcommand == "fit" and version is not None and launched_first():
            # Held before the checkpoint is read: a second resume of the run would read a last.ckpt the first rewrites.
            lock_run_folder(runs / f"version_{version}")
        expect = checkpoint.kind(inspect.signature(self.model_class).parameters)  # a classifier or a language model
        self._resumed = checkpoint.load_checkpoint(cfg.ckpt_path, expect=expect)
        if subcommand == "fit":  # LightningCLI would silently keep the checkpoint's network settings
            checkpoint.check_same_shape(self._resumed, cfg)
            check_resume_position(self._resumed, cfg.data)
        else:  # evaluating or predicting: the checkpoint's network, said when the config names another
            differences = checkpoint.shape_differences(self._resumed, cfg)
            if differences:
                said = ", ".join(f"{name}={kept!r} (config: {given!r})" for name, kept, given in differences)
                rank_zero_info(f"ckpt_path: {cfg.ckpt_path} holds another network; using its {said}")
        if version is None:  # e.g. a requeue checkpoint, which Lightning writes outside the run's folder
            version = self._resumed.get(checkpoint.RUN_VERSION_KEY)
        logger = cfg.trainer.get("logger")
        if subcommand == "fit" and version is not None and isinstance(logger, Namespace):
            if logger.init_args.get("version") is None:  # resuming a run continues its TensorBoard run
                logger.init_args.version = version
                rank_zero_info(f"Resuming {cfg.ckpt_path}: the TensorBoard run version_{version} continues")
                # its checkpoints/ folder is not empty because it is this run's
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        if subcommand != "fit":
            # The checkpoint's vocabulary and length, not the defaults: a checkpoint given without its
            # config must still build its own embedding (the parse-time link to the model ran already).
            data_hparams = self._resumed.get("datamodule_hyper_parameters") or {}
            for key in ("vocab_size", "max_len"):
                if key in data_hparams:
                    cfg.data[key] = data_hparams[key]
            cfg.model.vocab_size = cfg.data.vocab_size
            # The checkpoint's own bookkeeping callbacks, pointed at the folder they recorded (the file may
            # have moved since; evaluating and predicting write nothing there): Lightning then restores their
            # state without warning that they are missing or that their folder changed.
            states = (self._resumed.get("callbacks") or {}).values()
            recorded = [s["dirpath"] for s in states if isinstance(s, dict) and isinstance(s.get("dirpath"), str)]
            for key in ("checkpoint", "last_checkpoint"):
                if cfg[key].get("dirpath") is None:
                    cfg[key].dirpath = recorded[0] if recorded else str(Path(cfg.ckpt_path).parent)

    def before_instantiate_classes(self) -> None:
        if not self.subcommand:
            return
        cfg = self.config[self.subcommand]
        if self.subcommand == "predict":
            cfg.trainer.logger = False  # a prediction is not a run: no TensorBoard run, no config.yaml
            if cfg.get("return_predictions") is None:
                # the prediction writer writes the file; a list of every batch's results kept for the
                # caller would grow with the input
                cfg.return_predictions = False
        if self.subcommand == "fit" and cfg.model.get("distillation", 0) > 0 and not cfg.data.unlabelled:
            raise InputError(
                "model.distillation: needs data.unlabelled: true (the teacher labels the unlabelled reviews)"
            )
        # Lightning's torch.load for fit/validate/test/predict: rnn-lightning checkpoints hold tensors and
        # plain types only, and any other file must not run code as it loads (false is refused at parse time).
        cfg.weights_only = True
        check_optimizer(cfg)  # LightningCLI builds the optimizer with the model: its arguments, checked first

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """LightningCLI's trainer, writing checkpoints whole (``AtomicCheckpointIO``) unless the config
        names a CheckpointIO of its own."""
        trainer_cfg = self.config_init.get(str(self.subcommand), self.config_init).get("trainer") or {}
        plugins = kwargs.get("plugins", trainer_cfg.get("plugins")) or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        self._monitor_the_task()
        return super().instantiate_trainer(**{**kwargs, "plugins": plugins})

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's merge of the checkpoint's hyperparameters into the config (a private step of its
        own, overridden because nothing public runs after it), keeping a given ``model.thresholds``: a
        decision setting the command chooses over the checkpoint's, not a shape the weights need."""
        subcommand = self.config.get("subcommand")
        given = self.config[subcommand].model.get("thresholds") if subcommand else None
        super()._parse_ckpt_path()
        if given is not None:
            self.config[subcommand].model.thresholds = given

    def _monitor_the_task(self) -> None:
        """``checkpoint.monitor`` left at its default follows the model's task (``Task.MONITOR``: the
        monitor is set when the arguments are parsed, the task is known once the data has been read)."""
        task = getattr(self.model, "task", None)
        config = self.config_init.get(str(self.subcommand), self.config_init)
        callback = config.get("checkpoint")
        default = self.model_class.CHECKPOINT_MONITOR
        if task is None or not isinstance(callback, ModelCheckpoint) or callback.monitor != default:
            return
        if task.MONITOR != default and task.MONITOR_MODE == callback.mode:
            callback.monitor, callback.filename = task.MONITOR, best_filename(task.MONITOR)
            bar = config.get("progress_bar")
            if getattr(bar, "monitor", None) == default:
                bar.monitor = task.MONITOR

    def before_fit(self) -> None:
        tune_cpu_runtime()
        trainer = self.trainer
        try:
            self.model.configure_optimizers()  # the optimizer and scheduler arguments, checked before any work
        except (ValueError, TypeError) as e:
            raise optimizer_error(e) from None
        logger = trainer.logger
        folders = {Path(logger.root_dir if isinstance(logger, TensorBoardLogger) else trainer.default_root_dir)}
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            folders.add(Path(trainer.checkpoint_callback.dirpath))
        param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        check_writable(  # best + last, each weights and two Adam moments; plus logs
            folders, need_bytes=2 * 3 * param_bytes + 64 * 2**20, field="trainer.default_root_dir"
        )
        if trainer.global_rank == 0:
            claim_run_folder(trainer, self.config[self.subcommand].trainer.get("logger"))
            if isinstance(trainer.logger, TensorBoardLogger):  # one fit at a time writes a run
                lock_run_folder(trainer.logger.log_dir)
        hint = bf16_hint(trainer, self.model)
        if hint:
            rank_zero_info(hint)
        if self._resumed is not None and epochs_done(self._resumed) >= (trainer.max_epochs or 0) > 0:
            rank_zero_info(
                f"The checkpoint already finished epoch {epochs_done(self._resumed)} of trainer.max_epochs="
                f"{trainer.max_epochs}: nothing left to train. To train further, raise --trainer.max_epochs."
            )


def best_filename(monitor: str) -> str:
    """The best checkpoint's file name, e.g. ``best-epoch03-acc0.8256`` (``checkpoint.find_checkpoint`` reads ``best-*``)."""
    return f"best-epoch{{epoch:02d}}-{monitor.split('/')[-1]}{{{monitor}:.4f}}"


def bf16_hint(trainer: Trainer, model: LightningModule) -> str | None:
    """One line for a float32 fit of the rnn cell on a CPU with native bfloat16, where one switch makes it faster."""
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    if trainer.precision != "32-true" or not on_cpu or model.hparams.get("cell") != "rnn" or not native_bf16():
        return None
    return (
        "This CPU computes bfloat16 natively: --config configs/bf16.yaml (precision bf16-mixed) trains the "
        "rnn cell faster at the same accuracy (docs/results.md)"
    )


def takes(parser: LightningArgumentParser, key: str) -> bool:
    """Whether ``parser`` has the argument ``key``; a model's include those its ``**kwargs`` hand on."""
    try:
        parser.get_default(key)
    except KeyError:
        return False
    return True


def first_path(*paths: str | list[str] | None) -> str | None:
    """The first checkpoint given (a list counts by its first), for the tokenizer that comes along."""
    for path in paths:
        path = path[0] if isinstance(path, list) and path else path
        if path:
            return path
    return None


def logger_root(root: str | None) -> str:
    """The logger's ``save_dir`` for ``trainer.default_root_dir``: a local folder as its real path, the form
    ``ModelCheckpoint`` gives a ``dirpath``. A checkpoint records the folder it was written to; ``test`` and
    ``predict`` point the callback at the checkpoint's folder, and Lightning warns that the folder changed
    unless the two strings are equal (a default run's "./lightning_logs/..." never was)."""
    root = root or "."
    return root if "://" in root else os.path.realpath(os.path.expanduser(root))


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def _not_about_loading(record: logging.LogRecord) -> bool:
    # Said as Lightning's SLURM requeue handler saves: about which parts it saves (all), not about loading.
    return not str(record.msg).startswith("`weights_only` was not set")


def quiet_lightning() -> None:
    """Silence, at their source, the messages a user of this CLI cannot act on."""
    # Lightning's advertisement for its hosted logger, printed by every command.
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_a_tip not in rank_zero_log.filters:
        rank_zero_log.addFilter(_not_a_tip)
    # Logged by Lightning's checkpoint connector (lightning 2.6.6) when a save does not say weights_only.
    saving_log = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    if _not_about_loading not in saving_log.filters:
        saving_log.addFilter(_not_about_loading)
    # The model summary's size estimate under bf16 (our summary prints exact counts instead).
    warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")
    # Lightning's own pytree helper uses torch's deprecated LeafSpec constructor.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=DeprecationWarning)


def main(args=None, model_class: type[RecurrentModule] = SemiSupervisedClassifier, prog: str | None = None) -> None:
    """``fit``/``validate``/``test``/``predict`` (``args[0]``); bad input from a person ends in one line on
    stderr (``failures.one_line``), not a traceback. ``prog``: the command's name in its help and errors."""
    tune_cpu_runtime(training=False)  # the training settings come in before_fit
    try:
        RNNLightningCLI(model_class, args=args, parser_kwargs={"prog": prog} if prog else None)
    except Exception as e:
        line = one_line(e)
        if line is None:
            raise
        sys.exit(line)
    finally:
        release_run_folders()
