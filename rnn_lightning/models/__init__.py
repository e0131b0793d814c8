from rnn_lightning.models.classifier import SentimentClassifier
from rnn_lightning.models.language_model import LanguageModel

__all__ = ["LanguageModel", "SentimentClassifier"]
