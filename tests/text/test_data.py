"""The data module: sources, the validation split, the tokenizer, the cache, loaders and bad data."""

import os

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_lightning.errors import InputError
from rnn_lightning.text import TextDataModule, dataset
from rnn_lightning.text import datamodule as dm_module
from rnn_lightning.text.dataset import TokenizedReviews, read_rows
from rnn_lightning.text.loading import EpochShuffleSampler
from rnn_lightning.text.sources import load_labelled
from rnn_lightning.text.splits import stratified_split
from tests.helpers import make_dm, make_reviews


def prepared(dm: TextDataModule) -> TextDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_parquet_folder_and_aclimdb_folder_both_load(parquet_dir, aclimdb_dir):
    for folder, n_train, n_test, names in ((parquet_dir, 96, 48, ["0", "1"]), (aclimdb_dir, 40, 20, ["neg", "pos"])):
        raw = load_labelled(str(folder))
        assert len(raw.splits["train"].texts) == n_train and len(raw.splits["test"].texts) == n_test
        assert set(raw.splits["train"].labels.tolist()) == {0, 1} and raw.class_names == names


def test_aclimdb_labels_follow_the_folder_names(aclimdb_dir):
    train = load_labelled(str(aclimdb_dir)).splits["train"]
    texts, labels = train.texts.to_list(), train.labels
    positive = {"great", "wonderful", "excellent", "superb", "loved", "brilliant"}
    for text, label in zip(texts, labels, strict=True):
        assert bool(positive & set(text.lower().replace(".", " ").replace("!", " ").split())) == bool(label)


def test_batches_hold_front_padded_ids_and_labels(parquet_dir, tmp_path):
    dm = prepared(make_dm(parquet_dir, tmp_path))
    ids, labels = next(iter(dm.train_dataloader()))
    assert ids.shape == (8, 12) and ids.dtype == torch.int64 and labels.shape == (8,)
    assert int(ids.max()) < 40
    lengths = (ids != dm.pad_id).sum(1)
    for row, n in zip(ids, lengths, strict=True):  # padding only at the front
        assert torch.all(row[: 12 - n] == dm.pad_id) and torch.all(row[12 - n :] != dm.pad_id)


def test_validation_is_a_seeded_stratified_part_of_train(parquet_dir, tmp_path):
    dm = prepared(make_dm(parquet_dir, tmp_path, val_fraction=0.25))
    assert len(dm.splits["fit"]) == 72 and len(dm.splits["val"]) == 24 and len(dm.splits["test"]) == 48
    assert dm.splits["val"].labels.sum() == 12  # half of each class
    labels = np.array([0, 1] * 50)
    a, b = stratified_split(labels, 0.2, seed=3), stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(a[1], b[1]) and not np.array_equal(a[1], stratified_split(labels, 0.2, seed=4)[1])
    assert not set(a[0]) & set(a[1]) and len(a[0]) + len(a[1]) == 100
    # A source sorted by label (IMDB's is) still gives validation batches with both classes.
    _, val = stratified_split(np.array([0] * 500 + [1] * 500), 0.2, seed=0)
    assert 0 < np.array([0] * 500 + [1] * 500)[val[:32]].sum() < 32


def test_blocks_split_takes_runs_of_consecutive_reviews_per_class():
    """``blocks``: each class gives whole runs of 250 neighbouring reviews (a movie's reviews stay on
    one side), the same share as ``random``, seeded, and in a mixed order."""
    labels = np.array([0] * 5000 + [1] * 5000)
    fit, val = stratified_split(labels, 0.1, seed=0, how="blocks")
    assert np.bincount(labels[val]).tolist() == [500, 500]
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(10_000))
    runs = np.sort(val).reshape(-1, 250)  # 4 runs of 250, each starting on a block boundary
    assert np.all(runs[:, 0] % 250 == 0) and np.all(np.diff(runs, axis=1) == 1)
    assert not np.array_equal(val, np.sort(val))  # batches mix classes
    assert np.array_equal(val, stratified_split(labels, 0.1, seed=0, how="blocks")[1])
    assert not np.array_equal(np.sort(val), np.sort(stratified_split(labels, 0.1, seed=1, how="blocks")[1]))
    _, small = stratified_split(np.array([0] * 20 + [1] * 20), 0.1, seed=0, how="blocks")  # one block a class
    assert np.bincount(np.array([0] * 20 + [1] * 20)[small]).tolist() == [2, 2]


