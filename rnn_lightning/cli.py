"""The command line: LightningCLI wired to the IMDB data module and the classifier."""

import pickle
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from rnn_lightning.callbacks import HParamsWithMetrics, PredictionWriter
from rnn_lightning.checkpoint_io import AtomicCheckpointIO
from rnn_lightning.data import IMDBDataModule
from rnn_lightning.errors import InputError, NonFiniteLossError
from rnn_lightning.models import SentimentClassifier
from rnn_lightning.runtime import tune_cpu_runtime


class ParameterSummary(ModelSummary):
    """Lightning's model summary plus exact parameter counts (its table rounds 1,018,881 to "1.0 M")."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        rows = []
        for name, child in pl_module.net.named_children():
            parts = child.named_children() if isinstance(child, nn.ModuleList) else [("", child)]
            rows += [(f"{name}.{i}" if i else name, sum(p.numel() for p in m.parameters())) for i, m in parts]
        total = sum(p.numel() for p in pl_module.parameters())
        lines = [f"  {name:<16} {count:>12,}" for name, count in rows]
        rank_zero_info("Parameters (exact):\n" + "\n".join(lines) + f"\n  {'total':<16} {total:>12,}")


class RunConfigSaver(SaveConfigCallback):
    """LightningCLI's config saver, except that
    - a test/predict run without a logger (so without a run directory of its own) does not write
      ``config.yaml`` into ``default_root_dir``, where a second such run would collide with it;
    - a fit resumed into its own run directory keeps the ``config.yaml`` it started with (the CLI
      marks it ``already_saved``)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" and trainer.logger is None:
            return
        super().setup(trainer, pl_module, stage)


def _is_inside(path: str, folder: str | None) -> bool:
    return folder is not None and Path(path).resolve().is_relative_to(Path(folder).resolve())


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad argument as one line naming the key, instead of the full usage text."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        sys.stderr.write(f"error: {' '.join(str(message).split())} (options: {self.prog} --help)\n")
        sys.exit(2)


class RNNLightningCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` with IMDB wiring that no config has to repeat."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("parser_class", OneLineErrorParser)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        super().__init__(SentimentClassifier, IMDBDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The vocabulary cap is known at parse time; the padding id only once the data module exists.
        parser.link_arguments("data.vocab_size", "model.vocab_size")
        parser.link_arguments("data.pad_id", "model.pad_id", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Lightning (2.6) writes a save_last checkpoint only when a best checkpoint was written in the
        # same step, so "last" would lag behind; a second callback keeps last.ckpt = the latest epoch.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch:02d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(ParameterSummary, "summary")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(HParamsWithMetrics, "hparams_metrics")
        parser.add_argument(
            "--lr_scheduler_interval",
            type=Literal["epoch", "step"],
            default="epoch",
            help="step the lr_scheduler after every epoch or every optimizer step (then T_max etc. count steps)",
        )

    def configure_optimizers(self, lightning_module: LightningModule, optimizer, lr_scheduler=None):
        """LightningCLI's own wiring, plus ``lr_scheduler_interval`` (Lightning's CLI has no field for it)."""
        out = LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)
        if lr_scheduler is None or self._get(self.config, "lr_scheduler_interval", "epoch") == "epoch":
            return out
        config = out["lr_scheduler"] if isinstance(out, dict) else {"scheduler": lr_scheduler}
        return {"optimizer": optimizer, "lr_scheduler": {**config, "interval": "step"}}

    # ---------------------------------------------------------------- checks before any work

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        self._resolve_named_checkpoint()
        self._continue_run()
        self._default_weights_only()
        self._check_output_dirs()

    def before_validate(self) -> None:
        self._resolve_named_checkpoint()
        self._default_weights_only()

    before_test = before_predict = before_validate

    def _run_args(self) -> dict:
        return self.config_init[self.subcommand]

    def _resolve_named_checkpoint(self) -> None:
        """``--ckpt_path last`` / ``best``: the newest run's ``last.ckpt`` / ``best-*.ckpt`` under the
        logger's folder (Lightning's own "best" and "last" only know the current process's fit)."""
        cfg, logger = self._run_args(), self.trainer.logger
        name = cfg.get("ckpt_path")
        if name not in ("last", "best"):
            return
        root = Path(logger.root_dir) if isinstance(logger, TensorBoardLogger) else Path(self.trainer.default_root_dir)
        pattern = "last.ckpt" if name == "last" else "best-*.ckpt"
        found = [
            p for p in root.glob(f"version_*/checkpoints/{pattern}") if _version_number(p.parents[1].name) is not None
        ]
        if not found:
            raise InputError(
                f"ckpt_path: {name!r} but no run under {root} has checkpoints/{pattern}; pass a checkpoint's path"
            )
        cfg["ckpt_path"] = str(max(found, key=lambda p: (_version_number(p.parents[1].name), p.stat().st_mtime)))
        check_checkpoint(cfg["ckpt_path"])  # explicit paths were checked in _parse_ckpt_path
        rank_zero_info(f"ckpt_path {name!r}: {cfg['ckpt_path']}")

    def _continue_run(self) -> None:
        """Resuming from a checkpoint inside a run directory continues that TensorBoard run instead of
        opening a new one."""
        cfg, logger = self._run_args(), self.trainer.logger
        if not isinstance(logger, TensorBoardLogger) or not cfg.get("ckpt_path"):
            return
        root = Path(logger.root_dir)
        ckpt = Path(cfg["ckpt_path"])
        if logger._version is None and ckpt.parent.name == "checkpoints" and _is_inside(str(ckpt), str(root)):
            version = _version_number(ckpt.parents[1].name)
            if version is not None:
                logger._version = version
                for callback in self.trainer.callbacks:
                    if isinstance(callback, SaveConfigCallback):
                        callback.already_saved = True  # the run's config.yaml stays as it started
                rank_zero_info(f"Resuming {ckpt}: the TensorBoard run {ckpt.parents[1].name} continues")

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads the model's hyperparameters from ``--ckpt_path`` before anything else
        (so a checkpoint brings its own shape); check the file first, so that a missing, truncated,
        foreign or pickle-carrying file is refused in one line instead of a traceback."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            path = self.config[subcommand].get("ckpt_path")
            if path and path not in ("last", "best", "hpc", "registry") and "://" not in str(path):
                check_checkpoint(path)
        super()._parse_ckpt_path()

    def _default_weights_only(self) -> None:
        cfg = self._run_args()
        if cfg.get("weights_only") is None:
            cfg["weights_only"] = True  # rnn-lightning checkpoints hold tensors and plain types only

    def _check_output_dirs(self) -> None:
        """Fail before training if run logs and checkpoints cannot be written, or the disk is nearly full."""
        logger, trainer = self.trainer.logger, self.trainer
        folders = {Path(getattr(logger, "root_dir", None) or trainer.default_root_dir)}
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            folders.add(Path(trainer.checkpoint_callback.dirpath))
        param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        need = 2 * 3 * param_bytes + 64 * 2**20  # best + last, each weights and two Adam moments; logs
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder) as probe:
                    probe.write(b"ok")
            except OSError as e:
                raise InputError(
                    f"trainer.default_root_dir: cannot write run logs/checkpoints under {folder} ({e.strerror or e})"
                ) from None
            free = shutil.disk_usage(folder).free
            if free < need:
                raise InputError(
                    f"trainer.default_root_dir: only {free / 2**20:.0f} MB free under {folder}; "
                    f"this run needs about {need / 2**20:.0f} MB for checkpoints and logs"
                )


def _version_number(name: str) -> int | None:
    return int(name[len("version_") :]) if name.startswith("version_") and name[len("version_") :].isdigit() else None


def check_checkpoint(path: str) -> dict:
    """Load ``path`` with ``weights_only=True`` (no code from the file runs) and check that it is an
    rnn-lightning checkpoint: weights, plain-typed hyperparameters and the tokenizer."""
    if not Path(path).is_file():
        raise InputError(f"ckpt_path: {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"ckpt_path: {path!r} holds pickled Python objects, which weights_only loading refuses "
            "(rnn-lightning checkpoints hold only tensors and plain types; this one came from elsewhere)"
        ) from None
    except Exception as e:
        raise InputError(
            f"ckpt_path: {path!r} is not a readable checkpoint (truncated or another format: {type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters", "IMDBDataModule"} <= ckpt.keys():
        raise InputError(
            f"ckpt_path: {path!r} is not an rnn-lightning checkpoint (no weights, hyperparameters and tokenizer)"
        )
    return ckpt


def main(args=None) -> None:
    """Entry point; bad input from a person ends in one line on stderr, not a traceback."""
    tune_cpu_runtime()
    try:
        RNNLightningCLI(args=args)
    except (InputError, NonFiniteLossError) as e:
        sys.exit(f"error: {e}")
