"""Fixtures: tiny IMDB-shaped datasets written by the tests themselves; everything offline, on the CPU,
under ``tmp_path``. Shared functions are in ``helpers.py``."""

import os
import shutil
import tempfile

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before `datasets` is imported anywhere
os.environ["HF_HUB_OFFLINE"] = "1"
# Caches that default to the user's home go to temporary folders (removed by ``home_caches``), set
# before anything reads them; subprocesses inherit them. RNN_LIGHTNING_CACHE is files.CACHE_ENV.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-")
os.environ["RNN_LIGHTNING_CACHE"] = tempfile.mkdtemp(prefix="rnn-lightning-cache-")
os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="matplotlib-")
# The tests' own callbacks are named in configs: their package joins the allowed imports (training/trust.py).
os.environ["RNN_LIGHTNING_TRUSTED_IMPORTS"] = "tests"

from pathlib import Path

import pytest
import torch

# under `pytest -n N`, N workers of one thread each beat N workers fighting over every core
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from tests.helpers import SUBPROCESS_ENV, InProcessCLI, make_reviews, tiny_cli_args, write_splits


@pytest.fixture(scope="session", autouse=True)
def native_build_dir(tmp_path_factory) -> Path:
    """The compiled CPU loop (network/cpu_rnn.py) is built here, not in the user's cache; subprocesses inherit it."""
    from rnn_lightning.network import cpu_rnn

    # One folder for all pytest-xdist workers (their base folders share a parent): the first builds the
    # extension and the others wait on its build lock (cpu_rnn.build_lock), instead of building it again.
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "native"
    path.mkdir(exist_ok=True)
    os.environ[cpu_rnn.ENV_DIR] = str(path)
    SUBPROCESS_ENV[cpu_rnn.ENV_DIR] = str(path)  # copied from os.environ at import, before this fixture ran
    cpu_rnn.library.cache_clear()
    return path


@pytest.fixture(scope="session", autouse=True)
def home_caches() -> list[Path]:
    """The folders of the caches above: datasets' Arrow copies and locks, the default token cache with
    its digests memo, matplotlib's font list; they go when the session ends."""
    from rnn_lightning import files

    assert files.CACHE_ROOT == os.environ[files.CACHE_ENV]  # the variable set above is the one files.py reads
    folders = [Path(os.environ[name]) for name in ("HF_DATASETS_CACHE", files.CACHE_ENV, "MPLCONFIGDIR")]
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def parquet_dir(tmp_path_factory) -> Path:
    """A folder in the stanfordnlp/imdb layout: train.parquet (96 reviews) and test.parquet (48)."""
    return write_splits(tmp_path_factory.mktemp("imdb_parquet"), make_reviews(96, seed=1), make_reviews(48, seed=2))


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


@pytest.fixture()
def tiny_args(parquet_dir, tmp_path) -> list[str]:
    return tiny_cli_args(parquet_dir, tmp_path)


@pytest.fixture()
def cli(capfd, caplog) -> InProcessCLI:
    """``cli("fit", *args)``: the command line in this process; returns (exit code, console output)."""
    return InProcessCLI(capfd, caplog)