def test_tokenizer_is_trained_on_the_fit_part_only(tmp_path):
    train = pd.DataFrame({"text": ["common word"] * 9 + ["uniqueword"], "label": [0, 1] * 5})
    train.to_parquet(tmp_path / "train.parquet")
    train.to_parquet(tmp_path / "test.parquet")
    for seed in range(20):  # find a split where the one review with "uniqueword" is held out
        dm = prepared(make_dm(tmp_path, tmp_path, val_fraction=0.2, split_seed=seed))
        val_ids = dm.splits["val"].token_ids()
        if ((val_ids != dm.pad_id).sum(1) == 1).any():
            assert "uniqueword" not in dm.tokenizer.get_vocab()
            return
    pytest.fail("no split held the unique review out")


def test_second_run_reuses_the_cache(parquet_dir, tmp_path, monkeypatch):
    first = prepared(make_dm(parquet_dir, tmp_path))
    monkeypatch.setattr(dm_module, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer trained again"))
    monkeypatch.setattr(dm_module.sources, "load_labelled", lambda *a, **k: pytest.fail("data read again"))
    second = prepared(make_dm(parquet_dir, tmp_path))
    assert second.tokenizer.to_str() == first.tokenizer.to_str()
    assert np.array_equal(second.splits["test"].token_ids(), first.splits["test"].token_ids())


def test_cache_key_changes_with_what_changes_the_data(parquet_dir, tmp_path):
    base = make_dm(parquet_dir, tmp_path).cache_path
    assert make_dm(parquet_dir, tmp_path).cache_path == base
    for change in (
        {"vocab_size": 41},
        {"max_len": 13},
        {"val_fraction": 0.2},
        {"split_seed": 1},
        {"val_split": "blocks"},
    ):
        assert make_dm(parquet_dir, tmp_path, **change).cache_path != base
    assert make_dm(parquet_dir, tmp_path, batch_size=4).cache_path == base  # batching is not in the cache


def test_tokenizer_travels_in_state_dict(parquet_dir, tmp_path):
    dm = prepared(make_dm(parquet_dir, tmp_path))
    fresh = TextDataModule(dataset=str(parquet_dir), cache_dir=str(tmp_path / "other"))
    fresh.load_state_dict(dm.state_dict())
    assert fresh.tokenizer.to_str() == dm.tokenizer.to_str()


def test_checkpoint_tokenizer_that_differs_reencodes_the_data(parquet_dir, tmp_path):
    dm = prepared(make_dm(parquet_dir, tmp_path))
    other = prepared(make_dm(parquet_dir, tmp_path, split_seed=7))  # another fit part, another vocabulary
    assert other.tokenizer.to_str() != dm.tokenizer.to_str()
    other.load_state_dict(dm.state_dict())
    assert np.array_equal(other.splits["test"].token_ids(), dm.splits["test"].token_ids())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"vocab_size": 2}, "data.vocab_size"),
        ({"max_len": 0}, "data.max_len"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"val_split": "movies"}, "data.val_split"),
        ({"dataset": "./no/such/folder"}, "data.dataset"),
    ],
)
def test_bad_values_are_refused_at_construction(parquet_dir, tmp_path, kwargs, field):
    with pytest.raises(InputError, match=field):
        make_dm(kwargs.pop("dataset", parquet_dir), tmp_path, **kwargs)


def test_parquet_without_text_or_label_is_refused(tmp_path):
    pd.DataFrame({"review": ["x", "y"] * 2, "stars": [1, 0] * 2}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"review": ["x", "y"] * 2, "stars": [1, 0] * 2}).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(
        InputError, match=r"data.label_field: .*no column 'label'; its columns are \['review', 'stars'\]"
    ):
        make_dm(tmp_path, tmp_path).prepare_data()
    with pytest.raises(InputError, match=r"data.text_field: .*no column 'text'; its columns are \['review', 'stars'\]"):
        make_dm(tmp_path, tmp_path, label_field="stars").prepare_data()
    dm = make_dm(tmp_path, tmp_path, label_field="stars", text_field="review", val_fraction=0.5)
    assert dm.class_names == ["0", "1"]


