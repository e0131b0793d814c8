"""Using a trained checkpoint: predict on raw text through the CLI and from Python, export, TensorBoard."""

import csv
import io
import json
import re
import sys

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rnn_lightning.errors import InputError
from rnn_lightning.inference import Predictor
from rnn_lightning.serving import ExportedPredictor
from rnn_lightning.text import readers
from rnn_lightning.training import prediction_writer
from rnn_lightning.training.cli import main
from tests.helpers import one_line_error, tiny_cli_args

REVIEWS = [
    "A wonderful, brilliant movie. Loved it.",
    "terrible boring awful film",
    "the plot was superb <br /><br />great",
]


@pytest.fixture(scope="module")
def trained(parquet_dir, tmp_path_factory):
    """A tiny model (with word-pair embeddings and an n-gram bag) fitted and tested once through the CLI:
    (run directory, base CLI args, best checkpoint)."""
    root = tmp_path_factory.mktemp("trained")
    args = [
        *tiny_cli_args(parquet_dir, root),
        "--model.pooling", "max",
        "--model.bigram_buckets", "101",  # the word-pair path goes through predict and export too
        "--model.ngram_buckets", "4099",  # and the n-gram bag, as the preset has it (few collisions)
        "--model.ngram_nb", "true",
        "--optimizer.init_args.lr", "0.02",
        "--trainer.max_epochs", "8",
    ]  # fmt: skip
    main(["fit", *args])
    run_dir = root / "lightning_logs" / "version_0"
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    main(["test", *args, "--ckpt_path", str(best)])
    return run_dir, args, best


def predict_cli(
    cli, trained, predict_path: str, output, stdin: bytes | None = None, monkeypatch=None, batch_size: int = 16
) -> list[dict]:
    run_dir, _, best = trained
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    cli("predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(best), "--data.batch_size",
        str(batch_size), "--data.predict_path", predict_path, "--prediction_writer.output", str(output))  # fmt: skip
    if output.suffix == ".jsonl":
        return [json.loads(line) for line in output.read_text().splitlines()]
    with open(output, newline="") as f:
        return list(csv.DictReader(f))


def test_text_file_with_empty_bad_and_huge_lines(cli, trained, tmp_path):
    lines = [
        REVIEWS[0].encode(),
        b"",
        b"   \t",
        b"\xff\xfe not utf-8 but great",
        REVIEWS[1].encode(),
        (b"boring " * 150_000).strip(),
    ]
    (tmp_path / "in.txt").write_bytes(b"\n".join(lines) + b"\n")
    rows = predict_cli(cli, trained, str(tmp_path / "in.txt"), tmp_path / "out.csv")
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5", "6"]  # every input line, in order
    assert [r["error"] for r in rows] == ["", "empty review", "empty review", "invalid UTF-8 replaced", "", ""]
    assert list(rows[0]) == ["id", "label", "prob", "prob_0", "prob_1", "error"]  # classes "0", "1" of the data
    assert rows[1]["prob_1"] == rows[1]["prob"] == rows[1]["label"] == ""
    assert len(lines[5]) > 1_000_000 and rows[5]["label"] == "0"  # a 1 MB review is classified from its end
    predictor = Predictor.from_checkpoint(str(trained[2]))
    expected = predictor([REVIEWS[0], REVIEWS[1]])
    for row, want in ((rows[0], expected[0]), (rows[4], expected[1])):
        assert row["label"] == want["label"] and float(row["prob"]) == pytest.approx(want["prob"], abs=1e-6)
        assert float(row["prob_1"]) == pytest.approx(want["probs"]["1"], abs=1e-6)
        assert float(row["prob_0"]) + float(row["prob_1"]) == pytest.approx(1, abs=1e-5)
    assert rows[0]["label"] == "1" and rows[4]["label"] == "0"  # the tiny model learned the sentiment words
    assert not list(tmp_path.glob(".out.csv.*"))  # no temporary file left behind


def test_predicting_text_reads_no_dataset(cli, trained, tmp_path):
    """The checkpoint brings the tokenizer and the classes: a dataset that is not there is never read."""
    run_dir, _, best = trained
    (tmp_path / "in.txt").write_text(REVIEWS[0] + "\n")
    cli("predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(best),
        "--data.dataset", str(tmp_path / "not_here"), "--data.predict_path", str(tmp_path / "in.txt"),
        "--prediction_writer.output", str(tmp_path / "out.csv"))  # fmt: skip
    with open(tmp_path / "out.csv", newline="") as f:
        assert [r["label"] for r in csv.DictReader(f)] == ["1"]


