"""rnn-lightning's command line: python cli.py {fit,validate,test,predict,serve,tune} --config configs/base.yaml"""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:  # the server imports no Lightning: start-up is torch and tokenizers
        from rnn_lightning.server import main as serve

        serve(sys.argv[2:])
    elif sys.argv[1:2] == ["tune"]:  # an Optuna study of fits (the tune extra)
        from rnn_lightning.training.tuning import main as tune

        tune(sys.argv[2:])
    else:
        from rnn_lightning.training.cli import main

        main()
