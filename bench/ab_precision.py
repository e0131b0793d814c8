"""Step time of the base model in float32 against bf16 autocast, in one process, steps alternating.

    python -m bench.ab_precision --data ../shared/imdb [--pairs 40]

Two copies of configs/base.yaml's network start from the same weights and train on the same batches,
one step each in turn (the order flips every pair), as ``bench/ab_step.py`` does for two revisions:
this VM's drift falls on both alike, so the median ratio over pairs is what to read.
"""

import argparse

from bench.ab_step import alternate, base_batches, report
from rnn_lightning.network.text_rnn import TextRNN


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--pairs", type=int, default=40)
    args = p.parse_args()
    batches = base_batches(args.data)
    nets = {"float32": TextRNN(), "bf16": TextRNN()}
    nets["bf16"].load_state_dict(nets["float32"].state_dict())
    times = alternate(nets, {"float32": False, "bf16": True}, batches, args.pairs)
    print(report(times, {"float32": "float32", "bf16": "bf16"}))


if __name__ == "__main__":
    main()
