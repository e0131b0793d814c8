"""Step time of the base model in float32 against bf16 autocast, in one process, steps alternating.

    python -m bench.ab_precision --data ../shared/imdb [--pairs 40]

Two copies of configs/base.yaml's network start from the same weights and train on the same batches,
one step each in turn (the order flips every pair), as ``bench/ab_step.py`` does for two revisions:
this VM's drift falls on both alike, so the median ratio over pairs is what to read.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from rnn_lightning.data import IMDBDataModule
from rnn_lightning.models.components.network import SentimentRNN
from rnn_lightning.runtime import tune_cpu_runtime


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--pairs", type=int, default=40)
    args = p.parse_args()
    tune_cpu_runtime()
    torch.manual_seed(42)
    dm = IMDBDataModule(dataset=args.data)  # configs/base.yaml's data settings are the defaults
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    nets = {"float32": SentimentRNN(), "bf16": SentimentRNN()}
    nets["bf16"].load_state_dict(nets["float32"].state_dict())
    opts = {k: torch.optim.Adam(n.parameters(), lr=1e-4, foreach=True) for k, n in nets.items()}

    def step(which: str, tokens, labels) -> float:
        t0 = time.perf_counter()
        opts[which].zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=which == "bf16"):
            loss = F.binary_cross_entropy_with_logits(nets[which](tokens).float(), labels.float())
        loss.backward()
        opts[which].step()
        return time.perf_counter() - t0

    for tokens, labels in batches[:3]:  # warm-up
        step("float32", tokens, labels), step("bf16", tokens, labels)
    times = {"float32": [], "bf16": []}
    for i in range(args.pairs):
        tokens, labels = batches[i % len(batches)]
        for which in ("float32", "bf16") if i % 2 == 0 else ("bf16", "float32"):
            times[which].append(step(which, tokens, labels))
    ratios = sorted(a / b for a, b in zip(times["float32"], times["bf16"], strict=True))
    med = {k: 1000 * sorted(v)[len(v) // 2] for k, v in times.items()}
    print(
        f"step ms, median of {args.pairs}: float32 {med['float32']:.1f}, bf16 {med['bf16']:.1f}; float32/bf16 per pair, "
        f"median {ratios[len(ratios) // 2]:.3f} (quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f})"
    )


if __name__ == "__main__":
    main()
