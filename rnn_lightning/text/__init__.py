"""Data: sources, tokenizer, data module. The data module is imported lazily, so that serving code
(tokenizer only) does not pull in Lightning."""


def __getattr__(name: str):
    if name == "IMDBDataModule":
        from rnn_lightning.data.datamodule import IMDBDataModule

        return IMDBDataModule
    raise AttributeError(name)


__all__ = ["IMDBDataModule"]
