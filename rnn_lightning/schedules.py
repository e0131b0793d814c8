"""Import path that ``config.yaml`` files saved by earlier versions name (``rnn_lightning.schedules.CosineOverFit``)."""

from rnn_lightning.training.schedules import CosineOverFit

__all__ = ["CosineOverFit"]