def test_input_read_a_chunk_at_a_time_gives_the_same_file(cli, trained, tmp_path, monkeypatch):
    """Chunks of two rows (empty rows and a bad one among them, split across chunks) against one chunk."""
    lines = [REVIEWS[0], "", REVIEWS[1], "  ", "", REVIEWS[2], "great", ""]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    whole = predict_cli(cli, trained, str(tmp_path / "in.txt"), tmp_path / "whole.csv")
    monkeypatch.setattr(readers, "CHUNK_ROWS", 2)
    chunked = predict_cli(cli, trained, str(tmp_path / "in.txt"), tmp_path / "chunked.csv")
    assert chunked == whole and len(whole) == len(lines)
    monkeypatch.setattr(prediction_writer, "MERGE_ROWS", 2)  # the predictions merged into the file two at a time
    merged = predict_cli(cli, trained, str(tmp_path / "in.txt"), tmp_path / "merged.csv", batch_size=3)
    assert merged == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked.csv", "in.txt", "merged.csv", "whole.csv"]
    assert [r["error"] == "empty review" for r in whole] == [not line.strip() for line in lines]


@pytest.mark.parametrize("content, errors", [("", []), ("\n  \n\t\n", ["empty review"] * 3)])
def test_input_with_nothing_to_classify_still_replaces_the_output(cli, trained, tmp_path, content, errors):
    """No row with text (an empty file, blank lines): no batch runs, yet the file has one row per
    input row, and an older file at that path is replaced, not left looking like this run's."""
    (tmp_path / "in.txt").write_text(content)
    (tmp_path / "out.csv").write_text("id,label\nold,pos\n")
    rows = predict_cli(cli, trained, str(tmp_path / "in.txt"), tmp_path / "out.csv")
    assert [r["error"] for r in rows] == errors and all(r["label"] == "" for r in rows)


def test_csv_field_that_is_not_utf8_is_flagged_and_classified(cli, trained, tmp_path):
    (tmp_path / "in.csv").write_bytes(b'id,text\na,"great, \xff superb"\nb,\n')
    rows = predict_cli(cli, trained, str(tmp_path / "in.csv"), tmp_path / "out.csv")
    assert [(r["id"], r["error"], bool(r["label"])) for r in rows] == [
        ("a", "invalid UTF-8 replaced", True),
        ("b", "empty review", False),
    ]


def test_jsonl_line_without_text_is_one_line_naming_it(cli, trained, tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "great"}) + "\n" + json.dumps({"review": "bad"}) + "\n")
    run_dir, _, best = trained
    result = cli("predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(best),
                 "--data.predict_path", str(tmp_path / "in.jsonl"), check=False)  # fmt: skip
    assert "line 2" in one_line_error(result) and "'review'" in one_line_error(result)


def test_tables_folders_and_stdin_give_the_same_probabilities(cli, trained, tmp_path, monkeypatch):
    pd.DataFrame({"id": ["a", "b", "c"], "text": REVIEWS}).to_csv(tmp_path / "in.csv", index=False)
    pd.DataFrame({"text": REVIEWS}).to_parquet(tmp_path / "in.parquet")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in REVIEWS))
    folder = tmp_path / "reviews" / "pos"
    folder.mkdir(parents=True)
    for i, text in enumerate(REVIEWS):
        (folder / f"{i}_9.txt").write_text(text)
    results = {
        "csv": predict_cli(cli, trained, str(tmp_path / "in.csv"), tmp_path / "csv.jsonl"),
        "parquet": predict_cli(cli, trained, str(tmp_path / "in.parquet"), tmp_path / "parquet.csv"),
        "jsonl": predict_cli(cli, trained, str(tmp_path / "in.jsonl"), tmp_path / "jsonl.csv"),
        "folder": predict_cli(cli, trained, str(tmp_path / "reviews"), tmp_path / "folder.csv"),
        "stdin": predict_cli(
            cli, trained, "-", tmp_path / "stdin.csv", stdin="\n".join(REVIEWS).encode(), monkeypatch=monkeypatch
        ),
    }
    assert [r["id"] for r in results["csv"]] == ["a", "b", "c"]
    assert [r["id"] for r in results["folder"]] == ["pos/0_9.txt", "pos/1_9.txt", "pos/2_9.txt"]
    reference = [float(r["prob_1"]) for r in results["stdin"]]
    for name, rows in results.items():
        assert [float(r["prob_1"]) for r in rows] == pytest.approx(reference, abs=1e-6), name


