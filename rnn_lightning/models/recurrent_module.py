"""What every LightningModule of the project does around its ``TextRNN``: build it from the
hyperparameters by name, draw dropout masks from a generator that checkpoints save (exact resume),
and stop or skip on a non-finite loss or gradient."""

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError, NonFiniteLossError
from rnn_lightning.network.text_rnn import TextRNN, upgrade_state_dict

NonFinite = Literal["stop", "skip"]


class RecurrentModule(LightningModule):
    """Base of ``TextClassifier`` and ``LanguageModel``. A subclass calls ``save_hyperparameters()``
    and then ``build_network(on_nonfinite, **net)`` in its ``__init__``.

    Which checkpoint is "best": ``CHECKPOINT_MONITOR`` / ``CHECKPOINT_MODE`` (the CLI reads them).
    """

    CHECKPOINT_MONITOR, CHECKPOINT_MODE = "val/acc", "max"

    def build_network(self, on_nonfinite: NonFinite, **net: Any) -> None:
        if on_nonfinite not in ("stop", "skip"):
            raise InputError(f"model.on_nonfinite: expected one of stop, skip; got {on_nonfinite!r}")
        try:
            self.net = TextRNN(**net)
        except InputError as e:
            raise InputError(f"model.{e}") from None
        except TypeError as e:  # an argument TextRNN does not have
            raise InputError(f"model: {e}".replace("TextRNN.__init__()", "the network")) from None
        self.hparams.update(self.net.config)  # every network argument, defaults included, in the checkpoint
        self.on_nonfinite = on_nonfinite
        self._seed = torch.initial_seed()  # set by seed_everything before the CLI builds the model
        self._restored_rng: Tensor | None = None
        self._batch_idx, self._loss = 0, None

    # ---------------------------------------------------------------- exact resume
    # Dropout draws from a generator of the module's own, saved in every checkpoint, so a run resumed
    # from a checkpoint draws the same masks as the run that wrote it (the global RNG is also consumed
    # by things a resume does differently, e.g. the sanity check's DataLoader).

    def on_fit_start(self) -> None:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self._seed + self.global_rank)  # each DDP process its own masks
        if self._restored_rng is not None:
            generator.set_state(self._restored_rng)
        self.net.generator = generator

    def on_fit_end(self) -> None:
        self.net.generator = None

    def on_save_checkpoint(self, ckpt: dict) -> None:
        ckpt[checkpoint.FORMAT_KEY] = checkpoint.FORMAT
        if self.net.generator is not None:
            ckpt[checkpoint.DROPOUT_RNG_KEY] = self.net.generator.get_state()

    def on_load_checkpoint(self, ckpt: dict) -> None:
        # Lightning calls this first when it restores a checkpoint, before the weights and the data
        # module's state: an older checkpoint is brought to today's layout here.
        checkpoint.upgrade(ckpt)
        upgrade_state_dict(ckpt[checkpoint.WEIGHTS_KEY], "net.")  # the network's tensors under today's names
        self._restored_rng = ckpt.get(checkpoint.DROPOUT_RNG_KEY)

    # ---------------------------------------------------------------- non-finite loss or gradient

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, loss: Tensor) -> None:
        self._loss = loss.detach()  # checked with the gradients, before the update

    def on_before_optimizer_step(self, optimizer) -> None:
        # The loss and every gradient are checked together: one host sync a step instead of two (each
        # sync makes the host wait for the GPU's queue). A non-finite loss gives non-finite gradients,
        # so skipping the update covers both.
        loss = self._loss
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        if not torch.isfinite(total + loss):
            if not torch.isfinite(loss):
                self._nonfinite(f"the training loss is {loss.item()}", self._batch_idx)
            else:
                self._nonfinite("a gradient is NaN/inf", None)
            optimizer.zero_grad(set_to_none=True)  # skip: parameters without gradients are not updated

    def _nonfinite(self, what: str, batch_idx: int | None) -> None:
        where = f"global step {self.global_step} (epoch {self.current_epoch}" + (
            f", batch {batch_idx})" if batch_idx is not None else ")"
        )
        if self.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"training stopped: {what} at {where}; no checkpoint was written from this state. "
                "Lower the learning rate, clip gradients (--trainer.gradient_clip_val 1.0), or set --model.on_nonfinite skip"
            )
        rank_zero_warn(f"skipped the update at {where}: {what}")
