"""How Lightning writes checkpoints here: whole files only."""

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rnn_lightning.files import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, except that a file is complete or absent.

    Lightning writes to the system temp folder and moves the file; across file systems that move is
    a copy, and a kill during the copy leaves a truncated ``last.ckpt``. Here the temporary file sits
    beside the target, is synced, and renamed. Remote paths (``s3://`` ...) go to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(path, "wb", sync=True) as f:
            torch.save(checkpoint, f)
