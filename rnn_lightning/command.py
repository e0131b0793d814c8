"""The one command, ``rnn-lightning`` (``python cli.py`` in a checkout is the same program):

    rnn-lightning fit      --config configs/base.yaml --data.dataset ../shared/imdb
    rnn-lightning test     --config configs/base.yaml --data.dataset ../shared/imdb --ckpt_path best
    rnn-lightning pretrain --config configs/lm.yaml --data.dataset ../shared/imdb
    rnn-lightning export   lightning_logs/version_0/checkpoints/last.ckpt exported/
    rnn-lightning serve    --ckpt_path exported/

Each subcommand takes the rest of the line and has its own ``--help``. Each imports what it needs only
when it runs: ``serve`` starts with torch and tokenizers, without Lightning.
"""

import sys
import warnings
from collections.abc import Callable

from rnn_lightning import __version__


def _lightning(subcommand: str) -> Callable[[list[str], str], None]:
    def run(argv: list[str], prog: str) -> None:
        from rnn_lightning.training.cli import main

        main([subcommand, *argv], prog=prog)

    return run


def _pretrain(argv: list[str], prog: str) -> None:
    from rnn_lightning.models import LanguageModel
    from rnn_lightning.training.cli import main

    main(["fit", *argv], model_class=LanguageModel, prog=f"{prog} pretrain")


def _export(argv: list[str], prog: str) -> None:
    from rnn_lightning.inference import main

    main(argv, prog=f"{prog} export")


def _serve(argv: list[str], prog: str) -> None:
    from rnn_lightning.server import main

    main(argv)


def _tune(argv: list[str], prog: str) -> None:
    from rnn_lightning.training.tuning import main

    main(argv)


# name -> (one line for --help, what runs it with the rest of the command line and the program's name)
COMMANDS: dict[str, tuple[str, Callable[[list[str], str], None]]] = {
    "fit": ("train a classifier (LightningCLI: --config, --model.*, --data.*, --trainer.*)", _lightning("fit")),
    "validate": ("evaluate a checkpoint on the validation split", _lightning("validate")),
    "test": ("evaluate a checkpoint on the test split", _lightning("test")),
    "predict": ("classify raw text or a dataset's split into a prediction file", _lightning("predict")),
    "pretrain": ("train a language model on the reviews (fit with LanguageModel; configs/lm.yaml)", _pretrain),
    "export": ("write a checkpoint as model.pt2 + tokenizer.json + meta.json, served without Lightning", _export),
    "serve": ("serve a checkpoint or an export folder over HTTP, with a page", _serve),
    "tune": ("an Optuna study of fits over a search space (the tune extra)", _tune),
}


def usage(prog: str) -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} <command> [options]   ({prog} <command> --help: that command's options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (summary, _) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "rnn-lightning") -> None:
    """Run the subcommand ``argv[0]`` (default: the process's command line) with the rest of ``argv``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog))
        sys.exit(0 if argv else 2)  # a bare command lists the commands but did nothing
    if argv[0] == "--version":
        print(f"rnn-lightning {__version__}")
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.exit(f"error: {name!r} is not a command; choose from {', '.join(COMMANDS)} ({prog} --help)")
    # The subcommands get the rest of the line as arguments while sys.argv keeps the whole of it: Lightning's
    # DDP launcher starts each further process with sys.argv, which must run this same subcommand.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    COMMANDS[name][1](rest, prog)


if __name__ == "__main__":
    main()
