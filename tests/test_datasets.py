"""Any labelled text: file types, column and split names, K classes, class weights, the memory-mapped cache."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rnn_lightning import checkpoint
from rnn_lightning.data.sources import load_labelled
from rnn_lightning.errors import InputError
from rnn_lightning.models import SentimentClassifier
from tests.helpers import ROOT, ckpt_dir, make_dm, make_reviews, one_line_error

WORDS = {"bad": "awful terrible boring", "ok": "fine average plain", "good": "great wonderful superb"}


def three_classes(n: int, seed: int) -> pd.DataFrame:
    """``n`` texts of three classes named by strings, in columns ``review`` and ``stars``."""
    rng = np.random.default_rng(seed)
    names = list(WORDS)
    rows = []
    for i in range(n):
        name = names[i % 3]
        words = rng.choice("the a movie film plot it was".split(), size=8).tolist() + WORDS[name].split()
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "stars": name})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("three")
    files = {}
    for split, n, seed in (("train", 120, 0), ("validation", 30, 1), ("test", 45, 2)):
        three_classes(n, seed).to_csv(folder / f"{split}.csv", index=False)
        files[split] = str(folder / f"{split}.csv")
    return files


def args_for(dataset: str, root) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "base.yaml"),
        "--data.dataset", dataset,
        "--data.text_field", "review",
        "--data.label_field", "stars",
        "--data.cache_dir", str(root / "cache"),
        "--data.vocab_size", "40", "--data.max_len", "16", "--data.batch_size", "16",
        "--model.embed_dim", "16", "--model.hidden_size", "8",
        "--optimizer.init_args.lr", "0.02",
        "--trainer.max_epochs", "4",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def test_three_classes_from_csv_files_with_own_columns_fit_test_and_predict(cli, csv_files, parquet_dir, tmp_path):
    dataset = json.dumps(csv_files)  # files per split: --data.dataset '{"train": ..., ...}'
    args = args_for(dataset, tmp_path)
    cli("fit", *args)
    best = next(ckpt_dir(tmp_path).glob("best-*.ckpt"))
    state = checkpoint.load_checkpoint(best)
    assert state["hyper_parameters"]["class_names"] == ["bad", "good", "ok"]  # sorted distinct strings
    assert state["state_dict"]["net.head.weight"].shape[0] == 3  # K logits
    test = cli("test", *args, "--ckpt_path", str(best))
    for name in ("test/acc", "test/f1", "test/auroc", "test/balanced_acc", "test/f1_bad", "test/f1_ok"):
        assert name in test.output, name
    events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_1"), size_guidance={"images": 0})
    events.Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    assert float(events.Scalars("test/acc")[-1].value) > 0.6  # the class words are learnable
    # The validation split is the file's (30 texts), not carved out of train.
    fit_events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"))
    fit_events.Reload()
    assert {"val/f1_bad", "val/balanced_acc"} <= set(fit_events.Tags()["scalars"])

    (tmp_path / "in.txt").write_text("great wonderful superb film\n\nawful terrible boring plot\n")
    out = tmp_path / "pred.csv"
    cli("predict", *args, "--ckpt_path", str(best), "--data.predict_path", str(tmp_path / "in.txt"),
        "--prediction_writer.output", str(out))  # fmt: skip
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "label", "prob", "prob_bad", "prob_good", "prob_ok", "error"]
    assert rows[1]["error"] == "empty review" and rows[1]["label"] == ""
    assert float(rows[0]["prob_good"]) > float(rows[2]["prob_good"]) and float(rows[2]["prob_bad"]) > float(rows[0]["prob_bad"])
    best_of = max(("bad", "good", "ok"), key=lambda n: float(rows[0][f"prob_{n}"]))
    assert rows[0]["label"] == best_of and float(rows[0]["prob"]) == float(rows[0][f"prob_{best_of}"])
    assert sum(float(rows[0][f"prob_{n}"]) for n in ("bad", "good", "ok")) == pytest.approx(1, abs=1e-5)

    # The three-class checkpoint tested on two-class data: one line naming both sets of classes.
    other = ["--data.dataset", str(parquet_dir), "--data.text_field", "text", "--data.label_field", "label"]
    line = one_line_error(cli("test", *args, *other, "--ckpt_path", str(best), check=False))
    assert "classes ['bad', 'good', 'ok'] are not the data's ['0', '1']" in line


def test_the_same_table_reads_alike_from_every_file_type(tmp_path):
    frame = three_classes(30, 3)
    frame.to_parquet(tmp_path / "train.parquet")
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_csv(tmp_path / "train.tsv", index=False, sep="\t")
    frame.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    reference = None
    for suffix in ("parquet", "csv", "tsv", "jsonl"):
        raw = load_labelled({"train": str(tmp_path / f"train.{suffix}")}, text_field="review", label_field="stars")
        got = (raw.splits["train"].texts.to_list(), raw.splits["train"].labels.tolist(), raw.class_names)
        assert got[0] == frame.review.tolist()
        reference = reference or got
        assert got == reference, suffix


def test_a_folder_with_its_own_split_names(tmp_path):
    frame = three_classes(30, 4)
    frame.to_json(tmp_path / "training.jsonl", orient="records", lines=True)
    frame[:9].to_json(tmp_path / "dev.jsonl", orient="records", lines=True)
    dm = make_dm(tmp_path, tmp_path / "out", text_field="review", label_field="stars", train_name="training",
                 validation_name="dev", test_name="dev-test")  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.splits["fit"]) == 30 and len(dm.splits["val"]) == 9 and "test" not in dm.splits
    assert isinstance(dm.splits["fit"].ids, np.memmap)  # read from disk as batches need it


@pytest.mark.parametrize(
    "labels, error",
    [
        ([0.0, 1.0, 2.0, 1.0], None),  # whole numbers are class ids
        ([0.0, 0.7, 1.0, 1.0], "expected whole-number class ids, found 0.7"),
        ([0, 1, None, 1], "row 2 has no label"),
        ([0, 1, -1, 1], "expected class ids 0..K-1, found -1"),
        ([True, False, True, False], None),
    ],
)
def test_label_values_are_taken_or_refused_by_name(tmp_path, labels, error):
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": labels}).to_parquet(tmp_path / "train.parquet")
    if error is None:
        raw = load_labelled(str(tmp_path))
        assert raw.splits["train"].labels.tolist() == [int(v) for v in labels]
    else:
        with pytest.raises(InputError, match=f"data.label_field: split 'train' column 'label': .*{error}"):
            load_labelled(str(tmp_path))


def test_a_single_file_or_an_unused_split_name_is_refused_in_one_line(cli, tmp_path):
    make_reviews(10, 0).to_csv(tmp_path / "all.csv", index=False)
    base = ["fit", "--config", str(ROOT / "configs" / "base.yaml"), "--trainer.default_root_dir", str(tmp_path)]
    line = one_line_error(cli(*base, "--data.dataset", str(tmp_path / "all.csv"), check=False))
    assert "data.dataset" in line and "single file" in line and "{train:" in line
    line = one_line_error(cli(*base, "--data.dataset", json.dumps({"trian": str(tmp_path / "all.csv")}), check=False))
    assert "data.dataset: split(s) ['trian'] are not among the splits used" in line


def test_class_weights_balanced_and_given():
    names = ["a", "b", "c"]
    model = SentimentClassifier(class_names=names, class_counts=[60, 30, 10], class_weights="balanced",
                                vocab_size=20, embed_dim=4, hidden_size=3, num_layers=1)  # fmt: skip
    assert model.class_weight.tolist() == pytest.approx([100 / 180, 100 / 90, 100 / 30])
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    w = model.class_weight[labels]
    per_text = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert model.loss(logits, labels).item() == pytest.approx(((w * per_text).sum() / w.sum()).item(), rel=1e-6)
    binary = SentimentClassifier(class_weights=[1.0, 3.0], vocab_size=20, embed_dim=4, hidden_size=3, num_layers=1)
    logit, target = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1, 0, 1])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, target.float(), reduction="none")
    assert binary.loss(logit, target).item() == pytest.approx(((bce * torch.tensor([3.0, 1.0, 3.0])).sum() / 7).item())
    plain = SentimentClassifier(vocab_size=20, embed_dim=4, hidden_size=3, num_layers=1)  # unweighted: the mean
    assert plain.loss(logit, target).item() == pytest.approx(bce.mean().item())
    for bad in ([1.0, 2.0], "heavy", [-1.0, 1.0, 1.0]):
        with pytest.raises(InputError, match="model.class_weights"):
            SentimentClassifier(class_names=names, class_weights=bad, vocab_size=20, embed_dim=4, hidden_size=3)
    with pytest.raises(InputError, match="model.class_names"):
        SentimentClassifier(class_names=["only"], vocab_size=20)


def test_class_counts_reach_the_model_through_the_cli(cli, parquet_dir, tmp_path):
    from tests.helpers import tiny_cli_args

    cli("fit", *tiny_cli_args(parquet_dir, tmp_path), "--model.class_weights", "balanced", "--trainer.max_epochs", "1")
    hp = checkpoint.load_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")["hyper_parameters"]
    assert hp["class_names"] == ["0", "1"] and sum(hp["class_counts"]) == 86 and hp["class_weights"] == "balanced"