def test_table_without_text_column_is_refused(cli, trained, tmp_path):
    pd.DataFrame({"review": REVIEWS}).to_csv(tmp_path / "in.csv", index=False)
    run_dir, _, best = trained
    result = cli("predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(best),
                 "--data.predict_path", str(tmp_path / "in.csv"), check=False)  # fmt: skip
    assert "data.predict_path" in one_line_error(result)


def test_unwritable_prediction_file_is_refused_before_predicting(cli, trained, tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "in.txt").write_text("great\n")
    run_dir, _, best = trained
    result = cli("predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(best),
                 "--data.predict_path", str(tmp_path / "in.txt"),
                 "--prediction_writer.output", str(tmp_path / "a_file" / "out.csv"), check=False)  # fmt: skip
    line = one_line_error(result)
    assert "prediction_writer.output" in line and "a_file" in line
    assert "Predicting" not in result.output


def test_sigterm_stops_predict_nonzero_and_writes_nothing(cli, trained, tmp_path):
    (tmp_path / "in.txt").write_text("great film\n" * 100)
    run_dir, _, best = trained
    result = cli("predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(best),
                 "--data.predict_path", str(tmp_path / "in.txt"), "--data.batch_size", "10",
                 "--prediction_writer.output", str(tmp_path / "out.csv"),
                 "--trainer.callbacks+=tests.helpers.SigtermAtPredict", check=False)  # fmt: skip
    assert result.code == 128 + 15 and "Traceback" not in result.output
    assert "Stopped by SIGTERM; nothing was written" in result.output
    assert not (tmp_path / "out.csv").exists() and list(tmp_path.iterdir()) == [tmp_path / "in.txt"]


def test_python_api_and_export_round_trip(trained, tmp_path):
    predictor = Predictor.from_checkpoint(str(trained[2]))
    out = predictor([*REVIEWS, "  "])
    probs = [o["probs"]["1"] for o in out[:3]]
    assert all(0 < p < 1 for p in probs) and out[3] == {"label": None, "prob": None, "probs": None}
    assert all(o["prob"] == max(o["probs"].values()) and o["probs"][o["label"]] == o["prob"] for o in out[:3])
    predictor.export(str(tmp_path / "exported"))
    exported = ExportedPredictor(str(tmp_path / "exported"))
    served = exported([*REVIEWS, "  "])
    assert exported.class_names == ["0", "1"] and served[3]["label"] is None
    assert [o["probs"]["1"] for o in served[:3]] == pytest.approx(probs, abs=1e-5)
    assert [o["label"] for o in served[:3]] == [o["label"] for o in out[:3]]
    assert exported(REVIEWS[:1])[0]["probs"]["1"] == pytest.approx(probs[0], abs=1e-5)  # batch of 1


def test_export_into_an_unwritable_place_is_refused_before_tracing(trained, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="export: out_dir: cannot create .* is a file, not a folder"):
        Predictor.from_checkpoint(str(trained[2])).export(str(tmp_path / "a_file" / "exported"))


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="ckpt_path: .* is not a readable checkpoint"):
        Predictor.from_checkpoint(str(tmp_path / "junk.ckpt"))
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="is not an rnn-lightning checkpoint"):
        Predictor.from_checkpoint(str(tmp_path / "other.ckpt"))


