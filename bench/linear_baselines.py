"""The linear bag-of-words models a user would pick instead, fitted and tested on the same splits.

    pip install -e ".[bench]"
    python -m bench.linear_baselines --data ../shared/imdb
    python -m bench.linear_baselines --data ../shared/goemotions  # multi-label: a list column of label ids

With a `label` column (one class per text):

- TF-IDF of words and word pairs (sublinear tf, min_df 2) + logistic regression (C=8);
- NBSVM-style (Wang & Manning 2012): binary 1-3-gram counts scaled by naive-Bayes log-count ratios,
  then logistic regression (two classes only; with more, e.g. ../shared/sst5, only the first runs).

Both train on the whole training split (no model selection: their settings are fixed) and are tested
once on the test split. Prints one line per model with test accuracy and wall time.

With a list column of label ids instead (multi-label, e.g. `labels` of ../shared/goemotions; the label
names come from the parquet's `huggingface` ClassLabel feature, else they are the ids):

- TF-IDF of words and word pairs as above + one-vs-rest logistic regression, one binary model per label.
  C is chosen from C_GRID by validation macro-F1 (each label at its best threshold on validation), each
  label's threshold from THRESHOLDS by that label's validation F1; then the test split is read once;
- the same fitted model with one threshold of 0.5 for every label.

Prints per model test macro-F1 and micro-F1 over the labels, subset accuracy (every label of a text
right) and mean average precision over the labels (threshold-free, so the same for both), and wall time.

Nothing is random: liblinear's primal solver draws no random numbers (its coefficients are bitwise the
same for any random_state), so there is no seed. scikit-learn is a benchmark-only extra, never imported
by the package.
"""

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

C_GRID = (1, 2, 4, 8, 16)  # small on purpose: one fit of every label's model per C
THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)  # 0.01, 0.02, ..., 0.99: a label's candidate thresholds


def load(data: Path, split: str) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(data / f"{split}.parquet", columns=["text", "label"])
    return clean(table.column("text").to_pylist()), np.asarray(table.column("label").to_pylist())


def clean(texts: list[str]) -> list[str]:
    return [re.sub(r"<br\s*/?>", " ", t) for t in texts]


def multilabel_column(data: Path) -> str | None:
    """The list column of label ids in train.parquet; None where there is a single-label `label` column."""
    schema = pq.read_schema(data / "train.parquet")
    if "label" in schema.names:
        return None
    lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
    if len(lists) != 1:
        raise SystemExit(
            f"{data / 'train.parquet'}: no `label` column and {len(lists)} list columns ({lists}), not one"
        )
    return lists[0]


def label_names(data: Path, column: str) -> list[str] | None:
    """The names of the ClassLabel inside the list column, from the `huggingface` features JSON that
    `datasets` stores in the parquet schema's metadata; None where that is absent."""
    metadata = pq.read_schema(data / "train.parquet").metadata or {}
    if b"huggingface" not in metadata:
        return None
    feature = json.loads(metadata[b"huggingface"]).get("info", {}).get("features", {}).get(column, {})
    return feature.get("feature", {}).get("names")  # `List`/`Sequence` of a `ClassLabel`


def load_multilabel(data: Path, split: str, column: str, n_labels: int) -> tuple[list[str], np.ndarray]:
    """Texts and their labels as a 0/1 indicator matrix of shape (N, n_labels)."""
    table = pq.read_table(data / f"{split}.parquet", columns=["text", column])
    ids = table.column(column).to_pylist()
    y = np.zeros((len(ids), n_labels), dtype=bool)
    for row, labels in enumerate(ids):
        y[row, labels] = True
    return clean(table.column("text").to_pylist()), y


def tfidf_logreg(train, test) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train, x_test = vec.fit_transform(train[0]), None
    model = LogisticRegression(C=8, max_iter=2000, solver="liblinear")
    if len(np.unique(train[1])) > 2:  # one-vs-rest, as liblinear itself did for K > 2
        model = OneVsRestClassifier(model)
    model.fit(x_train, train[1])
    x_test = vec.transform(test[0])
    return float((model.predict(x_test) == test[1]).mean())


def nbsvm(train, test, alpha: float = 1.0, n_features: int | None = None) -> float:
    """``n_features``: hash the n-grams into that many columns (None: one column per n-gram)."""
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer
    from sklearn.linear_model import LogisticRegression

    pattern = r"(?u)\b\w+\b|[^\w\s]"
    vec = CountVectorizer(ngram_range=(1, 3), binary=True, token_pattern=pattern)
    if n_features:
        vec = HashingVectorizer(n_features=n_features, ngram_range=(1, 3), binary=True, token_pattern=pattern,
                                alternate_sign=False, norm=None)  # fmt: skip
    x_train = vec.fit_transform(train[0]).tocsr()
    y = train[1]
    p = alpha + np.asarray(x_train[y == 1].sum(0)).ravel()
    q = alpha + np.asarray(x_train[y == 0].sum(0)).ravel()
    r = np.log((p / p.sum()) / (q / q.sum()))  # naive-Bayes log-count ratio per n-gram
    model = LogisticRegression(C=0.1, max_iter=2000, solver="liblinear").fit(x_train.multiply(r).tocsr(), y)
    x_test = vec.transform(test[0]).multiply(r).tocsr()
    return float((model.predict(x_test) == test[1]).mean())


