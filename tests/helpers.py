"""Callbacks the fault tests add through the CLI (--trainer.callbacks+=tests.helpers.X)."""

import time

import torch
from lightning.pytorch import Callback


class Progress(Callback):
    """Prints ``PROGRESS <epoch> <batch>`` before each training batch and sleeps a little, so a test
    can kill the process at a known point in the middle of an epoch."""

    def __init__(self, sleep: float = 0.05) -> None:
        self.sleep = sleep

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        print(f"PROGRESS {trainer.current_epoch} {batch_idx}", flush=True)
        time.sleep(self.sleep)


class PoisonGradient(Callback):
    """Makes one gradient infinite at global step ``at_step``."""

    def __init__(self, at_step: int = 0) -> None:
        self.at_step = at_step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.at_step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")


class PoisonWeights(Callback):
    """Sets the embedding to NaN before the batch of global step ``at_step``: the loss becomes NaN."""

    def __init__(self, at_step: int = 0) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                pl_module.net.embedding.weight.fill_(float("nan"))
