"""What the classes of a classifier are to each other, decided in one place: the task.

A task turns the network's logits into everything the rest of the project needs: the loss, the class
probabilities, the decision per text (what ``predict``, the server and the explainer answer), the
metrics of each stage, the test figures and the checkpoint's default monitor. The model, the prediction
writer, the predictors, the server and the explainer ask it and never look at the number of classes
themselves:

- ``Binary``: two classes that exclude each other, one logit (of class 1), binary cross-entropy on
  logits, binary metrics;
- ``Multiclass``: K > 2 classes that exclude each other, K logits, cross-entropy, multiclass metrics
  with an F1 per class;
- ``MultiLabel``: K labels, any number of them per text: K logits, a sigmoid and binary cross-entropy
  per label, one threshold per label (chosen on the validation split during ``fit``), F1s, mean
  average precision and exact-match accuracy.

``make_task`` is the one place that chooses; ``Task.state`` is what a checkpoint or an export keeps of a
task beside its class names, and ``task_from_state`` builds it again.

Plain torch at import (the server imports this without Lightning or torchmetrics); the metrics are
built by ``metrics`` and ``test_curves``, which import torchmetrics.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rnn_lightning.errors import InputError

THRESHOLD = 0.5  # a label's threshold until one is chosen on validation


class Task:
    """The contract every task keeps; ``class_names`` are the classes in id order (the network's outputs').

    The network's logits are (B,) when ``num_outputs`` is 1, else (B, ``num_outputs``); any leading
    dimensions may come before the class axis where a method says so (``class_logit``).
    """

    MONITOR, MONITOR_MODE = "val/acc", "max"  # the checkpoint kept as "best" unless a config says otherwise
    learning = False  # whether a validation pass may choose the task's decision settings: fit's, after its sanity check

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)

    def state(self) -> dict:
        """What a checkpoint (``checkpoint.TASK_KEY``) and an export's ``meta.json`` keep of the task beside
        its class names: JSON types only; ``task_from_state`` reads it back."""
        return {"multi_label": False}

    def load_state(self, state: dict, field: str) -> None:
        """Take the decision settings of ``state`` (``state``'s form); ``field`` names its origin in errors."""

    def with_thresholds(self, thresholds, field: str) -> "Task":
        """This task deciding with ``thresholds`` instead (a request's or a config's override)."""
        raise InputError(f"{field}: thresholds are for multi-label models; this one's classes exclude each other")

    @property
    def num_outputs(self) -> int:
        """Logits per text."""
        raise NotImplementedError

    def class_weight(self, how, counts: list[int] | None, texts: int | None = None) -> Tensor | None:
        """(K,) weights of the classes in the loss from ``model.class_weights`` (none, ``balanced`` or K
        numbers), the training texts per class and all training ``texts``, or None (all 1)."""
        names, k = self.class_names, len(self.class_names)
        if how is None or how == "none":
            return None
        if how == "balanced":
            return self.balanced_weight(counts, texts)
        if isinstance(how, str) or len(how) != k or not all(w >= 0 for w in how) or not any(w > 0 for w in how):
            raise InputError(
                f"model.class_weights: expected none, balanced or {k} numbers >= 0 (one per class of {names}), got {how}"
            )
        return torch.tensor([float(w) for w in how])

    def balanced_weight(self, counts: list[int] | None, texts: int | None) -> Tensor:
        """``class_weights: balanced``: (K,) weights from the training texts per class and all of them."""
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

    def balanced_weight(self, counts: list[int] | None, texts: int | None) -> Tensor:
        """N / (K * count of the class), so every class weighs the same in total."""
        names, k = self.class_names, len(self.class_names)
        if counts is None or len(counts) != k or min(counts) <= 0:
            raise InputError(
                f"model.class_weights: balanced needs a training count per class, got {counts} for {names}"
            )
        counts_t = torch.tensor(counts, dtype=torch.float32)
        return counts_t.sum() / (k * counts_t)

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

        from rnn_lightning.task_metrics import tags

        k, names = len(self.class_names), self.class_names
        return {
            "acc": MulticlassAccuracy(k, average="micro"),
            "f1": MulticlassF1Score(k, average="macro"),
            "auroc": MulticlassAUROC(k, average="macro"),  # one class against the rest, averaged
            "f1_class": ClasswiseWrapper(MulticlassF1Score(k, average=None), labels=tags(names), prefix="f1_"),
            "balanced_acc": MulticlassAccuracy(k, average="macro"),  # mean recall over the classes
        }

    def test_curves(self):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassConfusionMatrix

        return MetricCollection({"confusion_matrix": MulticlassConfusionMatrix(len(self.class_names))})


class MultiLabel(Task):
    """K labels, each present or not, any number per text: K logits (B, K), a sigmoid and binary
    cross-entropy per label. A label is decided present when its probability reaches its threshold
    (``thresholds``, (K,)); the decision is the list of those ``labels`` and every label's ``probs``.

    Metrics (``MultiLabelScores``): ``macro_f1`` (the mean of the labels' F1s), ``micro_f1`` (F1 of all
    decisions pooled), ``f1_<label>``, and at validation and test ``map`` (the labels' mean average
    precision, which needs no threshold) and ``subset_acc`` (texts whose every label is decided right).
    While ``fit`` runs, each validation pass chooses every label's threshold for its own F1 on the
    validation split (unless ``fixed``), so each checkpoint carries the thresholds of its own weights, and
    the validation figures are those at the chosen thresholds.

    Args:
        thresholds: one number, or one per label, in [0, 1]; given, they are ``fixed``: never chosen on
            validation, and a checkpoint's are not read over them.
    """

    MONITOR = "val/macro_f1"

    def __init__(self, class_names: list[str], thresholds=None, field: str = "model.thresholds") -> None:
        super().__init__(class_names)
        self.fixed = thresholds is not None
        self.thresholds = check_thresholds(THRESHOLD if thresholds is None else thresholds, class_names, field)

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def state(self) -> dict:
        return {"multi_label": True, "thresholds": [round(t, 6) for t in self.thresholds.tolist()]}

    def load_state(self, state: dict, field: str) -> None:
        if not self.fixed and state.get("thresholds") is not None:
            self.thresholds = check_thresholds(state["thresholds"], self.class_names, field)

    def with_thresholds(self, thresholds, field: str) -> "MultiLabel":
        task = copy.copy(self)
        task.thresholds, task.fixed = check_thresholds(thresholds, self.class_names, field), True
        return task

    def balanced_weight(self, counts: list[int] | None, texts: int | None) -> Tensor:
        """(K,) ``pos_weight``s: a label's present texts weigh (texts without it) / (texts with it), so its
        positives and negatives weigh the same in total."""
        names, k = self.class_names, len(self.class_names)
        if counts is None or len(counts) != k or min(counts) <= 0 or not texts or max(counts) >= texts:
            raise InputError(
                f"model.class_weights: balanced needs each label on some but not all of the training texts, "
                f"got {counts} of {texts} for {names}"
            )
        counts_t = torch.tensor(counts, dtype=torch.float32)
        return (texts - counts_t) / counts_t

    def loss(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        """Binary cross-entropy per label, averaged over texts and labels; ``weight`` is ``pos_weight``."""
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weight)

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.float())

    def decision(self, probs: list[float]) -> dict:
        names, t = self.class_names, self.thresholds.tolist()
        return {
            "labels": [n for n, p, at in zip(names, probs, t, strict=True) if p >= at],
            "probs": dict(zip(names, probs, strict=True)),
        }

    def no_decision(self) -> dict:
        return {"labels": None, "probs": None}

    @property
    def columns(self) -> list[str]:
        return ["labels", *(f"prob_{name}" for name in self.class_names)]

    def cells(self, decision: dict) -> dict:
        """``labels`` stays a list (a JSON lines file's); a CSV writer joins it with ``LABEL_SEPARATOR``."""
        return {"labels": decision["labels"], **{f"prob_{name}": p for name, p in decision["probs"].items()}}

    def explained(self, decision: dict) -> int:
        """The most probable label (present or not)."""
        probs = list(decision["probs"].values())
        return max(range(len(probs)), key=probs.__getitem__)

    def class_logit(self, logits: Tensor, target: Tensor) -> Tensor:
        """A label's logit, its log-odds of being present."""
        return logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def metric_input(self, logits: Tensor) -> Tensor:
        """The probabilities (B, K)."""
        return logits.float().sigmoid()

    def metrics(self, stage: str):
        from rnn_lightning.task_metrics import MultiLabelScores

        return MultiLabelScores(self, stage, keep_scores=stage != "train", choose=stage == "val")

    def test_curves(self):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MultilabelPrecisionRecallCurve

        from rnn_lightning.task_metrics import THRESHOLD_GRID, MultiLabelScores

        return MetricCollection(
            {
                "f1": MultiLabelScores(self, "test", keep_scores=False, choose=False),
                "pr": MultilabelPrecisionRecallCurve(len(self.class_names), thresholds=THRESHOLD_GRID),
            },
            compute_groups=False,
        )

    def figures(self, curves) -> dict:
        import matplotlib.pyplot as plt

        from rnn_lightning.task_metrics import tags

        names = self.class_names
        f1 = curves["f1"].compute()
        fig, ax = plt.subplots(figsize=(8, 0.22 * len(names) + 1), layout="constrained")
        ax.barh(names[::-1], [f1[f"test/f1_{tag}"].item() for tag in tags(names)][::-1])
        ax.set_xlim(0, 1)
        ax.set_xlabel("F1 at the label's threshold")
        precision, recall, _ = curves["pr"].compute()
        fig_pr, ax_pr = plt.subplots(figsize=(7, 6), layout="constrained")
        for name, p, r in zip(names, precision, recall, strict=True):
            ax_pr.plot(r.cpu(), p.cpu(), lw=1, label=name)
        ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax_pr.legend(fontsize=6, ncol=2, loc="upper right")
        return {"test/f1_per_label": fig, "test/precision_recall": fig_pr}


