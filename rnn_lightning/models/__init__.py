from rnn_lightning.models.classifier import SentimentClassifier

__all__ = ["SentimentClassifier"]
