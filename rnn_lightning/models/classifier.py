"""The classifier: the supervised loss, metrics and train/val/test/predict steps around ``TextRNN``."""

from typing import Any, Literal

from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.models.recurrent_module import NonFinite, RecurrentModule
from rnn_lightning.models.transfer import copy_network
from rnn_lightning.tasks import Task, make_task

ClassWeights = Literal["balanced"] | list[float] | None


class TextClassifier(RecurrentModule):
    """Text classifier around ``TextRNN``: token ids (B, T) -> logits over the data's K classes.

    What the classes are to each other is the task's business (``rnn_lightning.tasks``, ``self.task``):
    the loss, the probabilities, the metrics (``{stage}/acc`` ...) and the test figures. Probabilities
    appear only in ``predict_step``. The optimizer and LR scheduler come from the config (LightningCLI's
    ``optimizer:`` / ``lr_scheduler:``). Losses added to a training step (``models/semi_supervised.py``)
    come from a subclass, through ``extra_loss``.

    Args:
        class_names: the classes in id order; the CLI links them from the data (``data.class_names``), or
            from the checkpoint given to ``--ckpt_path``, which stores them.
        class_counts: training texts per class (multi-label: texts carrying each label), linked from the
            data; used by ``class_weights: balanced``.
        class_weights: weights of the classes in the loss: none, ``balanced`` (N / (K * count of the
            class), so every class weighs the same in total; multi-label: each label's ``pos_weight``,
            (texts without it) / (texts with it)), or one number per class.
        multi_label: the labels of a text do not exclude each other (any number per text), linked from
            the data (``data.multi_label``) or the checkpoint (``rnn_lightning.tasks.MultiLabel``).
        thresholds: multi-label only: one probability, or one per label, at or above which a label is
            decided present. Unset, each label's is chosen on the validation split during ``fit`` (for
            that label's F1) and kept in the checkpoint; set, it is used instead (``fit``, ``test``,
            ``predict``).
        train_texts: training texts (the validation part excluded), linked from the data; used by
            multi-label ``class_weights: balanced``.
        on_nonfinite: a NaN/inf training loss or gradient ``stop``s training with a message naming the
            step (nothing is saved from that state), or ``skip``s that batch's update with a warning.
        init_from: a checkpoint (a ``pretrain`` language model, or a classifier) whose network
            weights start this one: every tensor of the network but the head, which must match in
            shape. Applied at the start of ``fit`` (not when resuming). The CLI links it to
            ``data.tokenizer_from``, so the pretraining's vocabulary comes along.
        **net: the network's hyperparameters, by name: ``TextRNN``'s arguments (``model.cell``,
            ``model.hidden_size``, ...), with its defaults and checks. The CLI lists them from there.
    """

    CHECKPOINT_MONITOR, CHECKPOINT_MODE = Task.MONITOR, Task.MONITOR_MODE

    def __init__(
        self,
        class_names: list[str] | None = None,
        class_counts: list[int] | None = None,
        class_weights: ClassWeights = None,
        multi_label: bool = False,
        thresholds: float | list[float] | None = None,
        train_texts: int | None = None,
        on_nonfinite: NonFinite = "stop",
        init_from: str | None = None,
        **net: Any,
    ) -> None:
        super().__init__()
        names = list(class_names) if class_names is not None else list(checkpoint.DEFAULT_CLASS_NAMES)
        if len(names) < 2 or len(set(names)) < len(names):
            raise InputError(f"model.class_names: expected two or more distinct names, got {names}")
        self.save_hyperparameters()
        self.hparams.class_names = self.class_names = names
        self.task = make_task(names, bool(multi_label), thresholds)
        self.build_network(on_nonfinite, num_outputs=self.task.num_outputs, **net)
        del self.hparams["num_outputs"]  # the task's, not an argument of its own
        weight = self.task.class_weight(class_weights, class_counts, train_texts)
        self.register_buffer("class_weight", weight, persistent=False)
        # One collection per stage: their states must never mix (e.g. validation inside a training epoch).
        self.train_metrics, self.val_metrics, self.test_metrics = (
            self.task.metrics(s) for s in ("train", "val", "test")
        )
        # Epoch losses as metrics too: weighted by batch size and summed across processes, so the
        # value is the exact mean over all reviews under DDP, whatever the shard sizes.
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # Drawn as images at the end of `test` (TensorBoard), so people look instead of reading numbers.
        self.test_curves = self.task.test_curves()

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean loss of logits against the labels (class ids (B,), or (B, K) 0/1 of a multi-label task),
        with ``model.class_weights`` (``Task.loss``)."""
        return self.task.loss(logits, labels, self.class_weight)

    def on_save_checkpoint(self, ckpt: dict) -> None:
        super().on_save_checkpoint(ckpt)
        ckpt[checkpoint.TASK_KEY] = self.task.state()  # e.g. the thresholds chosen on validation

    def on_load_checkpoint(self, ckpt: dict) -> None:
        super().on_load_checkpoint(ckpt)
        self.task.load_state(ckpt.get(checkpoint.TASK_KEY) or {}, "ckpt_path")

    # ---------------------------------------------------------------- starting from a pretrained network

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        raw_text = stage == "predict" and getattr(data, "predict_path", None) is not None  # no dataset read
        if data is not None and not raw_text and hasattr(data, "class_names"):
            if data.class_names != self.class_names:
                raise InputError(
                    f"ckpt_path: the model's classes {self.class_names} are not the data's {data.class_names}"
                )
            if bool(data.multi_label) != bool(self.hparams.multi_label):
                kinds = {True: "multi-label", False: "single-label"}
                raise InputError(
                    f"ckpt_path: the model is {kinds[bool(self.hparams.multi_label)]} but the data's labels are "
                    f"{kinds[data.multi_label]} (data.multi_label)"
                )
        if stage == "fit" and self.hparams.init_from and self.trainer.ckpt_path is None:
            names = copy_network(self.hparams.init_from, self)
            rank_zero_info(f"model.init_from: {len(names)} tensors from {self.hparams.init_from}: {', '.join(names)}")

    def _fit_ngram_scale(self, data) -> None:
        """``model.ngram_nb``: the bag's naive-Bayes ratios, from the labelled training reviews (each DDP
        process counts all of them: the same ratios everywhere, no communication)."""
        if not hasattr(data, "batches"):
            raise InputError("model.ngram_nb: counts the training split of the data module, which has none")
        self.net.fit_ngram_scale(data.batches("fit"))
        rank_zero_info(
            f"model.ngram_nb: naive-Bayes ratios of {int((self.net.ngram_scale != 0).any(-1).sum())} n-gram rows"
        )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.net.ngram_nb and self.trainer.ckpt_path is None:  # a resume has them in its checkpoint
            self._fit_ngram_scale(self.trainer.datamodule)

    # ---------------------------------------------------------------- the steps

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> logits, (B,) or (B, K) (``Task.num_outputs``)."""
        return self.net(tokens)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        tokens, labels = batch  # (B, T), (B,) class ids or (B, K) 0/1 labels
        embedded = self.net.embed(tokens)  # (T, B, E)
        logits = self.net.classify(embedded, tokens)
        loss = self.loss(logits, labels)
        if stage == "train":
            loss = loss + self.extra_loss(tokens, labels, embedded, loss)
        metrics, mean_loss = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_loss")
        scores = self.task.metric_input(logits.detach())
        metrics.update(scores, labels)
        mean_loss.update(loss.detach(), weight=len(labels))
        if stage == "test":
            self.test_curves.update(scores, labels)
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def extra_loss(self, tokens: Tensor, labels: Tensor, embedded: Tensor, loss: Tensor) -> Tensor:
        """What a subclass adds to a training step's loss, given the batch, its embedded input (T, B, E)
        and the supervised loss: nothing here."""
        return loss.new_zeros(())

    def _log_epoch(self, stage: str) -> None:
        """Log a stage's epoch metrics, computed (synced across processes) and reset here.

        Logged once per epoch from the epoch-end hooks, not from every step with ``on_epoch=True``:
        the result is the same, and each ``self.log`` of a metric costs Python work in every step of a
        small model. Computed here rather than by
        Lightning because the F1 per class is one metric giving K values. The progress bar shows the
        loss and the figures over all classes, not one per class (K of them would not fit a line).
        """
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage != "train")
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        per_class = {key for key in values if key.startswith(f"{stage}/f1_")}
        # The values are synced already (every process computed the same ones); Lightning's sync of them
        # is then a max of equal numbers, exact, and says so instead of warning under DDP.
        synced = {"sync_dist": True, "reduce_fx": "max"}
        self.log_dict({k: v for k, v in values.items() if k not in per_class}, prog_bar=stage != "train", **synced)
        self.log_dict({k: v for k, v in values.items() if k in per_class}, **synced)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        # decision settings (a multi-label task's thresholds) are chosen by fit's validation passes only
        self.task.learning = self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking
        self._log_epoch("val")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        figures = self.task.figures(self.test_curves)
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_figure"):
            for tag, fig in figures.items():
                experiment.add_figure(tag, fig, global_step=self.global_step)
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)
        self.test_curves.reset()

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Probabilities (B, K) of each class. ``batch`` is (tokens (B, T), row index (B,))."""
        return self.task.probabilities(self(batch[0]))