def check_thresholds(thresholds, class_names: list[str], field: str) -> Tensor:
    """One number or one per label, each in [0, 1] -> (K,) float32; else one line naming ``field``."""
    k = len(class_names)
    values = [thresholds] if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool) else thresholds
    numbers = isinstance(values, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1 for v in values
    )
    if not numbers or len(values) not in (1, k):
        raise InputError(
            f"{field}: expected one number or {k} numbers (one per label) in [0, 1], got {str(thresholds)[:200]}"
        )
    return torch.tensor(values * k if len(values) == 1 else values, dtype=torch.float32)


def make_task(class_names: list[str], multi_label: bool = False, thresholds=None) -> Task:
    """The task of a classifier of ``class_names`` (two or more): the one place the kind is chosen.
    ``thresholds`` (multi-label only) override the chosen ones."""
    if multi_label:
        return MultiLabel(class_names, thresholds)
    task = Binary(class_names) if len(class_names) == 2 else Multiclass(class_names)
    return task if thresholds is None else task.with_thresholds(thresholds, "model.thresholds")


def task_from_state(class_names: list[str], state: dict | None, field: str, thresholds=None) -> Task:
    """The task a checkpoint or an export (``Task.state``) describes; ``thresholds`` override its own."""
    state = state if isinstance(state, dict) else {}
    task = make_task(class_names, bool(state.get("multi_label")), thresholds)
    task.load_state(state, field)
    return task
