"""The command line: LightningCLI wired to the IMDB data module and the classifier."""

import sys
from typing import NoReturn

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from rnn_lightning.callbacks import HParamsWithMetrics, PredictionWriter
from rnn_lightning.data import IMDBDataModule
from rnn_lightning.errors import InputError
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
    """LightningCLI's config saver, except that a test/predict run without a logger (so without a
    run directory of its own) does not write ``config.yaml`` into ``default_root_dir``, where a
    second such run would collide with it."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" or trainer.logger is not None:
            super().setup(trainer, pl_module, stage)


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
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:02d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(ParameterSummary, "summary")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(HParamsWithMetrics, "hparams_metrics")


def main(args=None) -> None:
    """Entry point; bad input from a person ends in one line on stderr, not a traceback."""
    tune_cpu_runtime()
    try:
        RNNLightningCLI(args=args)
    except InputError as e:
        sys.exit(f"error: {e}")
