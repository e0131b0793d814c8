"""The linear bag-of-words models a user would pick instead, fitted and tested on the same splits.

    pip install -e ".[bench]"
    python -m bench.linear_baselines --data ../shared/imdb

- TF-IDF of words and word pairs (sublinear tf, min_df 2) + logistic regression (C=8);
- NBSVM-style (Wang & Manning 2012): binary 1-3-gram counts scaled by naive-Bayes log-count ratios,
  then logistic regression (two classes only; with more, e.g. ../shared/sst5, only the first runs).

Both train on the whole training split (no model selection: their settings are fixed) and are tested
once on the test split. Prints one line per model with test accuracy and wall time. scikit-learn is
a benchmark-only extra, never imported by the package.
"""

import argparse
import re
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def load(data: Path, split: str) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(data / f"{split}.parquet", columns=["text", "label"])
    texts = [re.sub(r"<br\s*/?>", " ", t) for t in table.column("text").to_pylist()]
    return texts, np.asarray(table.column("label").to_pylist())


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a folder with train.parquet and test.parquet")
    args = p.parse_args()
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
