"""The base model in a bare PyTorch loop (no Trainer), on the same cached data and batches as `fit`.

    python bench/bare_loop.py --data ../shared/imdb --epochs 5 [--bf16] [--device cuda] [--implementation fused]

Prints one JSON line per epoch, like bench/timing.py's EpochTimer, so the two compare side by side.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from rnn_lightning.network.text_rnn import TextRNN
from rnn_lightning.runtime import tune_cpu_runtime
from rnn_lightning.text import TextDataModule


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as Trainer(precision='bf16-mixed')")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--implementation", default="auto", help="model.implementation")
    args = p.parse_args()
    device = torch.device(args.device)
    tune_cpu_runtime()  # as cli.py does
    torch.manual_seed(42)
    dm = TextDataModule(dataset=args.data)  # configs/base.yaml's data settings are the defaults
    dm.prepare_data()
    dm.setup("fit")
    net = TextRNN(implementation=args.implementation).to(device)  # base.yaml's model: the defaults
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, foreach=True)  # as configs/base.yaml
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    for epoch in range(args.epochs):
        net.train()
        t0, reviews = time.perf_counter(), 0
        for tokens, labels in dm.train_dataloader():
            tokens, labels = tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = F.binary_cross_entropy_with_logits(net(tokens).float(), labels.float())
            loss.backward()
            opt.step()
            reviews += len(labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        net.eval()
        correct = 0
        with torch.no_grad(), autocast:
            for tokens, labels in dm.val_dataloader():
                tokens, labels = tokens.to(device), labels.to(device)
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
