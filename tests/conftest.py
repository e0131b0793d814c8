"""Tiny IMDB-shaped datasets written by the tests themselves; everything offline and on the CPU."""

import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before `datasets` is imported anywhere
os.environ["HF_HUB_OFFLINE"] = "1"

import random
from pathlib import Path

import pandas as pd
import pytest

NEUTRAL = "the a movie film plot actor scene story it was and of to in this that with".split()
POSITIVE = "great wonderful excellent superb loved brilliant".split()
NEGATIVE = "awful terrible boring worst hated dull".split()


def make_reviews(n: int, seed: int) -> pd.DataFrame:
    """``n`` reviews, half positive: neutral filler with a few sentiment words, some ``<br />`` tags."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(5, 30))]
        for _ in range(3):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        text = " ".join(words).capitalize() + rng.choice([".", "!", " <br /><br />Really."])
        rows.append({"text": text, "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def parquet_dir(tmp_path_factory) -> Path:
    """A folder in the stanfordnlp/imdb layout: train.parquet (96 reviews) and test.parquet (48)."""
    root = tmp_path_factory.mktemp("imdb_parquet")
    make_reviews(96, seed=1).to_parquet(root / "train.parquet")
    make_reviews(48, seed=2).to_parquet(root / "test.parquet")
    return root


@pytest.fixture(scope="session")
def aclimdb_dir(tmp_path_factory) -> Path:
    """The same kind of data as the Stanford tarball unpacks it: aclImdb/{train,test}/{pos,neg}/*.txt."""
    root = tmp_path_factory.mktemp("acl") / "aclImdb"
    for split, n, seed in (("train", 40, 3), ("test", 20, 4)):
        for i, row in make_reviews(n, seed).iterrows():
            folder = root / split / ("pos" if row.label else "neg")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}_{7 if row.label else 2}.txt").write_text(row.text, encoding="utf-8")
    return root


def tiny_cli_args(dataset: Path, root: Path) -> list[str]:
    """CLI arguments for a fast run of configs/base.yaml on tiny data, all output under ``root``."""
    return [
        "--config", str(ROOT / "configs" / "base.yaml"),
        "--data.dataset", str(dataset),
        "--data.cache_dir", str(root / "cache"),
        "--data.vocab_size", "64",
        "--data.max_len", "24",
        "--data.batch_size", "16",
        "--model.embed_dim", "16",
        "--model.hidden_size", "8",
        "--trainer.max_epochs", "2",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


@pytest.fixture()
def tiny_args(parquet_dir, tmp_path) -> list[str]:
    return tiny_cli_args(parquet_dir, tmp_path)


ROOT = Path(__file__).resolve().parents[1]
