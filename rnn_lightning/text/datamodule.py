"""Text classification data as a LightningDataModule: raw texts -> cached token ids -> batches (wiring only)."""

import itertools
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import CombinedLoader, rank_zero_info, rank_zero_warn
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from rnn_lightning.checkpoint import TOKENIZER_KEY
from rnn_lightning.errors import InputError
from rnn_lightning.files import CACHE_ROOT
from rnn_lightning.signals import in_thread, stop_on_sigterm, stop_raises
from rnn_lightning.text import identity, sources, token_cache
from rnn_lightning.text.dataset import TokenizedReviews, encode_reviews
from rnn_lightning.text.labels import label_counts, strata
from rnn_lightning.text.loading import make_loader
from rnn_lightning.text.locations import (
    DEFAULT_DATASET,
    LABEL_FIELD,
    SPLIT_NAMES,
    TEXT_FIELD,
    check_dataset,
)
from rnn_lightning.text.readers import InputRows, read_reviews
from rnn_lightning.text.splits import VAL_SPLITS, ValSplit, fit_val_rows
from rnn_lightning.text.tokenizer import PAD_ID, digest, set_length, text_chars, train_tokenizer


class TextDataModule(LightningDataModule):
    """Text classification data (IMDB by default, or any labelled texts), tokenized once and cached on disk.

    ``prepare_data`` (one process per node) reads the source, takes its validation split or carves
    one out of train, trains the tokenizer on the training texts only (and the unlabelled ones when
    asked), encodes every split and writes the result to ``cache_dir`` under a key made of everything
    that changes it (``token_cache``); every process then memory-maps it in ``setup``. The tokenizer is
    saved in each checkpoint (``state_dict``), so a checkpoint alone turns raw text into predictions.

    Args:
        dataset: a hub id, a folder (one file per split: ``train.parquet``, ``test.csv``, ... or the hub
            layout), files per split (``{train: a.csv, test: b.csv}``; parquet, csv, tsv, jsonl/json,
            arrow), or an unpacked ``aclImdb/`` folder.
        config_name: the hub dataset's configuration, if it has several.
        text_field: the column holding the text.
        label_field: the column holding the label: class ids 0..K-1, class names (strings), or a
            ``ClassLabel``; K and the class names come from the training split. Multi-label: a column
            of lists (of names, of ids, or a ``Sequence`` of ``ClassLabel``), or with ``multi_label``
            true, CSV cells of names joined by ``|`` (``labels.LABEL_SEPARATOR``); an empty list or
            cell is a text with none of the labels.
        multi_label: whether a text may have any number of the labels: None lets the training labels
            decide (lists are multi-label), false refuses lists (a single-label preset), true reads
            ``|``-joined cells and single labels as label sets too.
        train_name / validation_name / test_name: the source's split names. A validation split is used
            when the source has one; otherwise ``val_fraction`` of train is held out.
        vocab_size: words kept, ``<pad>`` and ``<unk>`` included.
        max_len: tokens per text; longer texts keep their end, shorter ones are padded at the front.
        batch_size: texts per batch (per process under DDP).
        val_fraction: share of the training texts held out for validation, per class (when the source
            has no validation split).
        val_split: how they are drawn: ``random`` texts, or ``blocks`` of consecutive texts of a class
            (``splits.BLOCK`` each) so that a movie's reviews stay on one side (see ``splits.stratified_split``).
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
        dataset: str | dict[str, str] = DEFAULT_DATASET,
        config_name: str | None = None,
        text_field: str = TEXT_FIELD,
        label_field: str = LABEL_FIELD,
        multi_label: bool | None = None,
        train_name: str = SPLIT_NAMES["train"],
        validation_name: str = SPLIT_NAMES["validation"],
        test_name: str = SPLIT_NAMES["test"],
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
        if val_split not in VAL_SPLITS:
            raise InputError(f"data.val_split: expected one of {', '.join(map(repr, VAL_SPLITS))}, got {val_split!r}")
        if num_workers < 0:
            raise InputError(f"data.num_workers: expected an integer >= 0, got {num_workers}")
        names = {"train": train_name, "validation": validation_name, "test": test_name}
        if len(set(names.values())) < 3:
            raise InputError(f"data: train_name, validation_name and test_name must differ, got {names}")
        if isinstance(dataset, dict):
            dataset = {str(k): str(v) for k, v in dataset.items()}
        if predict_path is None:  # predicting texts reads no dataset (a saved config's may be elsewhere)
            check_dataset(dataset)
        # the model's hyperparameters keep the kind of labels as resolved (linked from ``multi_label`` below); this
        # argument may be None (the labels decide), which Lightning's merge of the two would call a conflict
        self.save_hyperparameters(ignore=["multi_label"])
        self.dataset, self.vocab_size, self.max_len, self.batch_size = dataset, vocab_size, max_len, batch_size
        self.config_name, self.split_names = config_name, names
        self.text_field, self.label_field, self._multi_label = text_field, label_field, multi_label
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
        return self._class_facts["class_names"]

    @property
    def class_counts(self) -> list[int]:
        """Training texts per class (the validation part excluded; multi-label: texts with each label)."""
        return self._class_facts["class_counts"]

    @property
    def multi_label(self) -> bool:
        """Whether the labels are multi-label (``multi_label``, else the training labels decided)."""
        return self._class_facts["multi_label"]

    @property
    def train_texts(self) -> int:
        """Training texts (the validation part excluded)."""
        return self._class_facts["train_texts"]

    @cached_property
    def _class_facts(self) -> dict:
        """Class names and counts, the kind of labels and the training texts: from the cache's meta, or
        before the cache exists from the source."""
        meta = token_cache.read_meta(self.cache_path)
        if meta is not None:
            # a cache written before multi-label data existed: single-label, each fit text counted once
            facts = {"multi_label": False, "train_texts": sum(meta["class_counts"]), **meta}
            facts = {key: facts[key] for key in ("class_names", "class_counts", "multi_label", "train_texts")}
        else:
            source = self._source
            labels = source.splits["train"].labels
            fit = self._fit_val_rows(labels)[0] if "validation" not in source.splits else slice(None)
            facts = {
                "class_names": source.class_names,
                "class_counts": label_counts(labels[fit], len(source.class_names)),
                "multi_label": source.multi_label,
                "train_texts": len(labels[fit]),
            }
        return facts

    @cached_property
    def _source(self) -> sources.Labelled:
        return sources.load_labelled(
            self.dataset, self.split_names, self.text_field, self.label_field, self.config_name, self.unlabelled,
            cache_dir=self.cache_dir, multi_label=self._multi_label,
        )  # fmt: skip

    def _fit_val_rows(self, train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fit_val_rows(strata(train_labels), self.val_fraction, self.split_seed, self.val_split)

    # ---------------------------------------------------------------- cache

    @cached_property
    def cache_path(self) -> Path:
        return token_cache.folder(
            self.cache_dir,
            {
                "source": identity.fingerprint(
                    self.dataset,
                    sources.splits_wanted(self.split_names, self.unlabelled),
                    self.config_name,
                    exclude=self.cache_dir,
                    memo_dir=self.cache_dir,
                ),
                "config_name": self.config_name,
                "fields": [self.text_field, self.label_field],
                **({"multi_label": self._multi_label} if self._multi_label is not None else {}),
                "splits": self.split_names,
                "vocab_size": self.vocab_size,
                "max_len": self.max_len,
                "val_fraction": self.val_fraction,
                "split_seed": self.split_seed,
                "val_split": self.val_split,
                "unlabelled": self.unlabelled,
                "tokenizer": None if self._given_tokenizer is None else digest(self._given_tokenizer.to_str()),
            },
        )

    @cached_property
    def _given_tokenizer(self) -> Tokenizer | None:
        """The tokenizer of ``tokenizer_from``, truncating and padding to this module's ``max_len``."""
        if self.tokenizer_from is None:
            return None
        from rnn_lightning import checkpoint

        try:
            tok = Tokenizer.from_str(checkpoint.tokenizer_json(checkpoint.load_checkpoint(self.tokenizer_from)))
        except InputError as e:
            raise InputError(
                f"data.tokenizer_from (model.init_from or model.teacher): {str(e).split(': ', 1)[1]}"
            ) from None
        if tok.get_vocab_size() > self.vocab_size:
            raise InputError(
                f"data.vocab_size: {self.vocab_size}, but the tokenizer of {self.tokenizer_from!r} has "
                f"{tok.get_vocab_size()} tokens; set data.vocab_size to the pretraining's"
            )
        return set_length(tok, self.max_len)

    def _predicting_raw_text(self) -> bool:
        return (
            self.predict_path is not None and self.trainer is not None and self.trainer.state.fn == TrainerFn.PREDICTING
        )

    def prepare_data(self) -> None:
        if self._predicting_raw_text():
            return  # the checkpoint brings the tokenizer; no dataset needed
        target = self.cache_path
        if token_cache.exists(target):
            return
        self._write_cache(target, self._given_tokenizer)

    @stop_raises  # SIGTERM / SIGINT: exit at once, leaving no half-written cache
    def _write_cache(self, target: Path, tokenizer: Tokenizer | None) -> None:
        """Encode every split into ``target`` with ``tokenizer``, or one trained on the fit texts (and the
        unlabelled ones when asked)."""
        # said once the stop handlers are in place: a stop from here on leaves no half-written cache
        rank_zero_info(f"Tokenizing {self.dataset} into {target} (once; later runs reuse it)")
        source = self._source
        train = source.splits["train"]
        empty = train.texts.count_empty()
        if empty:
            rank_zero_warn(f"data.dataset: {empty} empty training text(s) kept; they encode as padding only")
        fit_val = None if "validation" in source.splits else self._fit_val_rows(train.labels)
        if tokenizer is None:
            unlabelled = source.splits["unlabelled"].texts.chunks() if self.unlabelled else ()
            texts = itertools.chain(train.texts.chunks(None if fit_val is None else fit_val[0]), unlabelled)
            texts = itertools.chain.from_iterable(texts)
            tokenizer = in_thread(train_tokenizer, texts, self.vocab_size, self.max_len)  # a stop ends it at once
        learned = tokenizer.get_vocab_size()
        if learned < self.vocab_size:
            rank_zero_info(
                f"data.vocab_size is {self.vocab_size} but the training texts hold only {learned} distinct tokens; ids above stay unused"
            )
        token_cache.write(target, source, tokenizer, fit_val, {**self._class_facts, "dataset": self.dataset})

    def setup(self, stage: str) -> None:
        if self._predicting_raw_text():
            with stop_on_sigterm():  # opening a FIFO, or a stalled stdin's first line, waits for its writer
                # checked now, read in predict_dataloader; self.max_len is the checkpoint's (the CLI sets it)
                self._review_chunks = read_reviews(self.predict_path, text_chars(self.max_len), self.text_field)
            return
        if self.splits:
            return
        path = self.cache_path
        if not token_cache.exists(path):
            raise InputError(
                f"data: no token cache at {path}; prepare_data did not run or cache_dir is not shared between nodes"
            )
        self._load_cache(path, self._given_tokenizer)
        token_cache.check_same_tokenizer_everywhere(self.trainer, self._encoded_with)

    def _load_cache(self, path: Path, tokenizer: Tokenizer | None) -> None:
        """Take the cache at ``path``; a damaged one is rebuilt with ``tokenizer`` (None: trained again)."""
        cached = token_cache.read_or_rebuild(path, lambda target: self._write_cache(target, tokenizer), self.cache_dir)
        self.tokenizer, self._encoded_with = Tokenizer.from_str(cached.tokenizer_json), cached.tokenizer_json
        self.splits = cached.views

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
            target = token_cache.folder_for_tokenizer(self.cache_path, tokenizer_json)
            tokenizer = set_length(Tokenizer.from_str(tokenizer_json), self.max_len)
            if not token_cache.exists(target):
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

    def _loader(self, split: str, batch_size: int | None = None, shuffle_seed: int | None = None) -> DataLoader:
        return make_loader(
            self.splits[split], batch_size or self.batch_size, self.num_workers, self.trainer, shuffle_seed
        )

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        labelled = self._loader("fit", shuffle_seed=self.shuffle_seed)
        if not self.unlabelled:
            return labelled
        # As many unlabelled batches as labelled ones: both run out together ("min_size" then ends the epoch).
        n_batches = len(labelled)
        size = -(-len(self.splits["unlabelled"]) // (n_batches * (self.trainer.world_size if self.trainer else 1)))
        unlabelled = self._loader("unlabelled", batch_size=max(1, size), shuffle_seed=self.shuffle_seed + 1)
        return CombinedLoader({"labelled": labelled, "unlabelled": unlabelled}, mode="min_size")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        self._test_split()
        return self._loader("test")

    def _test_split(self) -> TokenizedReviews:
        if "test" not in self.splits:
            raise InputError(f"data.test_name: {self.dataset!r} has no split {self.split_names['test']!r} to test on")
        return self.splits["test"]

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
            with stop_on_sigterm():  # reading all of the input before the first batch: stop inside it
                self.splits["predict"], self.predict_rows = encode_reviews(
                    self._review_chunks, self.tokenizer, self.cache_dir
                )
        return self._loader("predict")