def test_tensorboard_has_the_scalars_hparams_and_test_images(trained):
    run_dir = trained[0]
    fit = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    fit.Reload()
    scalars = set(fit.Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/f1", "val/auroc", "lr-Adam", "hp/best_val_acc"):
        assert tag in scalars, tag
    assert fit.Scalars("train/loss")[-1].value < fit.Scalars("train/loss")[0].value  # it learned
    hparams = fit.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    test_run = run_dir.parent / "version_1"  # `test` writes a run of its own
    test = EventAccumulator(str(test_run), size_guidance={"images": 0})
    test.Reload()
    assert {"test/confusion_matrix", "test/roc"} <= set(test.Tags()["images"])
    assert {"test/acc", "test/auroc"} <= set(test.Tags()["scalars"])


def test_explain_writes_each_rows_attributions_and_an_html_report(cli, trained, tmp_path):
    """The n-gram bag and word pairs of the tiny model are in the scores; they still sum to the logit change."""
    run_dir, _, best = trained
    lines = [REVIEWS[0], "", "<img src=x onerror=alert(1)> awful", REVIEWS[2]]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    cli("predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(best), "--data.batch_size", "2",
        "--data.predict_path", str(tmp_path / "in.txt"), "--prediction_writer.output", str(out),
        "--prediction_writer.explain", "true")  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    plain = predict_cli(cli, trained, str(tmp_path / "in.txt"), tmp_path / "plain.jsonl")
    assert [r["label"] for r in rows] == [r["label"] for r in plain] and rows[1]["error"] == "empty review"
    for row in (rows[0], rows[2], rows[3]):
        assert row["target"] == row["label"] and row["words"]
        total = sum(w["score"] for w in row["words"])
        assert total == pytest.approx(row["logit"] - row["baseline_logit"], abs=1e-3 * max(1.0, abs(total)))
    assert [w["token"] for w in rows[0]["words"]][:2] == ["a", "wonderful"]
    report = (tmp_path / "out.html").read_text()
    assert "<img src=x" not in report and '"mode": "report"' in report and "wonderful" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.html", "out.jsonl", "plain.jsonl"]
    # the page draws each record's decision: every class's probs by name, the chosen label (tests/serving/test_page_browser.py)
    records = json.loads(re.search(r'<script type="application/json" id="config">(.*?)</script>', report, re.S)[1])
    records = records["records"]
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    for record, row in zip(records, rows, strict=True):
        assert record["error"] == row["error"] and record["label"] == row["label"]
        if row["label"] is None:
            assert record["probs"] is None and "words" not in record
        else:
            assert record["probs"] == pytest.approx({name: row[f"prob_{name}"] for name in ("0", "1")}, abs=1e-6)
            assert record["target"] == row["target"] and record["words"] == row["words"]


def _explain(cli, trained, predict_path, output, *args: str):
    run_dir, _, best = trained
    return cli("predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(best),
               "--data.predict_path", str(predict_path), "--prediction_writer.output", str(output),
               "--prediction_writer.explain", "true", *args, check=False)  # fmt: skip


@pytest.mark.parametrize("report", [None, "sub/../reviews.html"])
def test_a_report_that_would_replace_the_input_is_refused_before_predicting(cli, trained, tmp_path, report):
    """Default report: the output's name with .html, here the input's name."""
    (tmp_path / "reviews.html").write_text("great\n")
    (tmp_path / "sub").mkdir()
    args = [] if report is None else ["--prediction_writer.report", str(tmp_path / report)]
    result = _explain(cli, trained, tmp_path / "reviews.html", tmp_path / "reviews.jsonl", *args)
    line = one_line_error(result)
    assert "prediction_writer.report" in line and "data.predict_path" in line and "reviews.html" in line
    assert "Predicting" not in result.output
    assert (tmp_path / "reviews.html").read_text() == "great\n" and not (tmp_path / "reviews.jsonl").exists()


def test_a_report_that_is_the_output_is_refused_before_predicting(cli, trained, tmp_path):
    """Only through a link: their suffixes differ."""
    (tmp_path / "in.txt").write_text("great\n")
    (tmp_path / "out.jsonl").write_text("kept\n")
    (tmp_path / "out.html").symlink_to(tmp_path / "out.jsonl")
    result = _explain(cli, trained, tmp_path / "in.txt", tmp_path / "out.jsonl")
    line = one_line_error(result)
    assert "prediction_writer.report" in line and "prediction_writer.output" in line
    assert "Predicting" not in result.output and (tmp_path / "out.jsonl").read_text() == "kept\n"


def test_a_report_in_a_folder_that_is_a_file_is_refused_before_predicting(cli, trained, tmp_path):
    (tmp_path / "in.txt").write_text("great\n")
    (tmp_path / "a_file").write_text("x")
    result = _explain(cli, trained, tmp_path / "in.txt", tmp_path / "out.jsonl",
                      "--prediction_writer.report", str(tmp_path / "a_file" / "r.html"))  # fmt: skip
    line = one_line_error(result)
    assert "prediction_writer.report" in line and "a_file" in line and "is a file" in line
    assert "Predicting" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "in.txt"]


def test_explain_needs_a_jsonl_output(cli, trained, tmp_path):
    (tmp_path / "in.txt").write_text("great\n")
    result = _explain(cli, trained, tmp_path / "in.txt", tmp_path / "out.csv")
    assert "explain writes the scores as JSON, to a .jsonl path" in one_line_error(result)
    assert "Predicting" not in result.output and sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
