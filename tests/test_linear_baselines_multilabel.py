"""bench/linear_baselines.py on multi-label data: per-label thresholds chosen on validation, and the whole
command on a tiny GoEmotions-shaped parquet folder written under ``tmp_path``."""

import json
import re
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("sklearn")

from sklearn.metrics import f1_score  # noqa: E402

from bench import linear_baselines  # noqa: E402

NAMES = ["joy", "anger", "fear"]
WORDS = {0: "happy", 1: "furious", 2: "scared"}  # each label's marker word in the synthetic texts


def write_multilabel_splits(folder, with_names: bool = True) -> None:
    """train/validation/test of texts whose marker words give their labels (a list of ids, one to two),
    with the `huggingface` ClassLabel feature in the schema metadata as `datasets` writes it."""
    rng = np.random.default_rng(0)
    filler = "the a day today went some thing really was it".split()
    features = {
        "text": {"dtype": "string", "_type": "Value"},
        "labels": {"feature": {"names": NAMES, "_type": "ClassLabel"}, "_type": "List"},
    }
    for split, n in (("train", 120), ("validation", 40), ("test", 40)):
        texts, labels = [], []
        for _ in range(n):
            ids = sorted(rng.choice(3, size=rng.integers(1, 3), replace=False).tolist())
            words = [WORDS[i] for i in ids] + rng.choice(filler, size=5).tolist()
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(ids)
        table = pa.table({"text": texts, "labels": pa.array(labels, pa.list_(pa.int64()))})
        if with_names:
            table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, folder / f"{split}.parquet")


def test_label_thresholds_maximise_validation_f1():
    # label 0: positives at 0.30, 0.40, 0.60 and negatives at 0.10, 0.20, 0.35, 0.70 score F1 6/8 for any
    # threshold in (0.20, 0.30] and less elsewhere, so the lowest such grid point, 0.21;
    # label 1: positives far above negatives, any threshold in (0.20, 0.80] is perfect: 0.21 again;
    # label 2 has no positive and keeps 0.5
    proba = np.array([[0.30, 0.90, 0.1], [0.40, 0.80, 0.2], [0.60, 0.85, 0.3],
                      [0.10, 0.20, 0.4], [0.20, 0.10, 0.6], [0.35, 0.05, 0.7], [0.70, 0.15, 0.9]])  # fmt: skip
    y = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=bool)
    thresholds = linear_baselines.label_thresholds(y, proba)
    np.testing.assert_allclose(thresholds, [0.21, 0.21, 0.5])
    for label in (0, 1):  # the chosen threshold scores the best F1 of the whole grid, by sklearn's count
        grid_f1 = [f1_score(y[:, label], proba[:, label] >= t) for t in linear_baselines.THRESHOLDS]
        assert f1_score(y[:, label], proba[:, label] >= thresholds[label]) == pytest.approx(max(grid_f1))
    assert f1_score(y[:, 0], proba[:, 0] >= thresholds[0]) == pytest.approx(0.75)


@pytest.mark.parametrize("with_names", [True, False])
def test_multilabel_command_prints_figures_in_range(tmp_path, monkeypatch, capsys, with_names):
    write_multilabel_splits(tmp_path, with_names)
    monkeypatch.setattr(sys, "argv", ["linear_baselines", "--data", str(tmp_path)])
    linear_baselines.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "tfidf_word_pairs_ovr_logreg_label_thresholds",
        "tfidf_word_pairs_ovr_logreg_threshold_0.5",
        "thresholds",
    ]
    for line in lines[:2]:
        test_part = line.split(": test ", 1)[1]
        figures = dict(re.findall(r"(macro-F1|micro-F1|subset accuracy|mean average precision) ([0-9.]+)", test_part))
        assert len(figures) == 4, line
        assert all(0 <= float(value) <= 1 for value in figures.values()), line
    names = NAMES if with_names else ["0", "1", "2"]  # without the ClassLabel feature, the ids
    assert [pair.split(" ")[0] for pair in lines[2].split(": ", 1)[1].split(", ")] == names
