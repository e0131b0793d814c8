"""Checkpoints whose parts disagree (NaN weights, a tokenizer or class names that do not fit the weights,
a language model where a classifier is expected) and paths that are not files: refused by
``checkpoint.load_checkpoint`` in one line naming the file, before anything is built from them."""

import os
from pathlib import Path

import pytest
import torch

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.inference import Predictor
from rnn_lightning.network.text_rnn import TextRNN
from rnn_lightning.tasks import make_task
from rnn_lightning.text.tokenizer import train_tokenizer
from tests.helpers import make_reviews, one_line_error

VOCAB, MAX_LEN = 40, 12
NETWORK = {"vocab_size": VOCAB, "embed_dim": 4, "cell": "rnn", "hidden_size": 3, "num_layers": 1}


def write_checkpoint(path: Path, class_names=("neg", "pos"), language_model: bool = False, vocab: int = VOCAB) -> Path:
    """A checkpoint as the classifier (or the language model) writes one, built by hand: the network's
    weights, its hyperparameters and a tokenizer of ``vocab`` words learned from tiny reviews."""
    outputs = 0 if language_model else make_task(list(class_names)).num_outputs
    net = TextRNN(**NETWORK, num_outputs=outputs, implementation="fused")
    hparams = {**NETWORK, "implementation": "fused"}
    hparams.update({"cutoffs": [20]} if language_model else {"class_names": list(class_names)})
    tokenizer = train_tokenizer(make_reviews(40, seed=0).text, vocab, MAX_LEN)
    ckpt = {
        checkpoint.WEIGHTS_KEY: {f"net.{k}": v for k, v in net.state_dict().items()},
        checkpoint.HPARAMS_KEY: hparams,
        checkpoint.DATAMODULE_KEY: {checkpoint.TOKENIZER_KEY: tokenizer.to_str()},
        checkpoint.DATAMODULE_HPARAMS_KEY: {"vocab_size": VOCAB, "max_len": MAX_LEN},
        checkpoint.FORMAT_KEY: checkpoint.FORMAT,
    }
    torch.save(ckpt, path)
    return path


def altered(path: Path, change) -> Path:
    """``path`` rewritten after ``change(ckpt)``."""
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)
    return path


def predict_args(ckpt: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "in.txt").write_text("a great film\n")
    return ["predict", "--ckpt_path", str(ckpt), "--data.predict_path", str(tmp_path / "in.txt"),
            "--prediction_writer.output", str(tmp_path / "out.csv")]  # fmt: skip


def test_a_checkpoint_as_written_loads(tmp_path):
    ckpt = write_checkpoint(tmp_path / "good.ckpt")
    assert checkpoint.load_checkpoint(ckpt, expect="classifier")[checkpoint.HPARAMS_KEY]["class_names"] == [
        "neg",
        "pos",
    ]
    predictor = Predictor.from_checkpoint(str(ckpt))
    assert 0 < predictor(["a great film"])[0]["prob"] < 1


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_first_such_tensor(cli, tmp_path, value):
    ckpt = altered(write_checkpoint(tmp_path / "nan.ckpt"), lambda c: c["state_dict"]["net.head.bias"].fill_(value))
    with pytest.raises(InputError, match=r"nan.ckpt' holds non-finite weights \(net.head.bias has NaN or inf\)"):
        Predictor.from_checkpoint(str(ckpt))
    line = one_line_error(cli(*predict_args(ckpt, tmp_path), check=False))
    assert line.startswith("error: ckpt_path:") and "non-finite weights" in line
    assert not (tmp_path / "out.csv").exists()


def test_a_fit_does_not_resume_from_non_finite_weights(tmp_path):
    ckpt = altered(write_checkpoint(tmp_path / "nan.ckpt"), lambda c: c["state_dict"]["net.embedding.weight"][3, 1].fill_(float("nan")))  # fmt: skip
    with pytest.raises(InputError, match=r"net.embedding.weight has NaN or inf"):
        checkpoint.load_checkpoint(ckpt, expect="classifier")


def test_class_names_that_do_not_fit_the_head_are_refused(cli, tmp_path):
    ckpt = altered(write_checkpoint(tmp_path / "c.ckpt"), lambda c: c["hyper_parameters"].update(class_names=["a", "b", "c"]))  # fmt: skip
    with pytest.raises(InputError, match="its 3 class names need 3 output.* its weights have 1"):
        Predictor.from_checkpoint(str(ckpt))
    line = one_line_error(cli(*predict_args(ckpt, tmp_path), check=False))
    assert line.startswith(f"error: ckpt_path: {str(ckpt)!r}: its 3 class names")


