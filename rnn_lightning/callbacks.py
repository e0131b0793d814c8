"""Callbacks: prediction file writer, hyperparameters with final metrics for TensorBoard, LR suggestion."""

import csv
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, LearningRateFinder
from lightning.pytorch.utilities import rank_zero_info

from rnn_lightning.errors import InputError

FIELDS = ("id", "prob_positive", "label", "error")


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results to ``output`` (``.csv`` or ``.jsonl``): one row per input row, in
    input order (also under DDP), with id, probability of positive, label (``pos``/``neg``) and error.

    The file appears only complete: it is written to a temporary file beside it and renamed at the end.
    """

    def __init__(self, output: str = "predictions.csv", threshold: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        if Path(output).suffix not in (".csv", ".jsonl"):
            raise InputError(f"prediction_writer.output: expected a .csv or .jsonl path, got {output!r}")
        self.output, self.threshold = output, threshold
        self._probs: dict[int, float] = {}

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._probs = {}

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._probs.update(zip(batch[1].tolist(), prediction.float().tolist(), strict=True))

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        probs = self._probs
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            parts: list = [None] * trainer.world_size
            dist.all_gather_object(parts, probs)
            probs = {k: v for part in parts for k, v in part.items()}
        if trainer.is_global_zero:
            self._write(trainer, probs)

    def _write(self, trainer: Trainer, probs: dict[int, float]) -> None:
        rows = trainer.datamodule.predict_rows
        n = len(rows.ids) if rows is not None else len(probs)
        out = Path(self.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, FIELDS) if out.suffix == ".csv" else None
                if writer:
                    writer.writeheader()
                for i in range(n):
                    p = probs.get(i)
                    row = {
                        "id": rows.ids[i] if rows is not None else str(i),
                        "prob_positive": None if p is None else round(p, 6),
                        "label": None if p is None else ("pos" if p >= self.threshold else "neg"),
                        "error": rows.errors[i] if rows is not None else "",
                    }
                    writer.writerow(row) if writer else f.write(json.dumps(row) + "\n")
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        rank_zero_info(f"Wrote {n} predictions to {out}")


class HParamsWithMetrics(Callback):
    """At the end of ``fit``, records the hyperparameters together with the final and best validation
    metrics, so runs compare side by side in TensorBoard's HPARAMS tab."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.logger is None:
            return
        metrics = {
            f"hp/{k.replace('/', '_')}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and isinstance(ckpt.best_model_score, torch.Tensor):
            metrics["hp/best_val_acc"] = float(ckpt.best_model_score)
        params = {**dict(pl_module.hparams), **{f"data.{k}": v for k, v in trainer.datamodule.hparams.items()}}
        trainer.logger.log_hyperparams({k: ("None" if v is None else v) for k, v in params.items()}, metrics)


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