def test_string_labels_name_the_classes_and_unseen_ones_are_refused(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for split in ("train", "test"):
        pd.DataFrame({"text": ["fine", "bad", "meh"], "label": ["pos", "neg", "neutral"]}).to_parquet(
            good / f"{split}.parquet"
        )
    raw = load_labelled(str(good))
    assert raw.class_names == ["neg", "neutral", "pos"] and raw.splits["train"].labels.tolist() == [2, 0, 1]
    pd.DataFrame({"text": ["fine"], "label": ["positive"]}).to_parquet(good / "test.parquet")
    with pytest.raises(
        InputError, match=r"split 'test' column 'label': label 'positive' is not one of the training split's classes"
    ):
        load_labelled(str(good))
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"text": ["fine", "bad"], "label": [1, 0]}).to_parquet(bad / "train.parquet")
    pd.DataFrame({"text": ["fine", "bad"], "label": [1, 5]}).to_parquet(bad / "test.parquet")
    with pytest.raises(
        InputError,
        match=r"split 'test' column 'label': label 5 is not one of the training split's classes \['0', '1'\]",
    ):
        load_labelled(str(bad))


def test_unreachable_hub_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached copy either
    with pytest.raises(InputError, match="point --data.dataset at a local copy"):
        load_labelled("stanfordnlp/imdb-not-cached-here")


def test_checkpoint_key_of_the_data_module_state_is_its_class_name():
    from rnn_lightning.checkpoint import DATAMODULE_KEY

    assert TextDataModule.__qualname__ == DATAMODULE_KEY  # Lightning stores the state under it


def test_data_edited_in_place_with_size_and_time_put_back_is_read_again(tmp_path):
    """The cache is keyed by the files' bytes: labels flipped in a CSV (same size), its modification time
    restored, give a new cache with the new labels."""
    frame = make_reviews(40, seed=5)
    csv = tmp_path / "train.csv"
    frame.to_csv(csv, index=False)
    dataset = {"train": str(csv)}
    before = os.stat(csv)
    first = prepared(make_dm(dataset, tmp_path, val_fraction=0.25))
    frame.assign(label=1 - frame.label).to_csv(csv, index=False)
    os.utime(csv, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(csv).st_size == before.st_size and os.stat(csv).st_mtime_ns == before.st_mtime_ns
    second = prepared(make_dm(dataset, tmp_path, val_fraction=0.25))
    assert second.cache_path != first.cache_path
    labels = [np.load(dm.cache_path / "train_labels.npy") for dm in (first, second)]
    assert np.array_equal(labels[1], 1 - labels[0])  # every row's label is the new one


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_a_damaged_cache_is_rebuilt_with_a_notice(parquet_dir, tmp_path, damage):
    first = prepared(make_dm(parquet_dir, tmp_path))
    reference, fit_reference = first.splits["test"].token_ids().copy(), first.splits["fit"].token_ids().copy()
    target = first.cache_path / ("meta.json" if damage == "meta" else "train_ids.npy")
    del first  # its arrays map the files about to be damaged
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-5] + bytes([data[-5] ^ 0x40]) + data[-4:])
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text("{not json")
    dm = make_dm(parquet_dir, tmp_path)
    if damage != "meta":
        dm.prepare_data()  # the cache "exists" (meta.json is there); setup finds it damaged
    with pytest.warns(UserWarning, match=r"data: the token cache .* is damaged .*; rebuilding it"):
        dm.prepare_data() if damage == "meta" else None
        dm.setup("fit")
    assert np.array_equal(dm.splits["test"].token_ids(), reference)
    assert np.array_equal(dm.splits["fit"].token_ids(), fit_reference)


def test_texts_are_taken_across_arrow_chunks_in_the_order_asked():
    """``Texts.chunks(rows)`` reads each Arrow chunk on its own (joining them fails past 2 GB of text)."""
    import pyarrow as pa

    from rnn_lightning.text.sources import Texts

    words = [f"w{i}" for i in range(50)]
    column = pa.chunked_array([words[:7], words[7:8], [], words[8:31], words[31:]])
    rows = np.array([49, 0, 7, 8, 30, 31, 3, 3, 12])
    assert [t for chunk in Texts(column).chunks(rows, size=4) for t in chunk] == [words[i] for i in rows]
    assert Texts(column).to_list() == words


