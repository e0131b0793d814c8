"""Batches from a ``TokenizedReviews``: the order of each epoch, the share of each process under DDP, and
a training loader that a checkpoint written mid-epoch resumes where it stopped."""

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from rnn_lightning.signals import leave_stop_signals_to_the_main_process
from rnn_lightning.text.dataset import keep_batch


class EpochShuffleSampler(Sampler[int]):
    """A new random order each epoch, determined by (seed, epoch) alone.

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees the
    same orders as the run that wrote it; a plain shuffling DataLoader draws from the global RNG.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        # as Python ints a slice at a time: a list of millions of them would take ~36 bytes each
        return (i for part in order.split(1 << 16) for i in part.tolist())


class ShardSampler(DistributedSampler):
    """Evaluation under DDP: process ``rank`` takes texts ``rank``, ``rank + world``, ..., so each text
    is on exactly one process and the shards differ by at most one text.

    torch's ``DistributedSampler`` would repeat texts to even out the shards (or drop some), which
    skews the metrics. It is subclassed so that Lightning sees a distributed sampler and keeps it.
    """

    def __init__(self, dataset: Dataset, world: int, rank: int) -> None:
        super().__init__(dataset, world, rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), world))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))


class ResumableLoader(DataLoader):
    """A training DataLoader that a checkpoint written mid-epoch resumes exactly where it stopped.

    Lightning saves the ``state_dict`` of such a loader in the checkpoint and hands it back on resume;
    the state is how many batches of the current epoch were trained (``progress()``), and the first
    iteration after a restore skips that many batches of the same seeded order, lazily, so the
    sampler has its epoch set first.
    """

    def __init__(self, *args, progress=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress, self._skip = progress, 0

    def state_dict(self) -> dict:
        return {"batches_done": int(self.progress()) if self.progress else 0}

    def load_state_dict(self, state: dict) -> None:
        self._skip = int(state.get("batches_done", 0))

    def __iter__(self):
        skip, self._skip = self._skip, 0
        batches = super().__iter__()
        return _skipping(batches, skip) if skip else batches


def _skipping(batches, n: int):
    for _ in range(n):
        next(batches)
    yield from batches


def batches_done(trainer) -> int:
    """Training batches of the current epoch whose step has run: those a resumed loop counts done, whether
    the checkpoint was written as a batch ended (``ModelCheckpoint(every_n_train_steps)``) or as the next
    one started (the SLURM requeue). The loop counts a batch ``completed`` only after its end hooks."""
    # Lightning 2.6.6 offers no public count (a loader's own runs ahead by the batch fetched before its hooks): the loop's.
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, trainer=None, shuffle_seed: int | None = None
) -> DataLoader:
    """A loader over ``dataset``: for training (``shuffle_seed`` given) a seeded order per epoch, resumable
    mid-epoch; for evaluation the dataset's order. Under DDP each process gets its share of it."""
    world = trainer.world_size if trainer is not None else 1
    kwargs = {}
    if shuffle_seed is not None and world > 1:  # seeded by (seed, epoch) too, and the same on every process
        sampler = DistributedSampler(dataset, world, trainer.global_rank, shuffle=True, seed=shuffle_seed)
    elif shuffle_seed is not None:
        sampler = EpochShuffleSampler(len(dataset), shuffle_seed)
    elif world > 1:
        sampler = ShardSampler(dataset, world, trainer.global_rank)
    else:
        sampler = None
    if shuffle_seed is not None and trainer is not None:
        kwargs["progress"] = lambda: batches_done(trainer)
    return (ResumableLoader if shuffle_seed is not None else DataLoader)(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=keep_batch,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=leave_stop_signals_to_the_main_process if num_workers > 0 else None,
        **kwargs,
    )
