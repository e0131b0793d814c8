"""rnn-lightning's command in a checkout, without installing it: the same program as ``rnn-lightning``.

python cli.py fit --config configs/base.yaml --data.dataset ../shared/imdb
python cli.py --help        # the eight commands: fit validate test predict pretrain export serve tune
"""

from rnn_lightning.command import main

if __name__ == "__main__":
    main(prog="python cli.py")
