"""Any labelled text: file types, column and split names, K classes, class weights, the memory-mapped cache."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.models import TextClassifier
from rnn_lightning.text.sources import load_labelled
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
    assert float(rows[0]["prob_good"]) > float(rows[2]["prob_good"])
    assert float(rows[2]["prob_bad"]) > float(rows[0]["prob_bad"])
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


def test_csv_and_json_lines_go_through_the_format_readers_into_one_arrow_copy(tmp_path, monkeypatch):
    """Training reads CSV and JSON lines with the readers predict uses (a byte-order mark is skipped, bytes
    that are not UTF-8 are replaced), into an Arrow copy per file that a second read takes as it is."""
    from rnn_lightning.text import opening

    frame = three_classes(30, 5)
    frame.to_csv(tmp_path / "train.csv", index=False, encoding="utf-8-sig")  # a byte-order mark, as Excel writes
    frame.to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    (tmp_path / "validation.csv").write_bytes(b"review,stars\nbad \xff movie,bad\ngood film,good\nok,ok\n")
    for _ in range(2):
        raw = load_labelled(str(tmp_path), text_field="review", label_field="stars", cache_dir=tmp_path / "cache")
        assert raw.splits["train"].texts.to_list() == frame.review.tolist()
        assert raw.splits["test"].labels.tolist() == raw.splits["train"].labels.tolist()
        assert raw.splits["validation"].texts.to_list() == ["bad \ufffd movie", "good film", "ok"]
        monkeypatch.setattr(opening, "record_batches", lambda *a: pytest.fail("a file read again"))
    assert len(list((tmp_path / "cache").rglob(opening.TABLE_COPY))) == 3  # one copy per file


def test_a_folder_with_its_own_split_names(tmp_path):
    frame = three_classes(30, 4)
    frame.to_json(tmp_path / "training.jsonl", orient="records", lines=True)
    frame[:9].to_json(tmp_path / "dev.jsonl", orient="records", lines=True)
    dm = make_dm(tmp_path, tmp_path / "out", text_field="review", label_field="stars", train_name="training",
                 validation_name="dev", test_name="dev-test")  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.splits["fit"]) == 30 and len(dm.splits["val"]) == 9 and "test" not in dm.splits
    ids = dm.splits["fit"].ids  # a split below IN_MEMORY_BYTES is read from the cache once
    assert not isinstance(ids, np.memmap) and ids.shape[0] == 30 and dm.splits["fit"].rows is None


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([0.0, 1.0, 2.0, 1.0], ([0, 1, 2, 1], ["0", "1", "2"])),  # whole numbers are numbers
        ([5, 1, 3, 1], ([2, 0, 1, 0], ["1", "3", "5"])),  # stars: the distinct values, in order
        ([-1, 1, -1, 1], ([0, 1, 0, 1], ["-1", "1"])),
        ([True, False, True, False], ([1, 0, 1, 0], ["false", "true"])),
        ([0.0, 0.7, 1.0, 1.0], "expected whole-number class ids, found 0.7"),
        ([0, 1, None, 1], "row 2 has no label"),
    ],
)
def test_label_values_are_taken_or_refused_by_name(tmp_path, labels, expected):
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": labels}).to_parquet(tmp_path / "train.parquet")
    if isinstance(expected, tuple):
        raw = load_labelled(str(tmp_path))
        assert (raw.splits["train"].labels.tolist(), raw.class_names) == expected
    else:
        with pytest.raises(InputError, match=f"data.label_field: split 'train' column 'label': .*{expected}"):
            load_labelled(str(tmp_path))


def test_an_empty_split_is_refused_naming_its_file(tmp_path):
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)}).to_parquet(
        tmp_path / "test.parquet"
    )
    with pytest.raises(InputError, match=r"data.dataset: could not read '.*test.parquet'"):
        load_labelled(str(tmp_path))
    (tmp_path / "test.parquet").unlink()
    pd.DataFrame({"text": [], "label": []}).to_csv(tmp_path / "test.csv", index=False)  # a header only
    with pytest.raises(InputError, match=r"data.dataset: could not read '.*test.csv' as csv"):
        load_labelled(str(tmp_path))


@pytest.mark.parametrize("kind", ["stars_csv", "jsonl_names"])
def test_own_files_train_test_predict_and_export_with_their_class_names(cli, tmp_path, kind):
    """A CSV of 1-5 stars and a JSONL of string labels, end to end; the class names survive
    checkpoint -> predict -> export."""
    from rnn_lightning.inference import Predictor
    from rnn_lightning.serving import ExportedPredictor

    rng = np.random.default_rng(0)
    levels = {1: "awful", 2: "poor", 3: "plain", 4: "good", 5: "superb"}
    names = ["1", "2", "3", "4", "5"] if kind == "stars_csv" else ["lukewarm", "negative", "positive"]
    rows = []
    for i in range(150):
        if kind == "stars_csv":
            label = i % 5 + 1
            word = levels[label]
        else:
            label = names[i % 3]
            word = {"lukewarm": "plain", "negative": "awful", "positive": "superb"}[label]
        rows.append(
            {"body": " ".join(rng.choice("the a film it was".split(), 6).tolist() + [word] * 2), "stars": label}
        )
    frame = pd.DataFrame(rows)
    files = {}
    for split, part in (("train", frame[:120]), ("test", frame[120:])):
        path = tmp_path / (f"{split}.csv" if kind == "stars_csv" else f"{split}.jsonl")
        part.to_csv(path, index=False) if kind == "stars_csv" else part.to_json(path, orient="records", lines=True)
        files[split] = str(path)
    args = args_for(json.dumps(files), tmp_path)
    args[args.index("--data.text_field") + 1] = "body"
    cli("fit", *args, "--data.val_fraction", "0.2")
    best = next(ckpt_dir(tmp_path).glob("best-*.ckpt"))
    assert checkpoint.load_checkpoint(best)["hyper_parameters"]["class_names"] == names
    assert "test/balanced_acc" in cli("test", *args, "--data.val_fraction", "0.2", "--ckpt_path", str(best)).output
    (tmp_path / "in.txt").write_text("superb superb film\n")
    out = tmp_path / "out.jsonl"
    cli("predict", *args, "--ckpt_path", str(best), "--data.predict_path", str(tmp_path / "in.txt"),
        "--prediction_writer.output", str(out))  # fmt: skip
    row = json.loads(out.read_text().splitlines()[0])
    assert sorted(k for k in row if k.startswith("prob_")) == sorted(f"prob_{n}" for n in names)
    predictor = Predictor.from_checkpoint(str(best))
    assert predictor.class_names == names
    predictor.export(str(tmp_path / "exported"))
    served = ExportedPredictor(str(tmp_path / "exported"))(["superb superb film"])[0]
    assert list(served["probs"]) == names and served["label"] == row["label"]
    assert served["prob"] == pytest.approx(row["prob"], abs=1e-5)


def test_a_single_file_or_an_unused_split_name_is_refused_in_one_line(cli, tmp_path):
    make_reviews(10, 0).to_csv(tmp_path / "all.csv", index=False)
    base = ["fit", "--config", str(ROOT / "configs" / "base.yaml"), "--trainer.default_root_dir", str(tmp_path)]
    line = one_line_error(cli(*base, "--data.dataset", str(tmp_path / "all.csv"), check=False))
    assert "data.dataset" in line and "single file" in line and "{train:" in line
    line = one_line_error(cli(*base, "--data.dataset", json.dumps({"trian": str(tmp_path / "all.csv")}), check=False))
    assert "data.dataset: split(s) ['trian'] are not among the splits used" in line


def test_class_weights_balanced_and_given():
    names = ["a", "b", "c"]
    model = TextClassifier(class_names=names, class_counts=[60, 30, 10], class_weights="balanced",
                                vocab_size=20, embed_dim=4, hidden_size=3, num_layers=1)  # fmt: skip
    assert model.class_weight.tolist() == pytest.approx([100 / 180, 100 / 90, 100 / 30])
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    w = model.class_weight[labels]
    per_text = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert model.loss(logits, labels).item() == pytest.approx(((w * per_text).sum() / w.sum()).item(), rel=1e-6)
    binary = TextClassifier(class_weights=[1.0, 3.0], vocab_size=20, embed_dim=4, hidden_size=3, num_layers=1)
    logit, target = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1, 0, 1])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, target.float(), reduction="none")
    assert binary.loss(logit, target).item() == pytest.approx(((bce * torch.tensor([3.0, 1.0, 3.0])).sum() / 7).item())
    plain = TextClassifier(vocab_size=20, embed_dim=4, hidden_size=3, num_layers=1)  # unweighted: the mean
    assert plain.loss(logit, target).item() == pytest.approx(bce.mean().item())
    for bad in ([1.0, 2.0], "heavy", [-1.0, 1.0, 1.0]):
        with pytest.raises(InputError, match="model.class_weights"):
            TextClassifier(class_names=names, class_weights=bad, vocab_size=20, embed_dim=4, hidden_size=3)
    with pytest.raises(InputError, match="model.class_names"):
        TextClassifier(class_names=["only"], vocab_size=20)


def test_class_counts_reach_the_model_through_the_cli(cli, parquet_dir, tmp_path):
    from tests.helpers import tiny_cli_args

    cli("fit", *tiny_cli_args(parquet_dir, tmp_path), "--model.class_weights", "balanced", "--trainer.max_epochs", "1")
    hp = checkpoint.load_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")["hyper_parameters"]
    assert hp["class_names"] == ["0", "1"] and sum(hp["class_counts"]) == 86 and hp["class_weights"] == "balanced"
