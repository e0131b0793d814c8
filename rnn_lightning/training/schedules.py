"""Learning-rate schedules sized by the run itself."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class CosineOverFit(LRScheduler):
    """Cosine from each group's learning rate down to ``eta_min`` over the whole of ``fit``, stepped after
    every optimizer step whatever ``lr_scheduler_interval`` says.

    The number of steps is the trainer's ``estimated_stepping_batches`` (epochs times batches per epoch,
    with gradient accumulation, ``limit_train_batches`` and the number of processes counted), set by the
    CLI when ``fit`` builds the optimizer: so the schedule follows the data's size, the batch size and
    ``trainer.max_epochs`` without a step count in the config. It is not saved in checkpoints: a
    resumed run counts its own (the same, unless ``max_epochs`` was raised).
    """

    def __init__(self, optimizer: Optimizer, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.eta_min = eta_min
        self.total_steps: int | None = None  # None until the CLI sets it: the learning rate stays put
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if not self.total_steps:
            return [group["lr"] for group in self.optimizer.param_groups]
        done = min(self.last_epoch, self.total_steps) / self.total_steps
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * done)) / 2 for base in self.base_lrs]

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k != "total_steps"}
