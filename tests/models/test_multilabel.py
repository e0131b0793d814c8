"""Multi-label classification end to end on tiny data: the task's loss, decisions and thresholds, label
lists from parquet, JSON lines and CSV, fit -> test -> predict -> serve -> export, and bad input."""

import json
import random
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rnn_lightning.errors import InputError
from rnn_lightning.task_metrics import THRESHOLD_GRID, MultiLabelScores, best_thresholds
from rnn_lightning.tasks import MultiLabel, make_task, task_from_state
from tests.helpers import ckpt_dir, one_line_error, tiny_cli_args

LABELS = ["joy", "anger", "fear", "neutral"]
CUES = {"joy": "delighted", "anger": "furious", "fear": "scared"}
FILLER = "the a comment it was and of to in this that with today".split()


def comments(n: int, seed: int) -> tuple[list[str], list[list[int]]]:
    """``n`` comments: each emotion's cue word marks it (two at once in some), none of them is neutral."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        ids = sorted(rng.sample(range(3), k=[0, 1, 1, 2][i % 4]))
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        for j in ids:
            words.insert(rng.randrange(len(words) + 1), CUES[LABELS[j]])
        texts.append(" ".join(words))
        labels.append(ids or [3])
    return texts, labels


@pytest.fixture(scope="module")
def emotions(tmp_path_factory) -> Path:
    """train/validation/test parquet files whose ``labels`` are lists of ``ClassLabel``s (the hub's layout)."""
    folder = tmp_path_factory.mktemp("emotions")
    features = datasets.Features(
        {"text": datasets.Value("string"), "labels": datasets.List(datasets.ClassLabel(names=LABELS))}
    )
    for split, n, seed in (("train", 240, 0), ("validation", 80, 1), ("test", 80, 2)):
        texts, labels = comments(n, seed)
        datasets.Dataset.from_dict({"text": texts, "labels": labels}, features=features).to_parquet(
            folder / f"{split}.parquet"
        )
    return folder


def args(dataset: Path, root: Path, *extra: str) -> list[str]:
    return [*tiny_cli_args(dataset, root), "--data.label_field", "labels", "--trainer.max_epochs", "4", *extra]


def f1_per_label(decided: np.ndarray, truth: np.ndarray) -> np.ndarray:
    tp = (decided & truth).sum(0)
    return 2 * tp / np.maximum(2 * tp + (decided & ~truth).sum(0) + (~decided & truth).sum(0), 1)


# ---------------------------------------------------------------- the task


def test_the_task_is_a_sigmoid_and_binary_cross_entropy_per_label_decided_by_thresholds():
    task = make_task(LABELS, multi_label=True)
    assert isinstance(task, MultiLabel) and task.num_outputs == 4 and task.MONITOR == "val/macro_f1"
    logits, labels = torch.randn(5, 4), torch.randint(0, 2, (5, 4))
    assert torch.allclose(task.loss(logits, labels), F.binary_cross_entropy_with_logits(logits, labels.float()))
    assert torch.allclose(task.probabilities(logits), torch.sigmoid(logits))
    task.thresholds = torch.tensor([0.5, 0.2, 0.9, 0.5])
    decided = task.decision([0.6, 0.25, 0.8, 0.1])
    assert decided == {"labels": ["joy", "anger"], "probs": dict(zip(LABELS, [0.6, 0.25, 0.8, 0.1], strict=True))}
    assert task.decision([0.1, 0.1, 0.1, 0.1])["labels"] == []  # no label is an answer
    assert task.cells(decided)["labels"] == ["joy", "anger"] and task.explained(decided) == 2  # the most probable


def test_thresholds_round_trip_and_a_given_one_is_never_replaced():
    task = make_task(LABELS, multi_label=True)
    task.thresholds = torch.tensor([0.1, 0.2, 0.3, 0.4])
    again = task_from_state(LABELS, json.loads(json.dumps(task.state())), "ckpt")
    assert isinstance(again, MultiLabel) and torch.allclose(again.thresholds, task.thresholds)
    fixed = make_task(LABELS, multi_label=True, thresholds=0.7)
    fixed.load_state(task.state(), "ckpt")
    assert fixed.thresholds.tolist() == pytest.approx([0.7] * 4)
    assert task.with_thresholds([0, 1, 0.5, 0.5], "thresholds").decision([0.0, 0.99, 0.5, 0.4])["labels"] == [
        "joy",
        "fear",
    ]
    assert torch.allclose(task.thresholds, torch.tensor([0.1, 0.2, 0.3, 0.4]))  # the override is a copy
    assert isinstance(task_from_state(["neg", "pos"], None, "ckpt"), type(make_task(["neg", "pos"])))


@pytest.mark.parametrize(
    "thresholds, what",
    [
        (1.5, "in [0, 1]"),
        (-0.1, "in [0, 1]"),
        (float("nan"), "in [0, 1]"),
        ([0.5, 0.5], "4 numbers"),
        ("high", "one number"),
    ],
)
def test_a_threshold_outside_0_1_or_a_count_that_is_not_k_is_one_line(thresholds, what):
    with pytest.raises(InputError, match=r"^model\.thresholds: expected one number or 4 numbers") as e:
        make_task(LABELS, multi_label=True, thresholds=thresholds)
    assert "\n" not in str(e.value) and what.split()[-1] in str(e.value)


def test_thresholds_for_classes_that_exclude_each_other_are_refused():
    with pytest.raises(InputError, match="model.thresholds: thresholds are for multi-label models"):
        make_task(["neg", "pos"], thresholds=0.3)


def test_each_labels_threshold_is_the_grids_best_f1_on_validation():
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(300, 3, generator=gen) < torch.tensor([0.1, 0.4, 0.0])).to(torch.uint8)
    probs = (0.35 * target + 0.65 * torch.rand(300, 3, generator=gen)).clamp(0, 1)
    chosen = best_thresholds(probs, target, torch.full((3,), 0.5))
    truth = target.bool().numpy()
    for k in range(2):
        f1 = [f1_per_label((probs[:, k : k + 1] >= t).numpy(), truth[:, k : k + 1])[0] for t in THRESHOLD_GRID]
        assert chosen[k].item() == pytest.approx(THRESHOLD_GRID[int(np.argmax(f1))])
    assert chosen[2].item() == 0.5  # no text has label 2: it keeps its threshold


