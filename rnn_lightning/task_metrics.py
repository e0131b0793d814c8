"""The figures of a multi-label task (``tasks.MultiLabel``) as a torchmetrics ``Metric``: in a module of its
own so that ``tasks`` imports no torchmetrics at import (the server needs none)."""

import re

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_average_precision, multilabel_average_precision
from torchmetrics.utilities import dim_zero_cat

THRESHOLD_GRID = [round(0.01 * i, 2) for i in range(1, 100)]  # the thresholds tried per label on validation


def tags(names: list[str]) -> list[str]:
    """Class names as parts of metric tags (``val/f1_<tag>``): runs of anything but letters, digits, ``.``,
    ``_`` and ``-`` become ``_`` (TensorBoard and shells split tags with spaces)."""
    return [re.sub(r"[^\w.-]+", "_", name) for name in names]


def best_thresholds(probs: Tensor, target: Tensor, current: Tensor) -> Tensor:
    """(K,) each label's threshold of ``THRESHOLD_GRID`` with the best F1 on (probs (N, K), target (N, K));
    the lowest of equals; a label no text has keeps its ``current`` one."""
    grid = torch.tensor(THRESHOLD_GRID, device=probs.device)
    present = target.bool()
    f1 = torch.empty(len(grid), probs.shape[1], device=probs.device)
    for g, at in enumerate(grid):  # (N, K) at a time: memory stays that of the scores
        decided = probs >= at
        tp = (decided & present).sum(0)
        f1[g] = 2 * tp / (decided.sum(0) + present.sum(0)).clamp_min(1)
    best = grid[f1.argmax(0)]
    return torch.where(present.any(0).cpu(), best.float().cpu(), current)


def mean_average_precision(probs: Tensor, target: Tensor) -> Tensor:
    """The mean over labels of their average precision (probs, target (N, K)), of the labels some text
    has (a label without positives has none to rank); 0 when no label has any."""
    seen = target.bool().any(0)
    if not seen.any():
        return probs.new_zeros(())
    if int(seen.sum()) == 1:  # torchmetrics' multi-label form needs two labels
        return binary_average_precision(probs[:, seen][:, 0], target[:, seen][:, 0].long())
    rows = target[:, seen].long()
    return multilabel_average_precision(probs[:, seen], rows, int(seen.sum()), average="macro")


class MultiLabelScores(Metric):
    """A multi-label task's figures of one stage (``{stage}/...``): F1s from counts of the decisions at
    the task's thresholds; with ``keep_scores`` every probability is kept (N, K) so that ``map``,
    ``subset_acc`` and, with ``choose``, the thresholds themselves can be computed exactly at the end.
    Training keeps no scores: memory would grow with the training split. ``task`` is the
    ``tasks.MultiLabel`` whose thresholds decide (and, with ``choose``, are chosen here)."""

    full_state_update = False

    def __init__(self, task, stage: str, keep_scores: bool, choose: bool) -> None:
        super().__init__()
        self.task, self.stage, self.keep_scores, self.choose = task, stage, keep_scores, choose
        self._on: tuple[Tensor, Tensor] | None = None
        k = len(task.class_names)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        if keep_scores:
            self.add_state("probs", [], dist_reduce_fx="cat")
            self.add_state("target", [], dist_reduce_fx="cat")

    def thresholds_on(self, device) -> Tensor:
        """The task's thresholds on ``device``, copied there once per change (a copy each step would make
        the host wait for an accelerator every step)."""
        chosen = self.task.thresholds
        if self._on is None or self._on[0] is not chosen or self._on[1].device != device:
            self._on = (chosen, chosen.to(device))
        return self._on[1]

    def update(self, probs: Tensor, target: Tensor) -> None:
        decided, present = probs >= self.thresholds_on(probs.device), target.bool()
        self.tp += (decided & present).sum(0)
        self.fp += (decided & ~present).sum(0)
        self.fn += (~decided & present).sum(0)
        if self.keep_scores:
            self.probs.append(probs)
            self.target.append(target.to(torch.uint8))

    def compute(self) -> dict:
        task = self.task
        tp, fp, fn, extra = self.tp, self.fp, self.fn, {}
        if self.keep_scores:
            probs, target = dim_zero_cat(self.probs), dim_zero_cat(self.target)
            if self.choose and task.learning and not task.fixed:
                task.thresholds = best_thresholds(probs, target, task.thresholds)
            decided, present = probs >= self.thresholds_on(probs.device), target.bool()
            tp, fp, fn = ((decided & present).sum(0), (decided & ~present).sum(0), (~decided & present).sum(0))
            extra = {
                "map": mean_average_precision(probs, target),
                "subset_acc": (decided == present).all(1).float().mean(),
            }
        f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
        values = {
            "macro_f1": f1.float().mean(),
            "micro_f1": 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp_min(1),
            **extra,
            **{f"f1_{tag}": v for tag, v in zip(tags(task.class_names), f1.float(), strict=True)},
        }
        return {f"{self.stage}/{key}": v.float() for key, v in values.items()}
