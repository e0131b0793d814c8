"""The validation set carved out of the training texts when a source has none: a seeded, stratified share."""

from typing import Literal, get_args

import numpy as np

from rnn_lightning.errors import InputError

ValSplit = Literal["random", "blocks"]
VAL_SPLITS = get_args(ValSplit)
BLOCK = 250  # reviews per block of the ``blocks`` split


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, how: ValSplit = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val): ``fraction`` of each class goes to val, chosen by a seeded shuffle.

    ``random`` draws single reviews. ``blocks`` draws runs of ``BLOCK`` consecutive reviews of a
    class: IMDB lists a movie's reviews largely next to each other (file-id order), so movies mostly land
    on one side and validation, like test (whose movies are disjoint from train's), rewards what
    carries over to unseen movies rather than memorised titles and names.
    The validation indices come in a seeded random order, so that any first batches (e.g. the
    sanity check's) hold both classes even when the source is sorted by label, as IMDB's is.
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        want = int(round(fraction * len(members)))
        if how == "blocks":
            blocks = np.array_split(members, max(1, -(-len(members) // BLOCK)))
            chosen = rng.permutation(len(blocks))[: max(1, int(round(fraction * len(blocks))))]
            val.append(np.concatenate([blocks[b] for b in sorted(chosen)])[:want])
        else:
            val.append(rng.permutation(members)[:want])
    val_idx = rng.permutation(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    fit_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return fit_idx, val_idx


def fit_val_rows(labels: np.ndarray, fraction: float, seed: int, how: ValSplit) -> tuple[np.ndarray, np.ndarray]:
    """``stratified_split``, refused when either part lacks a class (too few texts for ``fraction``, or too
    many held out): validation would score a class it never sees, or training would see no text of one."""
    fit_idx, val_idx = stratified_split(labels, fraction, seed, how)
    classes = len(np.unique(labels))
    for part, idx, advice in (("validation", val_idx, "raise it"), ("training", fit_idx, "lower it")):
        if len(idx) == 0 or len(np.unique(labels[idx])) < classes:
            raise InputError(
                f"data.val_fraction: {fraction} of {len(labels)} training texts leaves a {part} set "
                f"without every class; {advice} or use more data"
            )
    return fit_idx, val_idx
