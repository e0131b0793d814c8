"""A callback that prints per-epoch training/validation seconds and memory, for bench/benchmark.py."""

import json
import resource
import time

import torch
from lightning.pytorch import Callback


def rss_mb() -> float:
    """Current resident memory of this process, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class EpochTimer(Callback):
    """Prints one JSON line per epoch: train seconds (first to last training batch of the epoch,
    validation excluded), validation seconds, reviews trained, RSS now and peak."""

    def __init__(self) -> None:
        self.created = time.time()
        self.first_step_at = None
        self.reviews = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t_train, self.reviews, self.t_val = time.perf_counter(), 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
            print(
                json.dumps(
                    {"event": "first_step", "wall": self.first_step_at, "since_cli": self.first_step_at - self.created}
                ),
                flush=True,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        parts = batch.values() if isinstance(batch, dict) else [batch]  # labelled + unlabelled reviews
        self.reviews += sum(len(part[0]) for part in parts)
        if batch_idx == trainer.num_training_batches - 1 and pl_module.device.type == "cuda":
            torch.cuda.synchronize()  # the epoch's kernels have run, not only been queued
        self.train_end = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.t_val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.t_val = time.perf_counter() - self.t_val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row = {"event": "epoch", "epoch": trainer.current_epoch, "train_s": self.train_end - self.t_train, "val_s": self.t_val,
               "reviews": self.reviews, "rss_mb": round(rss_mb()), "peak_rss_mb": round(peak),
               "val_acc": float(trainer.callback_metrics.get("val/acc", float("nan")))}  # fmt: skip
        print(json.dumps(row), flush=True)
