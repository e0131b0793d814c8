"""The base model in a bare PyTorch loop (no Trainer), on the same cached data and batches as `fit`.

    python bench/bare_loop.py --data ../shared/imdb --epochs 5 [--bf16]

Prints one JSON line per epoch, like bench/timing.py's EpochTimer, so the two compare side by side.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from rnn_lightning.data import IMDBDataModule
from rnn_lightning.models.components.network import SentimentRNN
from rnn_lightning.runtime import tune_cpu_runtime


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as Trainer(precision='bf16-mixed')")
    args = p.parse_args()
    tune_cpu_runtime()  # as cli.py does
    torch.manual_seed(42)
    dm = IMDBDataModule(dataset=args.data)  # configs/base.yaml's data settings are the defaults
    dm.prepare_data()
    dm.setup("fit")
    net = SentimentRNN()  # configs/base.yaml's model settings are the defaults
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, foreach=True)  # as configs/base.yaml
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    for epoch in range(args.epochs):
        net.train()
        t0, reviews = time.perf_counter(), 0
        for tokens, labels in dm.train_dataloader():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = F.binary_cross_entropy_with_logits(net(tokens).float(), labels.float())
            loss.backward()
            opt.step()
            reviews += len(labels)
        t1 = time.perf_counter()
        net.eval()
        correct = 0
        with torch.no_grad(), autocast:
            for tokens, labels in dm.val_dataloader():
                correct += ((net(tokens) > 0).long() == labels).sum().item()
        t2 = time.perf_counter()
        acc = correct / len(dm.splits["val"])
        print(
            json.dumps(
                {
                    "event": "epoch",
                    "epoch": epoch,
                    "train_s": t1 - t0,
                    "val_s": t2 - t1,
                    "reviews": reviews,
                    "val_acc": acc,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
