"""rnn-lightning: IMDB sentiment classification with stacked recurrent cells, on PyTorch Lightning."""

__version__ = "0.1.0"
