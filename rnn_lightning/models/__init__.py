from rnn_lightning.models.classifier import TextClassifier
from rnn_lightning.models.language_model import LanguageModel

__all__ = ["LanguageModel", "TextClassifier"]
