"""Small Lightning callbacks: hyperparameters with final metrics, exact parameter counts, the run's config,
a learning-rate suggestion. The prediction file is ``prediction_writer.py``'s, stopping on a signal
``graceful_stop.py``'s."""

import os
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateFinder, ModelSummary, TQDMProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from rnn_lightning import checkpoint


class HParamsWithMetrics(Callback):
    """At the end of ``fit``, records the hyperparameters together with the final and best validation
    metrics, so runs compare side by side in TensorBoard's HPARAMS tab: the model's and the data's
    (``data.*``), and from the command's config (LightningCLI's ``SaveConfigCallback``) the optimizer's,
    the LR scheduler's (``optimizer.lr`` ...) and the trainer's plain settings (``trainer.max_epochs`` ...)."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.logger is None:
            return
        metrics = {
            f"hp/{k.replace('/', '_')}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and isinstance(ckpt.best_model_score, torch.Tensor):
            metrics[f"hp/best_{ckpt.monitor.replace('/', '_')}"] = float(ckpt.best_model_score)
        params = {**dict(pl_module.hparams), **{f"data.{k}": v for k, v in trainer.datamodule.hparams.items()}}
        config = next((c.config for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
        if config is not None:
            params.update(config_hparams(config))
        # Keys with a leading underscore are LightningCLI's bookkeeping (``_instantiator``, ``_class_path``).
        params = {k: v for k, v in params.items() if not k.rpartition(".")[2].startswith("_")}
        trainer.logger.log_hyperparams({k: ("None" if v is None else v) for k, v in params.items()}, metrics)


def config_hparams(config) -> dict:
    """The optimizer's and LR scheduler's class and arguments (``optimizer``: ``Adam``, ``optimizer.lr``: 0.001)
    and the trainer's plain settings (numbers, strings, switches) of a LightningCLI config."""
    out = {}
    for section in ("optimizer", "lr_scheduler"):
        value = config.get(section)
        if value is not None and value.get("class_path"):
            out[section] = value.class_path.rpartition(".")[2]
            out.update({f"{section}.{k}": v for k, v in (value.get("init_args") or {}).items() if _plain(v)})
    if config.get("trainer") is not None:
        out.update({f"trainer.{k}": v for k, v in vars(config.trainer).items() if v is not None and _plain(v)})
    return out


def _plain(value) -> bool:
    return isinstance(value, (bool, int, float, str)) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value)
    )


class ChosenMetricsBar(TQDMProgressBar):
    """Lightning's progress bar with the metrics ``keys`` and ``monitor`` (the checkpoint's, linked by the CLI)
    only, of all that the model logs with ``prog_bar``: a model of K classes logs an F1 for each, hundreds of
    characters on every refresh."""

    def __init__(
        self,
        keys: tuple[str, ...] = ("train/loss_step", "val/loss"),
        monitor: str | None = None,
        refresh_rate: int = 1,
        leave: bool = False,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.keys, self.monitor = tuple(keys), monitor

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        shown = {*self.keys, self.monitor, "v_num"}  # v_num: the run's version, Lightning's own
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k in shown}


class LearningRateSuggestion(LearningRateFinder):
    """Lightning's learning-rate finder at the start of ``fit``, reporting rather than applying.

    The learning rate lives in the optimizer's config (``--optimizer.init_args.lr``), not in the
    model, so Lightning's finder cannot set it; this one prints the suggestion and saves the
    loss-versus-learning-rate plot as ``lr_finder.png`` in the run directory. Training then goes on.
    """

    def __init__(self, min_lr: float = 1e-6, max_lr: float = 1.0, num_training_steps: int = 100) -> None:
        super().__init__(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training_steps, update_attr=False)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        finder = self.optimal_lr
        if finder is None or not trainer.is_global_zero:
            return
        lr = finder.suggestion()
        out = Path(trainer.log_dir or trainer.default_root_dir) / "lr_finder.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig = finder.plot(suggest=lr is not None)
        fig.savefig(out)
        import matplotlib.pyplot as plt

        plt.close(fig)
        if lr is None:
            rank_zero_info(
                f"The learning-rate finder has no suggestion (too few steps, or the loss diverged); plot: {out}"
            )
        else:
            rank_zero_info(
                f"Suggested learning rate: {lr:.3g} (use it with --optimizer.init_args.lr {lr:.3g}); plot: {out}"
            )


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
    """LightningCLI's config saver (``config.yaml`` in the run folder), except that a fit resumed
    from a checkpoint of its own run (in its folder, or a SLURM requeue checkpoint, which names its
    run) keeps the ``config.yaml`` the run started with, and a command without a logger
    (``predict``) writes none (it has no run folder of its own)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.logger is None:
            return
        log_dir, ckpt_path = trainer.log_dir, self.config.get("ckpt_path")
        if stage == "fit" and ckpt_path and log_dir and os.path.isfile(os.path.join(log_dir, self.config_filename)):
            if Path(ckpt_path).resolve().is_relative_to(Path(log_dir).resolve()) or Path(ckpt_path).match(
                checkpoint.HPC_PATTERN
            ):
                return
        super().setup(trainer, pl_module, stage)