def test_two_classes_and_a_head_of_three_outputs_are_refused(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c.ckpt", class_names=("a", "b", "c"))
    altered(ckpt, lambda c: c["hyper_parameters"].update(class_names=["a", "b"]))
    with pytest.raises(InputError, match="its 2 class names need 1 output.* its weights have 3"):
        checkpoint.load_checkpoint(ckpt)


def test_a_tokenizer_with_ids_past_the_embedding_is_refused(cli, tmp_path):
    ckpt = write_checkpoint(tmp_path / "t.ckpt")
    words = " ".join(f"word{i}" for i in range(2 * VOCAB))
    bigger = train_tokenizer([words], 2 * VOCAB, MAX_LEN).to_str()
    altered(ckpt, lambda c: c["TextDataModule"].update(tokenizer=bigger))
    with pytest.raises(InputError, match=r"its tokenizer has ids up to \d+, its embedding only 40 rows"):
        Predictor.from_checkpoint(str(ckpt))
    line = one_line_error(cli(*predict_args(ckpt, tmp_path), check=False))
    assert line.startswith(f"error: ckpt_path: {str(ckpt)!r}: its tokenizer")


def test_a_vocab_size_that_is_not_the_embeddings_is_refused(tmp_path):
    ckpt = altered(write_checkpoint(tmp_path / "v.ckpt"), lambda c: c["hyper_parameters"].update(vocab_size=50))
    with pytest.raises(InputError, match="hyper_parameters give vocab_size 50, its embedding has 40 rows"):
        checkpoint.load_checkpoint(ckpt)


def test_a_language_model_given_to_predict_is_named_as_one(cli, tmp_path):
    ckpt = write_checkpoint(tmp_path / "lm.ckpt", language_model=True)
    line = one_line_error(cli(*predict_args(ckpt, tmp_path), check=False))
    assert line == (
        f"error: ckpt_path: {str(ckpt)!r} is a language model checkpoint; classify with a classifier checkpoint "
        "(a language model starts one through model.init_from)"
    )
    assert checkpoint.load_checkpoint(ckpt, expect="language model")  # what pretrain resumes


def test_a_classifier_given_to_pretrain_is_named_as_one(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c.ckpt")
    with pytest.raises(InputError, match="is a classifier checkpoint; pretrain continues a language model checkpoint"):
        checkpoint.load_checkpoint(ckpt, expect="language model")


@pytest.mark.parametrize("what", ["fifo", "folder"])
def test_a_checkpoint_path_that_is_not_a_regular_file_says_so(cli, tmp_path, what):
    path = tmp_path / "model.ckpt"
    os.mkfifo(path) if what == "fifo" else path.mkdir()
    line = one_line_error(cli(*predict_args(path, tmp_path), check=False))  # a FIFO is never opened: no wait
    name = "a FIFO" if what == "fifo" else "a folder"
    assert line == f"error: ckpt_path: {str(path)!r} is {name}, not a regular file; expected a checkpoint file"
    with pytest.raises(InputError, match="does not exist"):
        checkpoint.load_checkpoint(tmp_path / "missing.ckpt")


def test_an_error_quoting_a_huge_value_from_a_checkpoint_is_one_bounded_line(cli, tmp_path):
    huge = list(range(200_000))  # about 1.3 MB as text, within the bound on a checkpoint's values
    ckpt = altered(write_checkpoint(tmp_path / "h.ckpt"), lambda c: c["hyper_parameters"].update(embed_dim=huge))
    result = cli(
        "fit", "--ckpt_path", str(ckpt), "--data.dataset", str(tmp_path), "--model.embed_dim", "4", check=False
    )
    line = one_line_error(result)
    assert len(line) < 1100 and len(result.output) < 5000
    assert line.startswith("error: model.embed_dim: the checkpoint was trained with [0, 1, 2, ")
    assert line.endswith("199999], the config gives 4; resuming needs the checkpoint's (pass its run's config.yaml)")
    assert "characters left out" in line


def test_a_config_value_that_expands_to_megabytes_is_one_bounded_line(cli, tmp_path):
    anchors = ["&a0 [" + ",".join(["123456789"] * 10) + "]"]
    anchors += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 5)]  # 100,000 values
    config = tmp_path / "big.yaml"
    config.write_text("model:\n  embed_dim:\n" + "".join(f"    - {a}\n" for a in anchors))
    result = cli("fit", "--config", str(config), "--data.dataset", str(tmp_path), check=False)
    line = one_line_error(result)
    assert len(result.output) < 5000 and len(line) < 1100
    assert line.startswith('error: Parser key "model.embed_dim"') and "characters left out" in line
