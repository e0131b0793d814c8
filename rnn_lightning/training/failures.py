"""What the command line says when it fails for a reason a person can act on: one line on stderr, no traceback.

``one_line(error)`` is that line, or None for an error that is a bug (its traceback is the report)."""

import os
import re

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import instantiate_class

from rnn_lightning.errors import InputError, NonFiniteLossError, said
from rnn_lightning.files import DISK_ERRORS
from rnn_lightning.training.peers import is_lost_peer


def one_line(error: BaseException) -> str | None:
    """The ``error: ...`` line for ``error``, or None when it is not one a person caused or can fix."""
    if isinstance(error, (InputError, NonFiniteLossError)):
        return f"error: {error}"
    if isinstance(error, ValueError) and isinstance(error.__cause__, InputError):  # raised in a link's compute_fn
        return f"error: {error.__cause__}"  # (e.g. reading the classes), which jsonargparse wraps
    if is_lost_peer(error):
        return lost_peer_line(error)
    if isinstance(error, OSError) and error.errno in DISK_ERRORS:
        # Checkpoints and prediction files are written beside their target and renamed: the ones already
        # there are whole, and the one being written is removed.
        return (
            f"error: {error.strerror or error} writing {error.filename or 'a file'}; files written before are intact "
            "(free space, then continue a fit with --ckpt_path last)"
        )
    return None


def lost_peer_line(error: BaseException) -> str:
    """A DDP collective that lost a peer: this process's rank, whether the peer's connection closed (it
    died) or the strategy's timeout passed (it stopped answering), what became of the peers
    (``error.peers``, set by ``GracefulStop``), and gloo's own words."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    what = "lost another process"  # its connection closed: it died
    if "timed out" in str(error).lower():  # it stopped answering
        what = "waited past trainer.strategy.init_args.timeout for another process"
    seen = getattr(error, "peers", "") or "dead, stopped or stuck"
    detail = re.sub(r"\[\S+:\d+\] ?", "", " ".join(str(error).split())).split(". This is")[0]
    return f"error: DDP: process {rank} {what} ({seen}), so every process stops ({detail[-120:]})"


def optimizer_error(e: Exception) -> InputError:
    """What torch.optim (or a scheduler) said of its arguments, as the one line the CLI prints."""
    return InputError(f"optimizer / lr_scheduler: {said(e, None)}")


def check_optimizer(cfg: Namespace) -> None:
    """Build the configured optimizer and lr_scheduler on a stand-in parameter, so that arguments
    torch.optim refuses (a negative learning rate, one a scheduler lacks) are one line before anything
    is built; LightningCLI builds them on the model's parameters in the same way."""
    optimizer, scheduler = cfg.get("optimizer"), cfg.get("lr_scheduler")
    if not isinstance(optimizer, Namespace) or not optimizer.get("class_path"):
        return
    try:
        built = instantiate_class([torch.nn.Parameter(torch.zeros(1))], optimizer.as_dict())
        if isinstance(scheduler, Namespace) and scheduler.get("class_path"):
            instantiate_class(built, scheduler.as_dict())
    except (ValueError, TypeError) as e:
        raise optimizer_error(e) from None
