"""IMDB as a LightningDataModule: raw reviews -> cached token ids -> batches."""

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import CombinedLoader, rank_zero_info, rank_zero_warn
from tokenizers import Tokenizer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from rnn_lightning.checkpoint import TOKENIZER_KEY
from rnn_lightning.text import sources
from rnn_lightning.text.readers import EMPTY, InputRows, read_reviews
from rnn_lightning.text.tokenizer import PAD_ID, encode, set_length, train_tokenizer
from rnn_lightning.errors import InputError
from rnn_lightning.files import CACHE_ROOT, atomic_folder, content_digests

CACHE_VERSION = 3  # bump when the tokenizer recipe, the split or the cache layout changes


class TokenizedReviews(Dataset):
    """Token ids (N, T) and labels (N,), optionally a view of the rows ``rows``; a batch is one indexing.

    ``ids`` may be a memory-mapped array (the token cache on disk): a batch reads only its rows, so a
    dataset of millions of reviews never has to fit in memory. ``__getitems__`` hands the DataLoader a
    whole batch at once instead of N single items to collate: with 1024 short rows per batch that
    per-item work would cost more than the model step.
    """

    def __init__(self, ids: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.ids, self.rows = ids, rows
        self.labels = torch.from_numpy(np.asarray(labels if rows is None else labels[rows], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def token_ids(self) -> np.ndarray:
        """All ids of this view, (N, T) (read into memory)."""
        if isinstance(self.ids, FileRows):
            return read_rows(self.ids, np.arange(len(self.ids)) if self.rows is None else self.rows)
        return np.asarray(self.ids if self.rows is None else self.ids[self.rows])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        ids, labels = self.__getitems__([i])
        return ids[0], labels[0]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        rows = idx if self.rows is None else self.rows[idx]
        return torch.from_numpy(read_rows(self.ids, rows).astype(np.int64)), self.labels[idx]


class FileRows:
    """(N, T) int32 token rows at the start of an open file that has no name (an unlinked temporary
    file), read by ``read_rows`` with ``pread`` on its descriptor (DataLoader workers inherit it)."""

    dtype = np.dtype(np.int32)

    def __init__(self, file, shape: tuple[int, int]) -> None:
        self.file, self.shape = file, shape

    def __len__(self) -> int:
        return self.shape[0]


def read_rows(ids: np.ndarray | FileRows, rows: np.ndarray) -> np.ndarray:
    """``ids[rows]``. From a memory-mapped array or ``FileRows``, each row is read with ``pread``
    instead: indexing a map would map the file pages around every row read into this process (the
    kernel's fault-around), so its resident memory would grow towards the whole file over an epoch."""
    if isinstance(ids, FileRows):
        fd, offset, name = ids.file.fileno(), 0, "the temporary token file"
    elif isinstance(ids, np.memmap) and ids.filename is not None:
        fd, offset, name = _read_fd(ids.filename), ids.offset, ids.filename
    else:
        return ids[rows]
    out = np.empty((len(rows), *ids.shape[1:]), dtype=ids.dtype)
    row_bytes = out[0].nbytes if len(out) else 0
    for i, row in enumerate(rows.tolist()):
        if os.preadv(fd, [out[i]], offset + row * row_bytes) != row_bytes:
            raise InputError(f"data: {name} is shorter than its header says; clear data.cache_dir and rerun")
    return out


_read_fds: dict[tuple[int, str], int] = {}  # (process id, file) -> descriptor: DataLoader workers open their own


def _read_fd(filename: str) -> int:
    key = (os.getpid(), filename)
    if key not in _read_fds:
        _read_fds[key] = os.open(filename, os.O_RDONLY)
    return _read_fds[key]


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


class ResumableLoader(DataLoader):
    """A training DataLoader that a checkpoint written mid-epoch resumes exactly where it stopped.

    Lightning saves the ``state_dict`` of such a loader in the checkpoint and hands it back on resume
    (its resumable-loader interface); the state is how many batches of the current epoch were
    trained (``progress``), and the first iteration after a restore skips that many batches of the
    same seeded order, lazily, so the sampler has its epoch set first.
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


def keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate for ``TokenizedReviews``: ``__getitems__`` already returned (ids (B, T), labels (B,))."""
    return batch


ValSplit = Literal["random", "blocks"]
BLOCK = 250  # reviews per block of the ``blocks`` split


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, how: ValSplit = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val): ``fraction`` of each class goes to val, chosen by a seeded shuffle.

    ``random`` draws single reviews. ``blocks`` draws runs of ``BLOCK`` consecutive reviews of a
    class: IMDB lists a movie's reviews largely next to each other (file-id order), so movies mostly land
    on one side and validation, like test (whose movies are disjoint from train's), rewards what
    carries over to unseen movies rather than memorised titles and names.
    The validation indices come in a seeded random order, so that any first batches (e.g. the
    sanity check's) hold both classes even when the source is sorted by label, as IMDB's is.
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        want = int(round(fraction * len(members)))
        if how == "blocks":
            blocks = np.array_split(members, max(1, -(-len(members) // BLOCK)))
            chosen = rng.permutation(len(blocks))[: max(1, int(round(fraction * len(blocks))))]
            val.append(np.concatenate([blocks[b] for b in sorted(chosen)])[:want])
        else:
            val.append(rng.permutation(members)[:want])
    val_idx = rng.permutation(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    fit_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return fit_idx, val_idx


def encode_to_file(path: Path, tokenizer: Tokenizer, texts: sources.Texts, rows: np.ndarray | None = None) -> None:
    """Encode ``texts`` (those at ``rows``) chunk by chunk into ``path``, an (N, max_len) int32 ``.npy``.

    Memory stays bounded by one chunk whatever N is; the file is read back memory-mapped.
    """
    n = len(texts) if rows is None else len(rows)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n, tokenizer.truncation["max_length"]))
    start = 0
    for chunk in texts.chunks(rows):
        out[start : start + len(chunk)] = encode(tokenizer, chunk)
        start += len(chunk)
    out.flush()
    del out


class TextDataModule(LightningDataModule):
    """Text classification data (IMDB by default, or any labelled texts), tokenized once and cached on disk.

    ``prepare_data`` (one process per node) reads the source, takes its validation split or carves
    one out of train, trains the tokenizer on the training texts only (and the unlabelled ones when
    asked), encodes every split and writes the result to ``cache_dir`` under a key made of everything
    that changes it; every process then memory-maps it in ``setup``. The tokenizer is saved in each
    checkpoint (``state_dict``), so a checkpoint alone turns raw text into predictions.

    Args:
        dataset: a hub id, a folder (one file per split: ``train.parquet``, ``test.csv``, ... or the hub
            layout), files per split (``{train: a.csv, test: b.csv}``; parquet, csv, tsv, jsonl/json,
            arrow), or an unpacked ``aclImdb/`` folder.
        config_name: the hub dataset's configuration, if it has several.
        text_field: the column holding the text.
        label_field: the column holding the label: class ids 0..K-1, class names (strings), or a
            ``ClassLabel``; K and the class names come from the training split.
        train_name / validation_name / test_name: the source's split names. A validation split is used
            when the source has one; otherwise ``val_fraction`` of train is held out.
        vocab_size: words kept, ``<pad>`` and ``<unk>`` included.
        max_len: tokens per text; longer texts keep their end, shorter ones are padded at the front.
        batch_size: texts per batch (per process under DDP).
        val_fraction: share of the training texts held out for validation, per class (when the source
            has no validation split).
        val_split: how they are drawn: ``random`` texts, or ``blocks`` of 250 consecutive texts of a class
            so that a movie's reviews stay on one side (see ``stratified_split``).
        split_seed: seed of that split (independent of ``seed_everything``, so the split never moves).
        cache_dir: where the token ids are cached.
        num_workers: DataLoader workers; 0 is fastest here, since a batch is one array indexing.
        predict_path: texts for ``predict`` (see ``readers.read_reviews``); they are encoded with the
            checkpoint's tokenizer and need no dataset. Unset, ``predict`` classifies the test split.
        unlabelled: also read the dataset's unlabelled texts (split ``unsupervised``, IMDB's 50,000):
            the tokenizer learns from them too, and each training batch is a dict ``{"labelled": (ids,
            labels), "unlabelled": (ids, _)}`` (Lightning's ``CombinedLoader``), the unlabelled batch
            sized so that both parts run out together: each text once an epoch.
        tokenizer_from: a checkpoint whose tokenizer to use instead of training one (the CLI links it
            from ``model.init_from``: one vocabulary from pretraining to prediction).
    """

    def __init__(
        self,
        dataset: str | dict[str, str] = "stanfordnlp/imdb",
        config_name: str | None = None,
        text_field: str = "text",
        label_field: str = "label",
        train_name: str = "train",
        validation_name: str = "validation",
        test_name: str = "test",
        vocab_size: int = 10_000,
        max_len: int = 80,
        batch_size: int = 1024,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        val_split: ValSplit = "random",
        cache_dir: str = CACHE_ROOT,
        num_workers: int = 0,
        predict_path: str | None = None,
        unlabelled: bool = False,
        tokenizer_from: str | None = None,
    ) -> None:
        super().__init__()
        if vocab_size < 3:
            raise InputError(f"data.vocab_size: expected an integer >= 3 (<pad>, <unk> and a word), got {vocab_size}")
        if max_len < 1:
            raise InputError(f"data.max_len: expected an integer >= 1, got {max_len}")
        if batch_size < 1:
            raise InputError(f"data.batch_size: expected an integer >= 1, got {batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"data.val_fraction: expected a number strictly between 0 and 1, got {val_fraction}")
        if val_split not in ("random", "blocks"):
            raise InputError(f"data.val_split: expected 'random' or 'blocks', got {val_split!r}")
        if num_workers < 0:
            raise InputError(f"data.num_workers: expected an integer >= 0, got {num_workers}")
        names = {"train": train_name, "validation": validation_name, "test": test_name}
        if len(set(names.values())) < 3:
            raise InputError(f"data: train_name, validation_name and test_name must differ, got {names}")
        if isinstance(dataset, dict):
            dataset = {str(k): str(v) for k, v in dataset.items()}
        if predict_path is None:  # predicting texts reads no dataset (a saved config's may be elsewhere)
            sources.check_dataset(dataset)
        self.save_hyperparameters()
        self.dataset, self.vocab_size, self.max_len, self.batch_size = dataset, vocab_size, max_len, batch_size
        self.config_name, self.text_field, self.label_field, self.split_names = config_name, text_field, label_field, names
        self.val_fraction, self.split_seed, self.num_workers = val_fraction, split_seed, num_workers
        self.val_split = val_split
        self.predict_path = predict_path
        self.unlabelled, self.tokenizer_from = unlabelled, tokenizer_from
        self.shuffle_seed = torch.initial_seed() % 2**31  # set by seed_everything before the CLI builds this
        self.predict_rows: InputRows | None = None  # every input row's id and error (not its text)
        self._review_chunks = None
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.tokenizer: Tokenizer | None = None
        self.splits: dict[str, TokenizedReviews] = {}
        self._encoded_with: str | None = None  # tokenizer JSON that produced self.splits

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def class_names(self) -> list[str]:
        """The classes, in id order, from the training labels (read from the cache when it exists)."""
        return self._meta["class_names"]

    @property
    def class_counts(self) -> list[int]:
        """Training texts per class (the validation part excluded)."""
        return self._meta["class_counts"]

    @cached_property
    def _meta(self) -> dict:
        """The cache's ``meta.json``; before the cache exists, the class facts read from the source."""
        meta = self.cache_path / "meta.json"
        if meta.exists():
            return json.loads(meta.read_text())
        source = self._source
        labels = source.splits["train"].labels
        fit = self._fit_val_rows(labels)[0] if "validation" not in source.splits else slice(None)
        counts = np.bincount(labels[fit], minlength=len(source.class_names))
        return {"class_names": source.class_names, "class_counts": counts.tolist()}

    @cached_property
    def _source(self) -> sources.Labelled:
        return sources.load_labelled(
            self.dataset, self.split_names, self.text_field, self.label_field, self.config_name, self.unlabelled,
            cache_dir=self.cache_dir,
        )

    def _fit_val_rows(self, train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fit_idx, val_idx = stratified_split(train_labels, self.val_fraction, self.split_seed, self.val_split)
        if len(val_idx) == 0 or len(np.unique(train_labels[val_idx])) < len(np.unique(train_labels)):
            raise InputError(
                f"data.val_fraction: {self.val_fraction} of {len(train_labels)} training texts leaves a validation set "
                "without every class; raise it or use more data"
            )
        return fit_idx, val_idx

    # ---------------------------------------------------------------- cache

    @cached_property
    def cache_path(self) -> Path:
        key = {
            "version": CACHE_VERSION,
            "source": sources.fingerprint(self.dataset, exclude=self.cache_dir, memo_dir=self.cache_dir),
            "config_name": self.config_name,
            "fields": [self.text_field, self.label_field],
            "splits": self.split_names,
            "vocab_size": self.vocab_size,
            "max_len": self.max_len,
            "val_fraction": self.val_fraction,
            "split_seed": self.split_seed,
            "val_split": self.val_split,
            "unlabelled": self.unlabelled,
            "tokenizer": self._given_tokenizer_digest(),
        }
        return self.cache_dir / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    @cached_property
    def _given_tokenizer(self) -> Tokenizer | None:
        """The tokenizer of ``tokenizer_from``, truncating and padding to this module's ``max_len``."""
        if self.tokenizer_from is None:
            return None
        from rnn_lightning import checkpoint

        try:
            tok = Tokenizer.from_str(checkpoint.tokenizer_json(checkpoint.load_checkpoint(self.tokenizer_from)))
        except InputError as e:
            raise InputError(f"data.tokenizer_from (model.init_from or model.teacher): {str(e).split(': ', 1)[1]}") from None
        if tok.get_vocab_size() > self.vocab_size:
            raise InputError(
                f"data.vocab_size: {self.vocab_size}, but the tokenizer of {self.tokenizer_from!r} has "
                f"{tok.get_vocab_size()} tokens; set data.vocab_size to the pretraining's"
            )
        return set_length(tok, self.max_len)

    def _given_tokenizer_digest(self) -> str | None:
        tok = self._given_tokenizer
        return None if tok is None else hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]

    def _predicting_raw_text(self) -> bool:
        return (
            self.predict_path is not None and self.trainer is not None and self.trainer.state.fn == TrainerFn.PREDICTING
        )

    def prepare_data(self) -> None:
        if self._predicting_raw_text():
            return  # the checkpoint brings the tokenizer; no dataset needed
        target = self.cache_path
        if (target / "meta.json").exists():
            return
        rank_zero_info(f"Tokenizing {self.dataset} into {target} (once; later runs reuse it)")
        self._write_cache(target, self._given_tokenizer)

    def _write_cache(self, target: Path, tokenizer: Tokenizer | None) -> None:
        """Encode every split into ``target`` (a new tokenizer from the training texts if none is given).

        Layout: ``<split>_ids.npy`` (N, max_len) int32 and ``<split>_labels.npy`` per source split, and
        ``meta.json`` naming, for each of fit/val/test/unlabelled, its arrays and rows (``fit_rows.npy``,
        ``val_rows.npy`` when validation is carved out of train).
        """
        source = self._source
        train = source.splits["train"]
        empty = train.texts.count_empty()
        if empty:
            rank_zero_warn(f"data.dataset: {empty} empty training text(s) kept; they encode as padding only")
        views: dict[str, dict] = {"fit": {"split": "train"}}
        if "validation" in source.splits:
            fit_rows = None
            views["val"] = {"split": "validation"}
        else:
            fit_rows, val_rows = self._fit_val_rows(train.labels)
            views["fit"]["rows"], views["val"] = "fit_rows.npy", {"split": "train", "rows": "val_rows.npy"}
        for role in ("test", "unlabelled"):
            if role in source.splits:
                views[role] = {"split": role}
        if tokenizer is None:
            texts = itertools.chain.from_iterable(train.texts.chunks(fit_rows))
            if self.unlabelled:
                texts = itertools.chain(texts, itertools.chain.from_iterable(source.splits["unlabelled"].texts.chunks()))
            tokenizer = train_tokenizer(texts, self.vocab_size, self.max_len)
        learned = tokenizer.get_vocab_size()
        if learned < self.vocab_size:
            rank_zero_info(
                f"data.vocab_size is {self.vocab_size} but the training texts hold only {learned} distinct tokens; ids above stay unused"
            )
        with atomic_folder(target) as tmp:  # a crash or a second process never sees half a cache
            for role, split in source.splits.items():
                encode_to_file(tmp / f"{role}_ids.npy", tokenizer, split.texts)
                labels = split.labels if split.labels is not None else np.full(len(split.texts), -1, dtype=np.int64)
                np.save(tmp / f"{role}_labels.npy", labels)
            if fit_rows is not None:
                np.save(tmp / "fit_rows.npy", fit_rows)
                np.save(tmp / "val_rows.npy", val_rows)
            (tmp / "tokenizer.json").write_text(tokenizer.to_str())
            files = sorted(f.name for f in tmp.iterdir())
            meta = {**self._meta, "dataset": self.dataset, "views": views,
                    "sizes": {role: len(split.texts) for role, split in source.splits.items()},
                    "digests": dict(zip(files, content_digests([tmp / f for f in files]), strict=True))}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta))

    def setup(self, stage: str) -> None:
        if self._predicting_raw_text():
            self._review_chunks = read_reviews(self.predict_path)  # checked now, read in predict_dataloader
            return
        if self.splits:
            return
        path = self.cache_path
        if not (path / "meta.json").exists():
            raise InputError(
                f"data: no token cache at {path}; prepare_data did not run or cache_dir is not shared between nodes"
            )
        self._load_cache(path, self._given_tokenizer)
        self._check_same_tokenizer_everywhere(self._encoded_with)

    def _load_cache(self, path: Path, tokenizer: Tokenizer | None) -> None:
        """Read the cache at ``path``, checked against the digests it was written with; a damaged one
        (truncated, altered, unreadable) is rebuilt with ``tokenizer`` (None: trained again, the same
        way), with a one-line notice."""
        try:
            meta = json.loads((path / "meta.json").read_text())
            names = sorted(meta["digests"])
            found = content_digests([path / n for n in names], memo_dir=self.cache_dir)
            bad = [n for n, want, got in zip(names, (meta["digests"][n] for n in names), found, strict=True) if want != got]
            if bad:
                raise ValueError(f"{bad[0]} changed since it was written")
            self._read_cache(path, meta)
        except (OSError, ValueError, KeyError) as e:
            rank_zero_warn(f"data: the token cache {path} is damaged ({str(e).splitlines()[0][:120]}); rebuilding it")
            shutil.rmtree(path, ignore_errors=True)
            self._write_cache(path, tokenizer)
            self._read_cache(path, json.loads((path / "meta.json").read_text()))

    def _read_cache(self, path: Path, meta: dict) -> None:
        tokenizer_json = (path / "tokenizer.json").read_text()
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self._encoded_with = tokenizer_json
        self.splits = {}
        for view, spec in meta["views"].items():
            if view == "unlabelled" and not self.unlabelled:
                continue
            ids = np.load(path / f"{spec['split']}_ids.npy", mmap_mode="r")
            labels = np.load(path / f"{spec['split']}_labels.npy")
            rows = np.load(path / spec["rows"]) if "rows" in spec else None
            self.splits[view] = TokenizedReviews(ids, labels, rows)

    def _check_same_tokenizer_everywhere(self, tokenizer_json: str) -> None:
        """Under DDP, gather every process's tokenizer hash and refuse to go on if any differs
        (e.g. nodes whose caches were built from different copies of the data)."""
        trainer = self.trainer
        if trainer is None or trainer.world_size < 2:
            return
        digest = hashlib.sha256(tokenizer_json.encode()).hexdigest()[:16]
        mine = torch.tensor([int(digest[i : i + 4], 16) for i in range(0, 16, 4)], dtype=torch.int64)
        everyone = trainer.strategy.all_gather(mine.to(trainer.strategy.root_device)).view(-1, 4).cpu()
        if not torch.all(everyone == mine):
            raise InputError(
                f"data: the processes hold different tokenizers ({everyone.tolist()}); clear data.cache_dir and rerun"
            )
        rank_zero_info(f"Tokenizer {digest} identical on all {trainer.world_size} processes")

    # ---------------------------------------------------------------- checkpoint

    def state_dict(self) -> dict:
        return {TOKENIZER_KEY: self.tokenizer.to_str() if self.tokenizer else None}

    def load_state_dict(self, state: dict) -> None:
        """Take the checkpoint's tokenizer. Lightning calls this after ``setup``, so data already
        encoded with a different tokenizer is encoded again (into a cache of its own) before any batch is made."""
        tokenizer_json = state.get(TOKENIZER_KEY) if isinstance(state, dict) else None
        if not isinstance(tokenizer_json, str):
            raise InputError("ckpt_path: the checkpoint holds no tokenizer (was it written by rnn-lightning?)")
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        if self._encoded_with is not None and self._encoded_with != tokenizer_json:
            rank_zero_info("The checkpoint's tokenizer differs from the cached one: encoding the data again with it")
            target = self.cache_path.with_name(
                f"{self.cache_path.name}-{hashlib.sha256(tokenizer_json.encode()).hexdigest()[:12]}"
            )
            tokenizer = set_length(Tokenizer.from_str(tokenizer_json), self.max_len)
            if not (target / "meta.json").exists():
                self._write_cache(target, tokenizer)
            self._load_cache(target, tokenizer)

    def batches(self, split: str = "fit", size: int = 4096):
        """(ids (B, T), labels (B,)) over a split in order: ``fit``, the labelled training texts (the
        validation part excluded), or ``unlabelled`` (labels meaningless); for statistics a model takes
        from its training data before it trains (``model.ngram_nb``)."""
        data = self.splits[split]
        for start in range(0, len(data), size):
            yield data.__getitems__(list(range(start, min(start + size, len(data)))))

    # ---------------------------------------------------------------- loaders

    def _loader(self, split: str, shuffle: bool, batch_size: int | None = None, seed_offset: int = 0) -> DataLoader:
        dataset = self.splits[split]
        trainer = self.trainer
        distributed = trainer is not None and trainer.world_size > 1
        if shuffle and distributed:  # seeded by (seed, epoch) too, and the same on every process
            sampler = DistributedSampler(
                dataset, trainer.world_size, trainer.global_rank, shuffle=True, seed=self.shuffle_seed + seed_offset
            )
        elif shuffle:
            sampler = EpochShuffleSampler(len(dataset), self.shuffle_seed + seed_offset)
        elif distributed:
            # Evaluation under DDP: each text on exactly one process. Lightning's default
            # DistributedSampler would pad the last shard with repeated texts and skew the metrics.
            sampler = UnrepeatedDistributedSampler(dataset, trainer.world_size, trainer.global_rank, shuffle=False)
        else:
            sampler = None
        kwargs = {}
        if shuffle:  # training: resumable mid-epoch (batches done so far in this epoch, from Lightning's loop)
            kwargs["progress"] = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=batch_size or self.batch_size,
            sampler=sampler,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        labelled = self._loader("fit", shuffle=True)
        if not self.unlabelled:
            return labelled
        # As many unlabelled batches as labelled ones: both run out together ("min_size" then ends the epoch).
        n_batches = len(labelled)
        size = -(-len(self.splits["unlabelled"]) // (n_batches * (self.trainer.world_size if self.trainer else 1)))
        unlabelled = self._loader("unlabelled", shuffle=True, batch_size=max(1, size), seed_offset=1)
        return CombinedLoader({"labelled": labelled, "unlabelled": unlabelled}, mode="min_size")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self._test_split()
        return self._loader("test", shuffle=False)

    def _test_split(self) -> TokenizedReviews:
        if "test" not in self.splits:
            raise InputError(
                f"data.test_name: {self.dataset!r} has no split {self.split_names['test']!r} to test on"
            )
        return self.splits["test"]

    def _encode_reviews(self) -> TokenizedReviews:
        """The input of ``predict_path``, read and encoded a chunk at a time into a temporary file in
        ``cache_dir`` (unlinked from the start: it goes when the process does), whose rows batches read
        with ``pread``; every input row's id and error go to another such file (``predict_rows``). So an
        input of any size costs memory for one index per text only. Empty rows get no ids; each dataset
        row carries its row's index in the input."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tokens, self.predict_rows, keep = tempfile.TemporaryFile(dir=self.cache_dir), InputRows(self.cache_dir), []
        for chunk in self._review_chunks:
            rows = [i for i, error in enumerate(chunk.errors) if error != EMPTY]
            if rows:
                tokens.write(encode(self.tokenizer, [chunk.texts[i] for i in rows]).tobytes())
            keep.append(np.asarray(rows, dtype=np.int64) + len(self.predict_rows))
            self.predict_rows.extend(chunk.ids, chunk.errors)
        tokens.flush()  # kept open by the dataset's FileRows, which reads it
        keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
        return TokenizedReviews(FileRows(tokens, (len(keep), self.tokenizer.truncation["max_length"])), keep)

    def predict_dataloader(self) -> DataLoader:
        """Batches of (ids (B, T), row index (B,)): the index places each prediction in the output."""
        if self._review_chunks is None:
            test = self._test_split()  # its own split: no row view
            self.splits["predict"] = TokenizedReviews(test.ids, np.arange(len(test)))
        else:
            if self.tokenizer is None:
                raise InputError(
                    "ckpt_path: predicting raw text needs a checkpoint (it carries the tokenizer); pass --ckpt_path"
                )
            self.splits["predict"] = self._encode_reviews()
        return self._loader("predict", shuffle=False)
