"""Semi-supervised training around the supervised ``TextClassifier``: extra losses on the embedded input
and on unlabelled reviews, and a teacher's soft labels.

    python cli.py fit --config configs/student.yaml --data.dataset ../shared/imdb --model.teacher TEACHER.ckpt

Each objective is off at weight 0 and adds its weighted loss to the labelled batch's; the perturbations
act on the embedded input (T, B, E), each review's perturbation of L2 norm ``epsilon`` over its real
(unpadded) steps:

- adversarial training: the loss again, with the input moved along its loss gradient;
- virtual adversarial training: the KL divergence between the prediction and the prediction with the
  input moved where one power-iteration step says it changes most; needs no label, so it runs on the
  unlabelled batch (``data.unlabelled: true``) when there is one, else the labelled;
- entropy minimisation: the mean entropy of the predictions on the unlabelled batch;
- self-training from a teacher (noisy student, Xie et al. 2020): a trained classifier, fixed and without
  dropout, gives its probabilities for each unlabelled review, and this model, under its own dropout,
  learns them as soft labels (cross-entropy with them; class weights do not apply).
"""

from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.models.classifier import TextClassifier
from rnn_lightning.models.objectives import categorical_kl, perturbation, soft_label_loss
from rnn_lightning.network.text_rnn import TextRNN


class SemiSupervisedClassifier(TextClassifier):
    """``TextClassifier`` plus the semi-supervised objectives (see the module's docstring). With every
    weight at 0 it trains exactly as ``TextClassifier``.

    Args:
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
        **classifier: ``TextClassifier``'s arguments (``model.class_names``, ``model.init_from``, the
            network's ``model.cell`` ...), by name.
    """

    def __init__(
        self,
        adversarial: float = 0.0,
        virtual_adversarial: float = 0.0,
        entropy: float = 0.0,
        epsilon: float = 1.0,
        teacher: str | list[str] | None = None,
        distillation: float = 0.0,
        **classifier: Any,
    ) -> None:
        for name, value in (("adversarial", adversarial), ("virtual_adversarial", virtual_adversarial),
                            ("entropy", entropy), ("epsilon", epsilon), ("distillation", distillation)):  # fmt: skip
            if not value >= 0:
                raise InputError(f"model.{name}: expected a number >= 0, got {value}")
        super().__init__(**classifier)
        if self.hparams.multi_label:  # their losses compare distributions over classes that exclude each other
            for name, value in (("virtual_adversarial", virtual_adversarial), ("entropy", entropy), ("distillation", distillation)):  # fmt: skip
                if value > 0:
                    raise InputError(f"model.{name}: is for single-label models; these labels are multi-label")
        if distillation > 0 and not teacher:
            raise InputError("model.distillation: needs model.teacher, the checkpoint of a trained classifier")
        # Kept out of the module tree (a tuple, not an attribute nn.Module registers): the teacher is
        # neither trained nor saved; it is loaded from its own checkpoint in setup("fit").
        self._teacher: tuple[torch.nn.Module, ...] | None = None
        self._unlabelled: Tensor | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.distillation > 0:
            paths = [self.hparams.teacher] if isinstance(self.hparams.teacher, str) else self.hparams.teacher
            data = self.trainer.datamodule
            self._teacher = tuple(load_teacher(path, self.class_names, data) for path in paths)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        for teacher in self._teacher or ():
            teacher.to(self.device)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        """``batch``: (ids, labels), or with ``data.unlabelled`` {"labelled": (ids, labels), "unlabelled": (ids, _)}."""
        self._unlabelled = batch["unlabelled"][0] if isinstance(batch, dict) else None
        return super().training_step(batch["labelled"] if isinstance(batch, dict) else batch, batch_idx)

    def extra_loss(self, tokens: Tensor, labels: Tensor, embedded: Tensor, loss: Tensor) -> Tensor:
        """The weighted semi-supervised losses of one training step (a zero tensor when all weights are 0)."""
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
            p = self.task.probabilities(student)  # (B, K)
            ent = -(p * torch.log(p.clamp_min(1e-7))).sum(-1).mean()
            extra = extra + hp.entropy * ent
            self.log("train/entropy", ent.detach(), on_step=True, on_epoch=False)
        if hp.distillation > 0:
            with torch.no_grad():
                # (B, K), averaged over the teachers (each in eval mode)
                target = torch.stack([self.task.probabilities(t(unlabelled)) for t in self._teacher]).mean(0)
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


def load_teacher(path: str, class_names: list[str], data) -> torch.nn.Module:
    """The network of classifier checkpoint ``path``, fixed and in eval mode, checked to predict
    ``class_names`` from the same tokens as ``data``'s tokenizer makes."""
    try:
        ckpt = checkpoint.load_checkpoint(path, mmap=True)
        net = TextRNN.from_checkpoint(path, ckpt=ckpt)
    except InputError as e:
        raise InputError(f"model.teacher: {str(e).split(': ', 1)[1]}") from None
    names = list(ckpt[checkpoint.HPARAMS_KEY].get("class_names") or checkpoint.DEFAULT_CLASS_NAMES)
    if names != class_names:
        raise InputError(f"model.teacher: {path!r} predicts the classes {names}, the data has {class_names}")
    tokenizer = getattr(data, "tokenizer", None)
    if (
        tokenizer is not None
        and tokenizer.get_vocab() != Tokenizer.from_str(checkpoint.tokenizer_json(ckpt)).get_vocab()
    ):
        raise InputError(
            f"model.teacher: the vocabulary of {path!r} is not the data's; leave data.tokenizer_from to the link "
            "(the teacher's, or model.init_from's when the teacher was trained from that)"
        )
    return net.requires_grad_(False)
