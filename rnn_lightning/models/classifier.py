"""The LightningModule: loss, metrics and the train/val/test/predict steps around ``SentimentRNN``."""

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryConfusionMatrix, BinaryF1Score, BinaryROC

from rnn_lightning.checkpoint import DROPOUT_RNG_KEY
from rnn_lightning.errors import InputError, NonFiniteLossError
from rnn_lightning.models.components.network import SentimentRNN


class SentimentClassifier(LightningModule):
    """Binary sentiment classifier around ``SentimentRNN``: token ids (B, T) -> logits (B,); positive = 1.

    Trains on logits with ``BCEWithLogitsLoss`` (numerically stable, one sigmoid); probabilities
    appear only in ``predict_step``. The optimizer and LR scheduler come from the config
    (LightningCLI's ``optimizer:`` / ``lr_scheduler:``).

    Args:
        on_nonfinite: a NaN/inf training loss or gradient ``stop``s training with a message naming the
            step (nothing is saved from that state), or ``skip``s that batch's update with a warning.
        **net: the network's hyperparameters, by name: ``SentimentRNN``'s arguments (``model.cell``,
            ``model.hidden_size``, ...), with its defaults and checks. The CLI lists them from there.
    """

    def __init__(self, on_nonfinite: Literal["stop", "skip"] = "stop", **net: Any) -> None:
        super().__init__()
        if on_nonfinite not in ("stop", "skip"):
            raise InputError(f"model.on_nonfinite: expected one of stop, skip; got {on_nonfinite!r}")
        try:
            self.net = SentimentRNN(**net)
        except InputError as e:
            raise InputError(f"model.{e}") from None
        except TypeError as e:  # an argument SentimentRNN does not have
            raise InputError(f"model: {e}".replace("SentimentRNN.__init__()", "the network")) from None
        self.save_hyperparameters()
        self.hparams.update(self.net.config)  # every network argument, defaults included, in the checkpoint
        self._seed = torch.initial_seed()  # set by seed_everything before the CLI builds the model
        self._restored_rng: Tensor | None = None
        self.loss = nn.BCEWithLogitsLoss()
        metrics = MetricCollection({"acc": BinaryAccuracy(), "f1": BinaryF1Score(), "auroc": BinaryAUROC()})
        # One collection per stage: their states must never mix (e.g. validation inside a training epoch).
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Epoch losses as metrics too: weighted by batch size and summed across processes, so the
        # value is the exact mean over all reviews under DDP, whatever the shard sizes.
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # Drawn as images at the end of `test` (TensorBoard), so people look instead of reading numbers.
        self.test_curves = MetricCollection(
            {"confusion_matrix": BinaryConfusionMatrix(), "roc": BinaryROC(thresholds=200)}
        )

    # ---------------------------------------------------------------- exact resume
    # Dropout draws from a generator of the module's own, saved in every checkpoint, so a run resumed
    # from a checkpoint draws the same masks as the run that wrote it (the global RNG is also consumed
    # by things a resume does differently, e.g. the sanity check's DataLoader).

    def on_fit_start(self) -> None:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self._seed + self.global_rank)  # each DDP process its own masks
        if self._restored_rng is not None:
            generator.set_state(self._restored_rng)
        self.net.generator = generator

    def on_fit_end(self) -> None:
        self.net.generator = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.net.generator is not None:
            checkpoint[DROPOUT_RNG_KEY] = self.net.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_rng = checkpoint.get(DROPOUT_RNG_KEY)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> logits (B,)."""
        return self.net(tokens)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        tokens, labels = batch  # (B, T), (B,)
        logits = self(tokens)
        loss = self.loss(logits, labels.float())
        metrics, mean_loss = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_loss")
        metrics.update(logits.detach().sigmoid(), labels)
        mean_loss.update(loss.detach(), weight=len(labels))
        if stage == "test":
            self.test_curves.update(logits.detach().sigmoid(), labels)
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _log_epoch(self, stage: str) -> None:
        """Log a stage's epoch metrics; Lightning computes them (synced across processes) and resets them.

        Logged once per epoch from the epoch-end hooks, not from every step with ``on_epoch=True``:
        the result is the same, and each ``self.log`` of a metric costs a measurable share of a
        base-model training step in Python work (BENCHMARKS.md).
        """
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage != "train")
        self.log_dict(getattr(self, f"{stage}_metrics"), prog_bar=stage != "train")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        self._checked = (loss.detach(), batch_idx)  # checked with the gradients, before the update
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # The loss and every gradient are checked together: one host sync a step instead of two (each
        # sync makes the host wait for the GPU's queue). A non-finite loss gives non-finite gradients,
        # so skipping the update covers both.
        loss, batch_idx = self._checked
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        if not torch.isfinite(total + loss):
            if not torch.isfinite(loss):
                self._nonfinite(f"the training loss is {loss.item()}", batch_idx)
            else:
                self._nonfinite("a gradient is NaN/inf", None)
            optimizer.zero_grad(set_to_none=True)  # skip: parameters without gradients are not updated

    def _nonfinite(self, what: str, batch_idx: int | None) -> None:
        where = f"global step {self.global_step} (epoch {self.current_epoch}" + (
            f", batch {batch_idx})" if batch_idx is not None else ")"
        )
        if self.hparams.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"training stopped: {what} at {where}; no checkpoint was written from this state. "
                "Lower the learning rate, clip gradients (--trainer.gradient_clip_val 1.0), or set --model.on_nonfinite skip"
            )
        rank_zero_warn(f"skipped the update at {where}: {what}")
        return None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        curves = self.test_curves
        figures = {
            "test/confusion_matrix": curves["confusion_matrix"].plot(labels=["neg", "pos"])[0],
            "test/roc": curves["roc"].plot(score=True)[0],
        }
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_figure"):
            for tag, fig in figures.items():
                experiment.add_figure(tag, fig, global_step=self.global_step)
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)
        curves.reset()

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Probability of a positive review, (B,). ``batch`` is (tokens (B, T), row index (B,))."""
        return torch.sigmoid(self(batch[0]))