def test_the_metrics_are_those_of_the_decisions_at_the_thresholds():
    task = make_task(LABELS, multi_label=True)
    task.thresholds = torch.tensor([0.3, 0.5, 0.7, 0.5])
    gen = torch.Generator().manual_seed(1)
    probs, target = torch.rand(50, 4, generator=gen), torch.randint(0, 2, (50, 4), generator=gen)
    scores = MultiLabelScores(task, "test", keep_scores=True, choose=False)
    scores.update(probs[:20], target[:20])
    scores.update(probs[20:], target[20:])
    values = scores.compute()
    decided, truth = (probs >= task.thresholds).numpy(), target.bool().numpy()
    per_label = f1_per_label(decided, truth)
    assert values["test/macro_f1"].item() == pytest.approx(per_label.mean(), abs=1e-6)
    assert values["test/f1_anger"].item() == pytest.approx(per_label[1], abs=1e-6)
    tp = (decided & truth).sum()
    micro = 2 * tp / (2 * tp + (decided & ~truth).sum() + (~decided & truth).sum())
    assert values["test/micro_f1"].item() == pytest.approx(micro, abs=1e-6)
    assert values["test/subset_acc"].item() == pytest.approx((decided == truth).all(1).mean(), abs=1e-6)
    assert 0 < values["test/map"].item() <= 1
    counted = MultiLabelScores(task, "train", keep_scores=False, choose=False)  # counts only: the same F1s
    counted.update(probs, target)
    assert counted.compute()["train/macro_f1"].item() == pytest.approx(per_label.mean(), abs=1e-6)


# ---------------------------------------------------------------- fit, test, predict, serve, export


@pytest.fixture(scope="module")
def trained(emotions, tmp_path_factory) -> Path:
    """The folder of one tiny multi-label fit, shared by the tests that read its checkpoints."""
    from rnn_lightning.training.cli import main

    root = tmp_path_factory.mktemp("fit")
    main(["fit", *args(emotions, root)])
    return root


def test_a_list_column_fits_a_multi_label_model_selected_on_macro_f1_with_thresholds_kept(trained):
    root = trained
    best = sorted(ckpt_dir(root).glob("best-*.ckpt"))
    assert best and "macro_f1" in best[0].name
    ckpt = torch.load(best[0], weights_only=True)
    assert ckpt["hyper_parameters"]["multi_label"] is True and ckpt["hyper_parameters"]["class_names"] == LABELS
    thresholds = ckpt["task"]["thresholds"]
    assert len(thresholds) == 4 and all(0 < t < 1 for t in thresholds) and thresholds != [0.5] * 4
    assert ckpt["state_dict"]["net.head.weight"].shape[0] == 4  # one logit per label


