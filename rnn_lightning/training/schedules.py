"""Learning-rate schedules sized by the run itself."""

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR

# Set by the CLI from the trainer, not saved in checkpoints: a resumed run sizes its own schedule.
RUN_SIZED = ("total_steps", "T_max", "interval")


class CosineOverFit(CosineAnnealingLR):
    """Cosine from each group's learning rate down to ``eta_min`` over the whole of ``fit``, without a
    length in the config: the CLI sets it from the trainer when ``fit`` builds the optimizer. Its own
    ``interval`` decides when it steps, whatever ``lr_scheduler_interval`` says:

    - ``"step"``: after every optimizer step, over the trainer's ``estimated_stepping_batches`` (epochs
      times batches per epoch, with gradient accumulation, ``limit_train_batches`` and the number of
      processes counted), so the schedule follows the data's size, the batch size and ``max_epochs``.
    - ``"epoch"``: after every epoch, over ``trainer.max_epochs``: exactly PyTorch's
      ``CosineAnnealingLR(T_max=max_epochs, eta_min)`` (its own recursive update, the same floats), so
      the learning rate of epoch ``e`` is the cosine at ``e / max_epochs``. The first step comes after
      the first epoch: a one-epoch run trains at the base learning rate throughout.

    The length is not saved in checkpoints: a resumed run counts its own (the same, unless
    ``max_epochs`` was raised).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        eta_min: float = 0.0,
        last_epoch: int = -1,
        interval: Literal["step", "epoch"] = "step",
    ) -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"CosineOverFit interval: 'step' or 'epoch', not {interval!r}")
        self.interval = interval
        self.total_steps: int | None = None  # "step": None until the CLI sets it (the learning rate stays put)
        # "epoch": T_max is None until the CLI sets it to trainer.max_epochs (the learning rate stays put)
        super().__init__(optimizer, T_max=None, eta_min=eta_min, last_epoch=last_epoch)

    def get_lr(self) -> list[float]:
        if self.interval == "epoch":
            if not self.T_max:
                return [group["lr"] for group in self.optimizer.param_groups]
            return super().get_lr()
        if not self.total_steps:
            return [group["lr"] for group in self.optimizer.param_groups]
        done = min(self.last_epoch, self.total_steps) / self.total_steps
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * done)) / 2 for base in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        if epoch is not None and (self.interval == "step" or not self.T_max):
            # step(epoch) (deprecated in PyTorch) would take CosineAnnealingLR's own closed form, which knows
            # neither total_steps nor an unset T_max; get_lr above is already closed-form in last_epoch
            self.last_epoch, epoch = epoch - 1, None
        super().step(epoch)

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k not in RUN_SIZED}
