"""Text data: where it comes from (``locations``, ``hub``, ``aclimdb``; opened as splits by ``opening``, known
to the token cache by ``identity``), the file formats (``formats``), labelled splits (``sources``, ``labels``,
``splits``), the texts to classify (``readers``), the tokenizer, the token cache, datasets and loaders, and
the data module that wires them. The data module is imported lazily, so that serving code (tokenizer only)
does not pull in Lightning."""


def __getattr__(name: str):
    if name == "TextDataModule":
        from rnn_lightning.text.datamodule import TextDataModule

        return TextDataModule
    raise AttributeError(name)


__all__ = ["TextDataModule"]
