from rnn_lightning.data.datamodule import IMDBDataModule

__all__ = ["IMDBDataModule"]
