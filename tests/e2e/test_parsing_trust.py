"""Untrusted options, configs and checkpoints: refused in one line, bounded in time and memory."""

import pandas as pd
import pytest
import torch

from rnn_lightning import limits
from rnn_lightning.errors import InputError
from rnn_lightning.text.labels import class_names
from tests.helpers import ckpt_dir, one_line_error, runs, tiny_cli_args


@pytest.mark.parametrize("option", [["--model.cel", "lstm"], ["--trainer.max_epoch", "1"]])
def test_an_abbreviated_option_is_refused_not_taken_for_the_full_one(cli, tiny_args, tmp_path, option):
    line = one_line_error(cli("fit", *tiny_args, *option, check=False))
    assert line.startswith("error: unrecognized arguments:") and option[0] in line
    assert runs(tmp_path) == []  # nothing trained


def test_a_yaml_alias_bomb_is_refused_before_it_expands(cli, tiny_args, tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 values
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n")
    assert bomb.stat().st_size < 1000
    line = one_line_error(cli("fit", *tiny_args, "--config", str(bomb), check=False))
    assert "through its aliases" in line and f"{limits.MAX_NODES:,}" in line
    assert runs(tmp_path) == []


def test_a_config_with_a_few_aliases_still_loads(cli, tiny_args, tmp_path):
    config = tmp_path / "aliases.yaml"
    config.write_text("trainer:\n  max_epochs: &n 1\n  check_val_every_n_epoch: *n\n")
    result = cli("fit", *tiny_args, "--config", str(config), "--print_config")
    assert "check_val_every_n_epoch: 1" in result.output


@pytest.fixture(scope="module")
def trained(parquet_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    args = [*tiny_cli_args(parquet_dir, root), "--trainer.max_epochs", "1"]
    from rnn_lightning.training.cli import main

    main(["fit", *args])
    return args, ckpt_dir(root) / "last.ckpt"


def spoilt(good, tmp_path, change) -> str:
    state = torch.load(good, weights_only=True)
    change(state)
    path = tmp_path / "spoilt.ckpt"
    torch.save(state, path)
    return str(path)


def shared_nest(state):
    nest = []
    for _ in range(30):  # tiny on disk (one list, pickled once), 2**30 values when walked
        nest = [nest, nest]
    state["hyper_parameters"]["extra"] = nest


def many_names(state):
    state["hyper_parameters"]["class_names"] = [f"c{i}" for i in range(20_000)]


def long_tokenizer(state):
    from tokenizers import Tokenizer

    from rnn_lightning.text.tokenizer import set_length

    tok = Tokenizer.from_str(state["TextDataModule"]["tokenizer"])
    state["TextDataModule"]["tokenizer"] = set_length(tok, 10**9).to_str()


def long_data(state):
    state["datamodule_hyper_parameters"]["max_len"] = 10**9


@pytest.mark.parametrize(
    "change, expected",
    [
        (shared_nest, "once its shared (aliased or nested) parts are expanded"),
        (many_names, "20,000 classes; at most 1,000"),
        (long_tokenizer, "its tokenizer's truncation is 1000000000 tokens"),
        (long_data, "data.max_len is 1000000000 tokens"),
    ],
)
@pytest.mark.parametrize("command", ["test", "predict"])
def test_a_hostile_checkpoint_is_refused_in_one_line(cli, trained, tmp_path, change, expected, command):
    args, good = trained
    path = spoilt(good, tmp_path, change)
    line = one_line_error(cli(command, *args, "--ckpt_path", path, check=False))
    assert line.startswith("error: ckpt_path:") and expected in line, line


def test_a_hostile_checkpoint_is_refused_by_the_python_api_too(trained, tmp_path):
    from rnn_lightning.inference import Predictor

    with pytest.raises(InputError, match="its tokenizer's truncation"):
        Predictor.from_checkpoint(spoilt(trained[1], tmp_path, long_tokenizer))


def test_too_many_or_too_long_class_names_in_the_data_are_refused():
    import datasets
    import pyarrow as pa

    column = pa.chunked_array([[f"c{i}" for i in range(20_000)]])
    with pytest.raises(InputError, match="data.label_field: 20,000 classes; at most 1,000"):
        class_names(column, datasets.Value("string"), "data.label_field")
    column = pa.chunked_array([["a", "b" * 1000]])
    with pytest.raises(InputError, match="has 1,000 characters; at most 200"):
        class_names(column, datasets.Value("string"), "data.label_field")
    assert class_names(pa.chunked_array([pd.Series(["pos", "neg"])]), datasets.Value("string"), "f") == ["neg", "pos"]


@pytest.mark.parametrize("change", [["--model.hidden_size", "16"], ["--data.vocab_size", "50"]])
def test_resuming_with_another_network_is_refused_and_with_the_same_continues(cli, tiny_args, tmp_path, change):
    cli("fit", *tiny_args, "--trainer.max_epochs", "1")
    last = ckpt_dir(tmp_path) / "last.ckpt"
    before = last.read_bytes()
    line = one_line_error(cli("fit", *tiny_args, *change, "--ckpt_path", "last", check=False))
    assert line.startswith(f"error: {change[0][2:]}: the checkpoint was trained with") and change[1] in line
    assert last.read_bytes() == before  # nothing trained
    cli("fit", *tiny_args, "--ckpt_path", "last")  # max_epochs 2: one more epoch
    assert torch.load(last, weights_only=True)["epoch"] == 1