def test_predict_writes_label_lists_whose_macro_f1_is_the_tests(trained, emotions, cli):
    root = trained
    test = cli("test", *args(emotions, root), "--ckpt_path", "best")
    reported = float(next(line.split()[-1] for line in test.output.splitlines() if "test/macro_f1" in line))
    out = root / "test_predictions.jsonl"
    cli("predict", *args(emotions, root), "--ckpt_path", "best", "--prediction_writer.output", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    truth = pd.read_parquet(emotions / "test.parquet")["labels"]
    assert len(rows) == len(truth) and [r["id"] for r in rows] == [str(i) for i in range(len(truth))]
    decided = np.array([[name in r["labels"] for name in LABELS] for r in rows])
    actual = np.array([[i in list(ids) for i in range(4)] for ids in truth])
    assert f1_per_label(decided, actual).mean() == pytest.approx(reported, abs=1e-4)
    assert all(set(r) >= {"labels", *(f"prob_{n}" for n in LABELS)} for r in rows)


def test_predict_to_csv_joins_the_labels_and_a_config_may_override_the_thresholds(trained, emotions, cli, tmp_path):
    root = trained
    texts = tmp_path / "in.jsonl"
    texts.write_text('{"text": "furious and scared today"}\n{"text": ""}\n')
    out = tmp_path / "out.csv"
    common = ["--ckpt_path", str(sorted(ckpt_dir(root).glob("best-*.ckpt"))[0]), "--data.predict_path", str(texts)]
    cli("predict", *common, "--prediction_writer.output", str(out), "--model.thresholds", "0.0")
    table = pd.read_csv(out, keep_default_na=False)
    assert table["labels"][0] == "|".join(LABELS) and table["labels"][1] == "" and table["error"][1] != ""
    cli("predict", *common, "--prediction_writer.output", str(out), "--model.thresholds", "1.0")
    assert pd.read_csv(out, keep_default_na=False)["labels"][0] == ""  # no probability reaches 1


def test_serve_and_an_export_answer_label_lists_with_the_checkpoints_thresholds(trained, tmp_path):
    from fastapi.testclient import TestClient

    from rnn_lightning import server
    from rnn_lightning.inference import Predictor
    from rnn_lightning.serving import ExportedPredictor

    root = trained
    best = sorted(ckpt_dir(root).glob("best-*.ckpt"))[0]
    predictor = Predictor.from_checkpoint(str(best))
    texts = ["so delighted and furious", "the comment was fine"]
    expected = predictor(texts)
    assert all(isinstance(row["labels"], list) for row in expected)
    with TestClient(server.create_app(str(best))) as c:
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
        answer = c.post("/predict", json={"texts": texts}).json()["predictions"]
        assert [row["labels"] for row in answer] == [row["labels"] for row in expected]
        every = c.post("/predict", json={"texts": texts, "thresholds": 0.0}).json()["predictions"]
        assert all(row["labels"] == LABELS for row in every)
        bad = c.post("/predict", json={"texts": texts, "thresholds": [0.5, 2]})
        assert bad.status_code == 422 and bad.json()["error"].startswith("thresholds: expected one number or 4")
    exported = ExportedPredictor(str(predictor.export(str(tmp_path / "export"))))
    assert json.loads((tmp_path / "export" / "meta.json").read_text())["task"] == predictor.task.state()
    assert [row["labels"] for row in exported(texts)] == [row["labels"] for row in expected]


def test_jsonl_lists_of_names_train_with_only_the_label_field(tmp_path, cli):
    texts, labels = comments(160, 3)
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "test"):
        rows = [{"text": t, "labels": [LABELS[i] for i in ids if i != 3]} for t, ids in zip(texts, labels, strict=True)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli("fit", *args(folder, tmp_path, "--trainer.max_epochs", "1"))
    ckpt = torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["multi_label"] is True
    assert ckpt["hyper_parameters"]["class_names"] == ["anger", "fear", "joy"]  # sorted names; [] is no label


def test_csv_cells_joined_by_a_bar_train_when_multi_label_is_asked_for(tmp_path, cli):
    texts, labels = comments(160, 4)
    cells = ["|".join(LABELS[i] for i in ids) for ids in labels]
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "test"):
        pd.DataFrame({"text": texts, "labels": cells}).to_csv(folder / f"{split}.csv", index=False)
    cli("fit", *args(folder, tmp_path, "--trainer.max_epochs", "1", "--data.multi_label", "true"))
    ckpt = torch.load(ckpt_dir(tmp_path) / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["class_names"] == sorted(LABELS) and ckpt["hyper_parameters"]["multi_label"]


# ---------------------------------------------------------------- bad input, each one line before training


def write_jsonl(folder: Path, train: list[dict], test: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test or train)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def rows(labels: list, n: int = 40) -> list[dict]:
    return [{"text": f"comment {i} delighted", "labels": labels[i % len(labels)]} for i in range(n)]


def test_a_list_column_given_to_a_single_label_preset_is_refused(emotions, tmp_path, cli):
    error = one_line_error(cli("fit", *args(emotions, tmp_path, "--data.multi_label", "false"), check=False))
    assert "column 'labels': holds lists of labels (multi-label), but data.multi_label is false" in error
    assert not (tmp_path / "lightning_logs").exists()


def test_mixed_scalars_and_lists_are_refused_naming_a_row_of_each(tmp_path, cli):
    data = write_jsonl(tmp_path / "d", rows([["joy"], ["anger", "fear"], "joy"]))
    error = one_line_error(cli("fit", *args(data, tmp_path), check=False))
    assert "row 0 holds a list of labels" in error and "but row 2 a single one ('joy')" in error


def test_a_label_name_training_never_saw_is_refused_naming_its_row(tmp_path, cli):
    data = write_jsonl(tmp_path / "d", rows([["joy"], ["anger"]]), rows([["joy"], ["anger"], ["anger", "awe"]]))
    error = one_line_error(cli("fit", *args(data, tmp_path), check=False))
    assert "split 'test' column 'labels': row 2: label 'awe' is not one of the training split's classes" in error
    assert not (tmp_path / "lightning_logs").exists()


def test_a_csv_cell_whose_separator_is_ambiguous_is_refused(tmp_path, cli):
    folder = tmp_path / "d"
    folder.mkdir()
    for split in ("train", "test"):
        cells = ["joy", "anger|fear", "joy,anger"] * 10
        pd.DataFrame({"text": [f"comment {i}" for i in range(30)], "labels": cells}).to_csv(
            folder / f"{split}.csv", index=False
        )
    error = one_line_error(cli("fit", *args(folder, tmp_path, "--data.multi_label", "true"), check=False))
    assert "row 2's cell 'joy,anger' holds ',', but labels are separated by '|'" in error


@pytest.mark.parametrize("given, what", [("1.5", "in [0, 1]"), ("[0.5, 0.5]", "4 numbers")])
def test_thresholds_outside_0_1_or_not_one_per_label_are_refused_before_training(emotions, tmp_path, cli, given, what):
    error = one_line_error(cli("fit", *args(emotions, tmp_path, "--model.thresholds", given), check=False))
    assert error.startswith("error: model.thresholds: expected one number or 4 numbers") and what in error
    assert not (tmp_path / "lightning_logs").exists()


def test_single_labels_mixing_ids_and_names_are_refused_naming_both(tmp_path, cli):
    data = write_jsonl(tmp_path / "d", [{"text": f"comment {i}", "label": [1, "pos", 0][i % 3]} for i in range(30)])
    error = one_line_error(cli("fit", *tiny_cli_args(data, tmp_path), check=False))
    assert "mixes class ids ('0', row 2) and class names ('pos', row 1)" in error


def test_validate_and_the_sanity_check_never_choose_thresholds(trained, emotions):
    from rnn_lightning.training.cli import RNNLightningCLI

    best = sorted(ckpt_dir(trained).glob("best-*.ckpt"))[0]
    kept = torch.load(best, weights_only=True)["task"]["thresholds"]
    cli = RNNLightningCLI(args=["validate", *args(emotions, trained), "--ckpt_path", str(best)])
    assert cli.model.task.thresholds.tolist() == pytest.approx(kept)  # the checkpoint's, not validate's choice
    task = make_task(LABELS, multi_label=True)  # a validation pass outside fit's (``learning`` off): no choice
    scores = MultiLabelScores(task, "val", keep_scores=True, choose=True)
    scores.update(torch.tensor([[0.9, 0.2, 0.2, 0.2]] * 4), torch.tensor([[1, 0, 0, 0]] * 4))
    scores.compute()
    assert task.thresholds.tolist() == [0.5] * 4
    task.learning = True
    scores.update(torch.tensor([[0.9, 0.2, 0.2, 0.2]] * 4), torch.tensor([[1, 0, 0, 0]] * 4))
    scores.compute()
    assert task.thresholds[0].item() < 0.5  # fit's validation: the lowest threshold with the best F1


def test_tuning_a_multi_label_fit_follows_val_macro_f1_unless_told(emotions, tmp_path):
    from rnn_lightning.training import tuning

    config = tuning.check_fit_args(args(emotions, tmp_path), {})
    settled = tuning.settle_metric({"metric": None, "direction": None}, config)
    assert (settled["metric"], settled["direction"]) == ("val/macro_f1", "maximize")
