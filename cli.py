"""rnn-lightning's command line: python cli.py {fit,validate,test,predict} --config configs/base.yaml"""

from rnn_lightning.training.cli import main

if __name__ == "__main__":
    main()
