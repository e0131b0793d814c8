"""What the classes of a classifier are to each other, decided in one place: the task.

A task turns the network's logits into everything the rest of the project needs: the loss, the class
probabilities, the decision per text (what ``predict``, the server and the explainer answer), the
metrics of each stage, the test figures and the checkpoint's default monitor. The model, the prediction
writer, the predictors, the server and the explainer ask it and never look at the number of classes
themselves. Today the classes exclude each other (single-label):

- ``Binary``: two classes, one logit (of class 1), binary cross-entropy on logits, binary metrics;
- ``Multiclass``: K > 2 classes, K logits, cross-entropy, multiclass metrics with an F1 per class.

``make_task`` is the one place that chooses. A new kind (labels that do not exclude each other: a
sigmoid per label, binary cross-entropy, a threshold per label) is a new ``Task`` subclass and a new
choice there.

Plain torch at import (the server imports this without Lightning or torchmetrics); the metrics are
built by ``metrics`` and ``test_curves``, which import torchmetrics.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from rnn_lightning.errors import InputError


class Task:
    """The contract every task keeps; ``class_names`` are the classes in id order (the network's outputs').

    The network's logits are (B,) when ``num_outputs`` is 1, else (B, ``num_outputs``); any leading
    dimensions may come before the class axis where a method says so (``class_logit``).
    """

    MONITOR, MONITOR_MODE = "val/acc", "max"  # the checkpoint kept as "best" unless a config says otherwise

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)

    @property
    def num_outputs(self) -> int:
        """Logits per text."""
        raise NotImplementedError

    def class_weight(self, how, counts: list[int] | None) -> Tensor | None:
        """(K,) weights of the classes in the loss from ``model.class_weights`` (none, ``balanced`` or K
        numbers) and the training texts per class, or None (all 1)."""
        raise NotImplementedError

    def loss(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        """Mean loss of logits against the labels, weighted by ``class_weight``'s tensor."""
        raise NotImplementedError

    def probabilities(self, logits: Tensor) -> Tensor:
        """Logits -> (B, K) probabilities of the classes, in class order (float32)."""
        raise NotImplementedError

    def decision(self, probs: list[float]) -> dict:
        """One text's probabilities (``class_names`` order) -> what is answered for it."""
        raise NotImplementedError

    def no_decision(self) -> dict:
        """What is answered for a text with nothing to classify (empty): ``decision``'s fields, each None."""
        raise NotImplementedError

    @property
    def columns(self) -> list[str]:
        """The columns of a decision in a prediction file (between the id and the error), in order."""
        raise NotImplementedError

    def cells(self, decision: dict) -> dict:
        """A decision (``decision``) as the cells of ``columns``."""
        raise NotImplementedError

    def explained(self, decision: dict) -> int:
        """The class an explanation attributes when none is asked for."""
        raise NotImplementedError

    def class_logit(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logits with any leading dimensions (L...) before the class axis, and classes (L...) -> the
        logit of each target class (L...): what an explanation attributes."""
        raise NotImplementedError

    def metric_input(self, logits: Tensor) -> Tensor:
        """What the metrics of ``metrics`` and ``test_curves`` take, beside the labels."""
        raise NotImplementedError

    def metrics(self, stage: str):
        """A ``torchmetrics.MetricCollection`` of the stage's metrics, keys prefixed ``{stage}/``."""
        raise NotImplementedError

    def test_curves(self):
        """A ``torchmetrics.MetricCollection`` drawn as figures at the end of ``test`` (``figures``)."""
        raise NotImplementedError

    def figures(self, curves) -> dict:
        """``test_curves`` after the test epoch -> matplotlib figures by TensorBoard tag."""
        raise NotImplementedError


class SingleLabel(Task):
    """Each text has exactly one class. The decision is the most probable class: ``label``, its
    probability ``prob`` and every class's ``probs`` by name."""

    def class_weight(self, how, counts: list[int] | None) -> Tensor | None:
        """``balanced``: N / (K * count of the class), so every class weighs the same in total."""
        names, k = self.class_names, len(self.class_names)
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

    def decision(self, probs: list[float]) -> dict:
        best = max(range(len(probs)), key=probs.__getitem__)
        names = self.class_names
        return {"label": names[best], "prob": probs[best], "probs": dict(zip(names, probs, strict=True))}

    def no_decision(self) -> dict:
        return {"label": None, "prob": None, "probs": None}

    @property
    def columns(self) -> list[str]:
        return ["label", "prob", *(f"prob_{name}" for name in self.class_names)]

    def cells(self, decision: dict) -> dict:
        probs = {f"prob_{name}": p for name, p in decision["probs"].items()}
        return {"label": decision["label"], "prob": decision["prob"], **probs}

    def explained(self, decision: dict) -> int:
        return self.class_names.index(decision["label"])

    def _metrics(self) -> dict:
        raise NotImplementedError

    def metrics(self, stage: str):
        from torchmetrics import MetricCollection

        metrics = self._metrics()
        if stage == "train":
            # No AUROC in training: an exact one keeps every score of the epoch, thousands of small tensors
            # that pin the allocator's heap between each step's large temporaries, so fit's memory would
            # grow with the steps of an epoch; a binned one adds a pass over its thresholds to every step.
            del metrics["auroc"]
        # Compute groups would share one state between the F1s, but never update the one inside the
        # per-class wrapper (torchmetrics then warns it computes before any update): off for K > 2.
        return MetricCollection(metrics, compute_groups=self.num_outputs == 1, prefix=f"{stage}/")

    def figures(self, curves) -> dict:
        figures = {"test/confusion_matrix": curves["confusion_matrix"].plot(labels=self.class_names)[0]}
        if "roc" in curves:
            figures["test/roc"] = curves["roc"].plot(score=True)[0]
        return figures


class Binary(SingleLabel):
    """Two classes: one logit, of class 1 (B,); binary cross-entropy on logits; accuracy, F1 and AUROC
    of class 1, and balanced accuracy; a confusion matrix and a ROC curve at ``test``."""

    @property
    def num_outputs(self) -> int:
        return 1

    def loss(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        """With weights, the weighted mean: sum of w[y] * loss / sum of w[y] (as ``cross_entropy``'s ``weight``)."""
        targets = labels.to(logits.dtype)
        if weight is None:
            return F.binary_cross_entropy_with_logits(logits, targets)
        per_text = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        weights = weight[labels]
        return (weights * per_text).sum() / weights.sum().clamp_min(1e-12)

    def probabilities(self, logits: Tensor) -> Tensor:
        p = torch.sigmoid(logits.float())
        return torch.stack([1 - p, p], dim=-1)

    def class_logit(self, logits: Tensor, target: Tensor) -> Tensor:
        """Class 0's logit is minus class 1's (its log-odds)."""
        return torch.where(target == 1, logits, -logits)

    def metric_input(self, logits: Tensor) -> Tensor:
        """The probability of class 1 (B,)."""
        return logits.float().sigmoid()

    def _metrics(self) -> dict:
        from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score, MulticlassAccuracy
        from torchmetrics.wrappers import LambdaInputTransformer

        return {
            "acc": BinaryAccuracy(),
            "f1": BinaryF1Score(),
            "auroc": BinaryAUROC(),
            # mean recall of the two classes, of the class each probability decides
            "balanced_acc": LambdaInputTransformer(MulticlassAccuracy(2, average="macro"), transform_pred=_decided),
        }

    def test_curves(self):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import BinaryConfusionMatrix, BinaryROC

        return MetricCollection({"confusion_matrix": BinaryConfusionMatrix(), "roc": BinaryROC(thresholds=200)})


def _decided(prob: Tensor) -> Tensor:
    """Probabilities of class 1 (B,) -> the class each decides (B,); at module level so a metric holding it pickles."""
    return (prob >= 0.5).long()


class Multiclass(SingleLabel):
    """K > 2 classes: K logits (B, K); cross-entropy; accuracy, macro-F1, F1 per class (``f1_<name>``),
    one-vs-rest macro AUROC and balanced accuracy; a confusion matrix at ``test``."""

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def loss(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        """With weights, ``cross_entropy``'s weighted mean: sum of w[y] * loss / sum of w[y]."""
        return F.cross_entropy(logits, labels, weight=weight)

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits.float(), dim=-1)

    def class_logit(self, logits: Tensor, target: Tensor) -> Tensor:
        return logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def metric_input(self, logits: Tensor) -> Tensor:
        """The probabilities (B, K)."""
        return logits.float().softmax(-1)

    def _metrics(self) -> dict:
        from torchmetrics import ClasswiseWrapper
        from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

        k, names = len(self.class_names), self.class_names
        return {
            "acc": MulticlassAccuracy(k, average="micro"),
            "f1": MulticlassF1Score(k, average="macro"),
            "auroc": MulticlassAUROC(k, average="macro"),  # one class against the rest, averaged
            "f1_class": ClasswiseWrapper(MulticlassF1Score(k, average=None), labels=names, prefix="f1_"),
            "balanced_acc": MulticlassAccuracy(k, average="macro"),  # mean recall over the classes
        }

    def test_curves(self):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassConfusionMatrix

        return MetricCollection({"confusion_matrix": MulticlassConfusionMatrix(len(self.class_names))})


def make_task(class_names: list[str]) -> Task:
    """The task of a classifier of ``class_names`` (two or more): the one place the kind is chosen."""
    return Binary(class_names) if len(class_names) == 2 else Multiclass(class_names)