def test_rows_read_from_the_memory_mapped_cache_equal_the_array(tmp_path, monkeypatch):
    """Batches are read from the token cache with pread (so the file is not mapped into the process), or from
    memory for a small view: the same rows, in the order asked, repeats included, as indexing the array."""
    ids = np.random.default_rng(0).integers(0, 1000, (300, 7), dtype=np.int32)
    np.save(tmp_path / "ids.npy", ids)
    mapped = np.load(tmp_path / "ids.npy", mmap_mode="r")
    rows = np.array([299, 0, 5, 5, 123, 1], dtype=np.int64)
    assert np.array_equal(read_rows(mapped, rows), ids[rows])
    for limit, kept_on_disk in ((dataset.IN_MEMORY_BYTES, False), (0, True)):  # a small view is read into memory
        monkeypatch.setattr(dataset, "IN_MEMORY_BYTES", limit)
        view = TokenizedReviews(mapped, np.arange(300) % 2, rows=np.arange(100, 300))
        assert isinstance(view.ids, np.memmap) is kept_on_disk
        batch, labels = view.__getitems__([0, 199, 3])
        assert torch.equal(batch, torch.from_numpy(ids[[100, 299, 103]]).long()) and labels.tolist() == [0, 1, 1]


def test_epoch_order_is_the_seeded_permutation():
    sampler = EpochShuffleSampler(200_000, seed=3)
    sampler.set_epoch(2)
    expected = torch.randperm(200_000, generator=torch.Generator().manual_seed(5)).tolist()
    assert list(sampler) == expected and list(sampler) == expected  # every iteration the same order


def test_evaluation_shards_hold_each_text_once():
    """Under DDP each process evaluates its share: together every text exactly once, shards within one text
    of each other, and a ``DistributedSampler``, which Lightning keeps as it is."""
    from torch.utils.data import DistributedSampler

    from rnn_lightning.text.loading import ShardSampler

    for n, world in ((47, 2), (5, 3), (1, 2), (0, 2)):
        shards = [ShardSampler(range(n), world, rank) for rank in range(world)]
        assert all(isinstance(s, DistributedSampler) and len(s) == len(list(s)) for s in shards)
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_parquet_class_label_names_survive_the_arrow_copy(tmp_path):
    """A parquet file written by datasets with a ClassLabel column: its names are the classes, through
    the row-group-by-row-group Arrow copy, and a second read uses the copy."""
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "good"])}
    )
    frame = make_reviews(40, seed=3)
    for split, rows in (("train", frame), ("test", make_reviews(20, seed=4))):
        datasets.Dataset.from_dict(rows.to_dict("list"), features=features).to_parquet(tmp_path / f"{split}.parquet")
    for _ in range(2):
        labelled = load_labelled(str(tmp_path), cache_dir=tmp_path / "cache")
        assert labelled.class_names == ["bad", "good"]
        assert labelled.splits["train"].labels.tolist() == frame.label.tolist()
    assert len(list((tmp_path / "cache").rglob("parquet.arrow"))) == 2  # one copy per file


def test_training_resumed_mid_epoch_sees_the_batches_of_the_whole_run(tmp_path):
    """The training loader resumes after exactly the batches whose step ran, whether the checkpoint was
    written as a batch ended (``every_n_train_steps``) or as the next batch started (the SLURM requeue)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from rnn_lightning.text.loading import make_loader

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.seen = torch.nn.Parameter(torch.zeros(1)), []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch_idx, batch[0][:, 0].tolist()))
            return (self.w * batch[0].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    class Rows(pl.LightningDataModule):  # 40 rows whose id is their index, 10 batches an epoch
        def train_dataloader(self):
            rows = TokenizedReviews(np.arange(40, dtype=np.int32).reshape(40, 1), np.zeros(40, dtype=np.int64))
            return make_loader(rows, 4, 0, self.trainer, shuffle_seed=7)

    class SaveAtStart(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if (trainer.current_epoch, batch_idx) == (1, 4):
                trainer.save_checkpoint(tmp_path / "whole" / "start.ckpt")

    def fit(root, ckpt=None, callbacks=()):
        model = Recorder()
        every_3 = ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=-1, filename="{step}")
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[every_3, *callbacks])  # fmt: skip
        trainer.fit(model, datamodule=Rows(), ckpt_path=ckpt)
        return model.seen

    whole = fit(tmp_path / "whole", callbacks=[SaveAtStart()])
    assert len(whole) == 20 and sorted(i for _, _, batch in whole[:10] for i in batch) == list(range(40))
    for name, done in (("step=3.ckpt", 3), ("step=12.ckpt", 12), ("start.ckpt", 14)):
        resumed = fit(tmp_path / name, ckpt=str(tmp_path / "whole" / name))
        assert resumed == whole[done:], name
