"""Language-model pretraining on the dataset's labelled and unlabelled reviews, with the same CLI:

    python pretrain.py fit --config configs/lm.yaml --data.dataset ../shared/imdb

then start a classifier from it: python cli.py fit ... --model.init_from <run>/checkpoints/last.ckpt
"""

from rnn_lightning.models import LanguageModel
from rnn_lightning.training.cli import main

if __name__ == "__main__":
    main(model_class=LanguageModel)
