"""rnn-lightning's command line: python cli.py {fit,validate,test,predict,serve} --config configs/base.yaml"""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:  # the server imports no Lightning: start-up is torch and tokenizers
        from rnn_lightning.server import main as serve

        serve(sys.argv[2:])
    else:
        from rnn_lightning.training.cli import main

        main()
