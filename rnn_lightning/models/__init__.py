from rnn_lightning.models.classifier import TextClassifier
from rnn_lightning.models.language_model import LanguageModel
from rnn_lightning.models.semi_supervised import SemiSupervisedClassifier

__all__ = ["LanguageModel", "SemiSupervisedClassifier", "TextClassifier"]
