"""The classifier: loss, metrics, semi-supervised objectives and the train/val/test/predict steps around ``TextRNN``."""

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryConfusionMatrix, BinaryROC, MulticlassConfusionMatrix

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.models.metrics import classification_metrics, metric_scores
from rnn_lightning.models.objectives import categorical_kl, perturbation, soft_label_loss
from rnn_lightning.models.recurrent_module import NonFinite, RecurrentModule
from rnn_lightning.models.transfer import copy_network, load_teacher
from rnn_lightning.network.text_rnn import probabilities

ClassWeights = Literal["balanced"] | list[float] | None


class TextClassifier(RecurrentModule):
    """Text classifier around ``TextRNN``: token ids (B, T) -> logits over the data's K classes.

    Two classes: one logit (of class 1), binary cross-entropy on logits, binary metrics (accuracy,
    F1, AUROC). K > 2: K logits, cross-entropy, multiclass metrics (accuracy, macro-F1, F1 per class,
    one-vs-rest AUROC). Both: balanced accuracy, and at ``test`` a confusion-matrix image.
    Probabilities appear only in ``predict_step``. The optimizer and LR scheduler come from the
    config (LightningCLI's ``optimizer:`` / ``lr_scheduler:``).

    Semi-supervised objectives (each off at weight 0), added to the loss of the labelled batch; the
    perturbations act on the embedded input (T, B, E), each review's perturbation of L2 norm ``epsilon``
    over its real (unpadded) steps:

    - adversarial training: the loss again, with the input moved along its loss gradient;
    - virtual adversarial training: the KL divergence between the prediction and the prediction
      with the input moved where one power-iteration step says it changes most; needs no label, so
      it runs on the unlabelled batch (``data.unlabelled: true``) when there is one, else the labelled;
    - entropy minimisation: the mean entropy of the predictions on the unlabelled batch;
    - self-training from a teacher (noisy student, Xie et al. 2020): a trained classifier, fixed and
      without dropout, gives its probabilities for each unlabelled review, and this model, under its
      own dropout, learns them as soft labels (cross-entropy with them; class weights do not apply).

    Args:
        class_names: the classes in id order; the CLI links them from the data (``data.class_names``), or
            from the checkpoint given to ``--ckpt_path``, which stores them.
        class_counts: training texts per class, linked from the data; used by ``class_weights: balanced``.
        class_weights: weights of the classes in the loss: none, ``balanced`` (N / (K * count of the
            class), so every class weighs the same in total), or one number per class.
        on_nonfinite: a NaN/inf training loss or gradient ``stop``s training with a message naming the
            step (nothing is saved from that state), or ``skip``s that batch's update with a warning.
        init_from: a checkpoint (a ``pretrain.py`` language model, or a classifier) whose network
            weights start this one: every tensor of the network but the head, which must match in
            shape. Applied at the start of ``fit`` (not when resuming). The CLI links it to
            ``data.tokenizer_from``, so the pretraining's vocabulary comes along.
        adversarial: weight of the adversarial-training loss.
        virtual_adversarial: weight of the virtual-adversarial loss.
        entropy: weight of the entropy-minimisation loss.
        epsilon: norm of the (virtual) adversarial perturbation per review.
        teacher: a classifier checkpoint whose predictions on the unlabelled batch are learned with
            weight ``distillation``, or a list of them (their probabilities averaged: an ensemble). It
            must read the same tokens: the CLI links ``data.tokenizer_from`` to it (the first) when
            ``init_from`` is not set. Loaded at the start of every ``fit`` (resumes too); it
            is not part of this model's weights or checkpoints.
        distillation: weight of the loss against the teacher's predictions (needs ``data.unlabelled``).
        **net: the network's hyperparameters, by name: ``TextRNN``'s arguments (``model.cell``,
            ``model.hidden_size``, ...), with its defaults and checks. The CLI lists them from there.
    """

    def __init__(
        self,
        class_names: list[str] | None = None,
        class_counts: list[int] | None = None,
        class_weights: ClassWeights = None,
        on_nonfinite: NonFinite = "stop",
        init_from: str | None = None,
        adversarial: float = 0.0,
        virtual_adversarial: float = 0.0,
        entropy: float = 0.0,
        epsilon: float = 1.0,
        teacher: str | list[str] | None = None,
        distillation: float = 0.0,
        **net: Any,
    ) -> None:
        super().__init__()
        for name, value in (("adversarial", adversarial), ("virtual_adversarial", virtual_adversarial),
                            ("entropy", entropy), ("epsilon", epsilon), ("distillation", distillation)):  # fmt: skip
            if not value >= 0:
                raise InputError(f"model.{name}: expected a number >= 0, got {value}")
        names = list(class_names) if class_names is not None else list(checkpoint.DEFAULT_CLASS_NAMES)
        if len(names) < 2 or len(set(names)) < len(names):
            raise InputError(f"model.class_names: expected two or more distinct names, got {names}")
        self.save_hyperparameters()
        self.hparams.class_names = self.class_names = names
        self.build_network(on_nonfinite, num_classes=len(names), **net)
        del self.hparams["num_classes"]  # it is len(class_names), not an argument of its own
        if distillation > 0 and not teacher:
            raise InputError("model.distillation: needs model.teacher, the checkpoint of a trained classifier")
        # Kept out of the module tree (a tuple, not an attribute nn.Module registers): the teacher is
        # neither trained nor saved; it is loaded from its own checkpoint in setup("fit").
        self._teacher: tuple[torch.nn.Module, ...] | None = None
        self.register_buffer("class_weight", self._class_weight(class_weights, class_counts, names), persistent=False)
        # Compute groups would share one state between the F1s, but never update the one inside the
        # per-class wrapper (torchmetrics then warns it computes before any update): off for K > 2.
        # One collection per stage: their states must never mix (e.g. validation inside a training epoch).
        metrics = MetricCollection(classification_metrics(names), compute_groups=len(names) == 2)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Training has no AUROC: an exact one keeps every score of the epoch, thousands of small tensors
        # that pin the allocator's heap between each step's large temporaries, so fit's memory would grow
        # with the steps of an epoch; a binned one adds a pass over its thresholds to every step.
        train = {k: v for k, v in classification_metrics(names).items() if k != "auroc"}
        self.train_metrics = MetricCollection(train, compute_groups=len(names) == 2).clone(prefix="train/")
        # Epoch losses as metrics too: weighted by batch size and summed across processes, so the
        # value is the exact mean over all reviews under DDP, whatever the shard sizes.
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # Drawn as images at the end of `test` (TensorBoard), so people look instead of reading numbers.
        k = len(names)
        curves = {"confusion_matrix": BinaryConfusionMatrix(), "roc": BinaryROC(thresholds=200)}
        self.test_curves = MetricCollection(curves if k == 2 else {"confusion_matrix": MulticlassConfusionMatrix(k)})

    @staticmethod
    def _class_weight(how: ClassWeights, counts: list[int] | None, names: list[str]) -> Tensor | None:
        """(K,) weights of the classes in the loss, or None (all 1)."""
        k = len(names)
        if how is None or how == "none":
            return None
        if how == "balanced":
            if counts is None or len(counts) != k or min(counts) <= 0:
                raise InputError(
                    f"model.class_weights: balanced needs a training count per class, got {counts} for {names}"
                )
            counts_t = torch.tensor(counts, dtype=torch.float32)
            return counts_t.sum() / (k * counts_t)
        if isinstance(how, str) or len(how) != k or not all(w >= 0 for w in how) or not any(w > 0 for w in how):
            raise InputError(
                f"model.class_weights: expected none, balanced or {k} numbers >= 0 (one per class of {names}), got {how}"
            )
        return torch.tensor([float(w) for w in how])

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean loss of logits (B,) or (B, K) against class ids (B,); with class weights, the
        weighted mean (sum of w[y] * loss / sum of w[y], as ``cross_entropy``'s ``weight``)."""
        w = self.class_weight
        if logits.dim() == 2:
            return F.cross_entropy(logits, labels, weight=w)
        targets = labels.to(logits.dtype)
        if w is None:
            return F.binary_cross_entropy_with_logits(logits, targets)
        per_text = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        weights = w[labels]
        return (weights * per_text).sum() / weights.sum().clamp_min(1e-12)

    # ---------------------------------------------------------------- starting from a pretrained network

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        raw_text = stage == "predict" and getattr(data, "predict_path", None) is not None  # no dataset read
        if data is not None and not raw_text and hasattr(data, "class_names") and data.class_names != self.class_names:
            raise InputError(f"ckpt_path: the model's classes {self.class_names} are not the data's {data.class_names}")
        if stage == "fit" and self.hparams.init_from and self.trainer.ckpt_path is None:
            names = copy_network(self.hparams.init_from, self)
            rank_zero_info(f"model.init_from: {len(names)} tensors from {self.hparams.init_from}: {', '.join(names)}")
        if stage == "fit" and self.hparams.distillation > 0:
            paths = [self.hparams.teacher] if isinstance(self.hparams.teacher, str) else self.hparams.teacher
            self._teacher = tuple(load_teacher(path, self.class_names, data) for path in paths)

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
        for teacher in self._teacher or ():
            teacher.to(self.device)
        if self.net.ngram_nb and self.trainer.ckpt_path is None:  # a resume has them in its checkpoint
            self._fit_ngram_scale(self.trainer.datamodule)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> logits (B,) for two classes, (B, K) for more."""
        return self.net(tokens)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        tokens, labels = batch  # (B, T), (B,)
        embedded = self.net.embed(tokens)  # (T, B, E)
        logits = self.net.classify(embedded, tokens)
        loss = self.loss(logits, labels)
        if stage == "train":
            loss = loss + self._semi_supervised(tokens, labels, embedded, loss)
        metrics, mean_loss = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_loss")
        scores = metric_scores(logits.detach())
        metrics.update(scores, labels)
        mean_loss.update(loss.detach(), weight=len(labels))
        if stage == "test":
            self.test_curves.update(scores, labels)
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _log_epoch(self, stage: str) -> None:
        """Log a stage's epoch metrics, computed (synced across processes) and reset here.

        Logged once per epoch from the epoch-end hooks, not from every step with ``on_epoch=True``:
        the result is the same, and each ``self.log`` of a metric costs Python work in every step of a
        small model. Computed here rather than by
        Lightning because the F1 per class is one metric giving K values.
        """
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage != "train")
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        self.log_dict(values, prog_bar=stage != "train")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def training_step(self, batch, batch_idx: int) -> Tensor:
        """``batch``: (ids, labels), or with ``data.unlabelled`` {"labelled": (ids, labels), "unlabelled": (ids, _)}."""
        self._unlabelled = batch["unlabelled"][0] if isinstance(batch, dict) else None
        return self._step(batch["labelled"] if isinstance(batch, dict) else batch, "train")

    # ---------------------------------------------------------------- semi-supervised objectives

    def _semi_supervised(self, tokens: Tensor, labels: Tensor, embedded: Tensor, loss: Tensor) -> Tensor:
        """The weighted extra losses of one training step (a zero tensor when all weights are 0)."""
        hp, extra = self.hparams, loss.new_zeros(())
        if hp.adversarial > 0:
            (grad,) = torch.autograd.grad(loss, embedded, retain_graph=True)
            r = perturbation(grad.detach(), tokens, self.net.pad_id, hp.epsilon)
            extra = extra + hp.adversarial * self.loss(self.net.classify(embedded + r, tokens), labels)
            self.log("train/adversarial", extra.detach(), on_step=True, on_epoch=False)
        unlabelled = self._unlabelled if self._unlabelled is not None else tokens
        if hp.virtual_adversarial > 0:
            vat = self._virtual_adversarial(unlabelled)
            extra = extra + hp.virtual_adversarial * vat
            self.log("train/virtual_adversarial", vat.detach(), on_step=True, on_epoch=False)
        student = self.net(unlabelled) if hp.entropy > 0 or hp.distillation > 0 else None  # (B,) or (B, K)
        if hp.entropy > 0:
            p = probabilities(student)  # (B, K)
            ent = -(p * torch.log(p.clamp_min(1e-7))).sum(-1).mean()
            extra = extra + hp.entropy * ent
            self.log("train/entropy", ent.detach(), on_step=True, on_epoch=False)
        if hp.distillation > 0:
            with torch.no_grad():
                # (B, K), averaged over the teachers (each in eval mode)
                target = torch.stack([probabilities(t(unlabelled)) for t in self._teacher]).mean(0)
            soft = soft_label_loss(student, target)
            extra = extra + hp.distillation * soft
            self.log("train/distillation", soft.detach(), on_step=True, on_epoch=False)
        return extra

    def _virtual_adversarial(self, tokens: Tensor) -> Tensor:
        """KL(p(x) || p(x + r)) with r the direction, found by one power-iteration step, in which the
        prediction changes most (Miyato et al. 2017), of norm ``epsilon``."""
        embedded = self.net.embed(tokens)
        with torch.no_grad():
            clean = self.net.classify(embedded, tokens)
        d = perturbation(torch.randn_like(embedded), tokens, self.net.pad_id, 1e-3 * self.hparams.epsilon)
        d.requires_grad_(True)
        (grad,) = torch.autograd.grad(categorical_kl(clean, self.net.classify(embedded.detach() + d, tokens)), d)
        r = perturbation(grad.detach(), tokens, self.net.pad_id, self.hparams.epsilon)
        return categorical_kl(clean, self.net.classify(embedded + r, tokens))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        curves = self.test_curves
        figures = {"test/confusion_matrix": curves["confusion_matrix"].plot(labels=self.class_names)[0]}
        if "roc" in curves:
            figures["test/roc"] = curves["roc"].plot(score=True)[0]
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_figure"):
            for tag, fig in figures.items():
                experiment.add_figure(tag, fig, global_step=self.global_step)
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)
        curves.reset()

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Probabilities (B, K) of each class. ``batch`` is (tokens (B, T), row index (B,))."""
        return probabilities(self(batch[0]))
