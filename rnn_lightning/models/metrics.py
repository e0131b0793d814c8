"""The classification metrics of one stage, for two classes or more (torchmetrics)."""

from torch import Tensor
from torchmetrics import ClasswiseWrapper
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
)


def classification_metrics(names: list[str]) -> dict:
    """The metrics of one stage, by name; they take ``metric_scores`` and class ids."""
    k = len(names)
    if k == 2:
        metrics = {"acc": BinaryAccuracy(), "f1": BinaryF1Score(), "auroc": BinaryAUROC()}
    else:
        metrics = {
            "acc": MulticlassAccuracy(k, average="micro"),
            "f1": MulticlassF1Score(k, average="macro"),
            "auroc": MulticlassAUROC(k, average="macro"),  # one class against the rest, averaged
            "f1_class": ClasswiseWrapper(MulticlassF1Score(k, average=None), labels=names, prefix="f1_"),
        }
    metrics["balanced_acc"] = BalancedAccuracy(k)
    return metrics


def metric_scores(logits: Tensor) -> Tensor:
    """What the metrics take: the probability of class 1 (B,) for two classes, else (B, K) probabilities."""
    return logits.float().sigmoid() if logits.dim() == 1 else logits.float().softmax(-1)


class BalancedAccuracy(MulticlassAccuracy):
    """Mean recall over the classes; takes ``metric_scores`` for any K (binary: probability of class 1)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, average="macro")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.dim() == 1:
            preds = (preds >= 0.5).long()
        super().update(preds, target)