def label_thresholds(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per label, the threshold of THRESHOLDS with the best F1 on (y, proba), both (N, L); the lowest one
    where several tie. A label without a positive (every threshold scores F1 0) keeps 0.5."""
    pred = proba[:, :, None] >= THRESHOLDS  # (N, L, T)
    tp = (pred & y[:, :, None]).sum(0)  # (L, T)
    fp = pred.sum(0) - tp
    fn = y.sum(0)[:, None] - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)  # (L, T)
    return np.where(y.any(0), THRESHOLDS[f1.argmax(1)], 0.5)


def multilabel_scores(y: np.ndarray, proba: np.ndarray, thresholds: np.ndarray | float) -> dict[str, float]:
    """Macro-F1 over the labels (a label never true nor predicted scores 0), micro-F1, subset accuracy
    and mean average precision over the labels that have a positive (AP is undefined without one)."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    pred = proba >= thresholds
    present = y.any(0)
    return {
        "macro-F1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "micro-F1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "subset accuracy": float(accuracy_score(y, pred)),
        "mean average precision": float(average_precision_score(y[:, present], proba[:, present], average="macro")),
    }


def tfidf_ovr_logreg_multilabel(train, valid, test) -> dict:
    """The model with C chosen on validation; its test probabilities and validation-chosen thresholds."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train, x_valid = vec.fit_transform(train[0]), vec.transform(valid[0])
    best = None
    for c in C_GRID:
        model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000, solver="liblinear"), n_jobs=1)
        proba = model.fit(x_train, train[1]).predict_proba(x_valid)  # (N_valid, L)
        thresholds = label_thresholds(valid[1], proba)
        valid_f1 = multilabel_scores(valid[1], proba, thresholds)["macro-F1"]
        if best is None or valid_f1 > best["valid_macro_f1"]:  # the smallest C of a tie
            best = {"C": c, "model": model, "thresholds": thresholds, "valid_macro_f1": valid_f1}
    best["test_proba"] = best.pop("model").predict_proba(vec.transform(test[0]))  # the test split, read once
    return best


def main_multilabel(data: Path, column: str) -> None:
    splits = ("train", "validation", "test")
    names = label_names(data, column)
    if names is None:  # the ids themselves, up to the largest in any split
        ids = [pq.read_table(data / f"{split}.parquet", columns=[column]).column(column) for split in splits]
        names = [str(i) for i in range(1 + max(pc.max(pc.list_flatten(col)).as_py() or 0 for col in ids))]
    train, valid, test = (load_multilabel(data, split, column, len(names)) for split in splits)
    t0 = time.perf_counter()
    fitted = tfidf_ovr_logreg_multilabel(train, valid, test)
    seconds = time.perf_counter() - t0
    chosen_by = (
        f"C={fitted['C']} of {', '.join(map(str, C_GRID))} by validation macro-F1 {fitted['valid_macro_f1']:.4f}"
    )
    rows = [
        ("tfidf_word_pairs_ovr_logreg_label_thresholds", f"{chosen_by}; per-label thresholds of 0.01..0.99 step 0.01",
         fitted["thresholds"], f"{seconds:.0f} s wall"),
        ("tfidf_word_pairs_ovr_logreg_threshold_0.5", f"the same fit, C={fitted['C']}", 0.5,
         f"the same fit's {seconds:.0f} s wall"),
    ]  # fmt: skip
    for name, how, thresholds, wall in rows:
        scores = multilabel_scores(test[1], fitted["test_proba"], thresholds)
        figures = ", ".join(f"{key} {value:.4f}" for key, value in scores.items())
        print(f"{name} ({how}): test {figures} ({wall})", flush=True)
    chosen = ", ".join(f"{name} {t:.2f}" for name, t in zip(names, fitted["thresholds"], strict=True))
    print(f"thresholds chosen on validation: {chosen}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    help_data = "a folder with train.parquet and test.parquet (and validation.parquet where multi-label)"
    p.add_argument("--data", type=Path, required=True, help=help_data)
    args = p.parse_args()
    column = multilabel_column(args.data)
    if column is not None:
        return main_multilabel(args.data, column)
    train, test = load(args.data, "train"), load(args.data, "test")
    models = [("tfidf_word_pairs_logreg", tfidf_logreg), ("nbsvm_1to3grams_logreg", nbsvm)]
    if len(np.unique(train[1])) > 2:  # NBSVM's log-count ratio is defined for two classes
        models = models[:1]
    for name, fit in models:
        t0 = time.perf_counter()
        acc = fit(train, test)
        print(f"{name}: test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s wall)", flush=True)


if __name__ == "__main__":
    main()
