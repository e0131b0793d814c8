"""The classifier: loss, metrics, semi-supervised objectives and the train/val/test/predict steps around ``SentimentRNN``."""

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryConfusionMatrix, BinaryF1Score, BinaryROC

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.models.base import NonFinite, RecurrentModule


class SentimentClassifier(RecurrentModule):
    """Binary sentiment classifier around ``SentimentRNN``: token ids (B, T) -> logits (B,); positive = 1.

    Trains on logits with ``BCEWithLogitsLoss`` (numerically stable, one sigmoid); probabilities
    appear only in ``predict_step``. The optimizer and LR scheduler come from the config
    (LightningCLI's ``optimizer:`` / ``lr_scheduler:``).

    Semi-supervised objectives (each off at weight 0), added to the loss of the labelled batch; the
    perturbations act on the embedded input (T, B, E), each review's perturbation of L2 norm ``epsilon``
    over its real (unpadded) steps:

    - adversarial training: the loss again, with the input moved along its loss gradient;
    - virtual adversarial training: the KL divergence between the prediction and the prediction
      with the input moved where one power-iteration step says it changes most; needs no label, so
      it runs on the unlabelled batch (``data.unlabelled: true``) when there is one, else the labelled;
    - entropy minimisation: the mean entropy of the predictions on the unlabelled batch.

    Args:
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
        **net: the network's hyperparameters, by name: ``SentimentRNN``'s arguments (``model.cell``,
            ``model.hidden_size``, ...), with its defaults and checks. The CLI lists them from there.
    """

    def __init__(
        self,
        on_nonfinite: NonFinite = "stop",
        init_from: str | None = None,
        adversarial: float = 0.0,
        virtual_adversarial: float = 0.0,
        entropy: float = 0.0,
        epsilon: float = 1.0,
        **net: Any,
    ) -> None:
        super().__init__()
        for name, value in (("adversarial", adversarial), ("virtual_adversarial", virtual_adversarial),
                            ("entropy", entropy), ("epsilon", epsilon)):  # fmt: skip
            if not value >= 0:
                raise InputError(f"model.{name}: expected a number >= 0, got {value}")
        self.save_hyperparameters()
        self.build_network(on_nonfinite, **net)
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

    # ---------------------------------------------------------------- starting from a pretrained network

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_from and self.trainer.ckpt_path is None:
            names = copy_network(self.hparams.init_from, self)
            rank_zero_info(f"model.init_from: {len(names)} tensors from {self.hparams.init_from}: {', '.join(names)}")

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> logits (B,)."""
        return self.net(tokens)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        tokens, labels = batch  # (B, T), (B,)
        embedded = self.net.embed(tokens)  # (T, B, E)
        logits = self.net.classify(embedded, tokens)
        loss = self.loss(logits, labels.float())
        if stage == "train":
            loss = loss + self._semi_supervised(tokens, labels, embedded, loss)
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
            extra = extra + hp.adversarial * self.loss(self.net.classify(embedded + r, tokens), labels.float())
            self.log("train/adversarial", extra.detach(), on_step=True, on_epoch=False)
        unlabelled = self._unlabelled if self._unlabelled is not None else tokens
        if hp.virtual_adversarial > 0:
            vat = self._virtual_adversarial(unlabelled)
            extra = extra + hp.virtual_adversarial * vat
            self.log("train/virtual_adversarial", vat.detach(), on_step=True, on_epoch=False)
        if hp.entropy > 0:
            p = torch.sigmoid(self.net(unlabelled))
            ent = -(p * torch.log(p.clamp_min(1e-7)) + (1 - p) * torch.log((1 - p).clamp_min(1e-7))).mean()
            extra = extra + hp.entropy * ent
            self.log("train/entropy", ent.detach(), on_step=True, on_epoch=False)
        return extra

    def _virtual_adversarial(self, tokens: Tensor) -> Tensor:
        """KL(p(x) || p(x + r)) with r the direction, found by one power-iteration step, in which the
        prediction changes most (Miyato et al. 2017), of norm ``epsilon``."""
        embedded = self.net.embed(tokens)
        with torch.no_grad():
            clean = self.net.classify(embedded, tokens)
        d = perturbation(torch.randn_like(embedded), tokens, self.net.pad_id, 1e-3 * self.hparams.epsilon)
        d.requires_grad_(True)
        (grad,) = torch.autograd.grad(bernoulli_kl(clean, self.net.classify(embedded.detach() + d, tokens)), d)
        r = perturbation(grad.detach(), tokens, self.net.pad_id, self.hparams.epsilon)
        return bernoulli_kl(clean, self.net.classify(embedded + r, tokens))

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


def perturbation(direction: Tensor, tokens: Tensor, pad_id: int, norm: float) -> Tensor:
    """``direction`` (T, B, E) zeroed at padding and scaled so each review's slice has L2 norm ``norm``."""
    real = (tokens.t() != pad_id).unsqueeze(-1).to(direction.dtype)  # (T, B, 1)
    d = direction.float() * real
    scale = norm / d.square().sum(dim=(0, 2), keepdim=True).sqrt().clamp_min(1e-12)
    return (d * scale).to(direction.dtype)


def bernoulli_kl(clean_logits: Tensor, logits: Tensor) -> Tensor:
    """Mean KL(Bernoulli(sigmoid(clean)) || Bernoulli(sigmoid(logits))); the clean side is a constant."""
    p = torch.sigmoid(clean_logits.detach().float())
    logits = logits.float()
    # p log p/q + (1-p) log (1-p)/(1-q), with log q = logsigmoid(l), log(1-q) = logsigmoid(-l)
    return (
        p * (F.logsigmoid(clean_logits.detach().float()) - F.logsigmoid(logits))
        + (1 - p) * (F.logsigmoid(-clean_logits.detach().float()) - F.logsigmoid(-logits))
    ).mean()


def copy_network(path: str, model: "RecurrentModule") -> list[str]:
    """Copy every tensor of ``path``'s network that this network has too, except the head; the names copied.

    The embedding and the recurrent layers must be there, and every tensor copied must have the same
    shape on both sides: a mismatch, e.g. another vocabulary size, is a one-line error naming both
    shapes. Tensors the source lacks (a word-pair table a language model cannot train) keep their
    initialisation, and are named.
    """
    try:
        ckpt = checkpoint.load_checkpoint(path)
    except InputError as e:
        raise InputError(f"model.init_from: {str(e).split(': ', 1)[1]}") from None
    source = {k[len("net.") :]: v for k, v in ckpt[checkpoint.WEIGHTS_KEY].items() if k.startswith("net.")}
    target = model.net.state_dict()
    wanted = [k for k in target if not k.startswith("head.")]
    required = [k for k in wanted if k.startswith(("embedding.", "layers."))]
    missing = [k for k in required if k not in source]
    if missing:
        raise InputError(f"model.init_from: {path!r} has no {missing[0]} (another network: cell, layers or directions)")
    names = [k for k in wanted if k in source]
    for k in names:
        if source[k].shape != target[k].shape:
            raise InputError(
                f"model.init_from: {k} is {tuple(source[k].shape)} in {path!r} but {tuple(target[k].shape)} here"
                + (
                    " (vocabulary: set data.vocab_size to the pretraining's)"
                    if k == "embedding.weight" and source[k].shape[0] != target[k].shape[0]
                    else ""
                )  # fmt: skip
            )
    with torch.no_grad():
        for k in names:
            target[k].copy_(source[k])
    kept = sorted(set(wanted) - set(names))
    if kept:
        rank_zero_info(f"model.init_from: not in the checkpoint, so initialised afresh: {', '.join(kept)}")
    return names
