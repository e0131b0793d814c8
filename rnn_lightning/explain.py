"""Which words decided: integrated gradients of a class's logit over the words a ``TextRNN`` read.

Method: integrated gradients (Sundararajan et al. 2017) on the first layer's input (the word embeddings, plus
the word-pair embeddings where the network has them), from the baseline "every read word replaced by padding"
(the padding's embedding, zero) to the text, by Gauss-Legendre quadrature. It is the standard
gradient-based attribution with a completeness property a user can check: the scores sum to the logit's
change from the baseline. The hashed n-gram bag (``ngram_buckets``), a linear model of the token ids that
has no embedding to integrate over, is attributed exactly instead: each n-gram's term in equal shares to
its words. So for every text

    sum(scores) = logit(text) - logit(baseline),  baseline = the embeddings at zero, no n-gram bag,

up to the quadrature's error, returned as ``delta``: ``explain_ids`` doubles the nodes (``STEPS`` to
``MAX_STEPS``) for the texts whose delta is past ``TOLERANCE``. The logit of a class is the task's
(``Task.class_logit``): a binary network's "logit of class 0" is minus its logit (the log-odds of class 0);
with K > 2 classes it is the class's own logit.

Plain PyTorch, no Lightning: the server and the prediction writer share it.
"""

import numpy as np
import torch
from torch import Tensor

from rnn_lightning.tasks import Task

METHOD = "integrated gradients on the word embeddings from the padding baseline (zero), Gauss-Legendre"
STEPS = 32  # quadrature nodes to start with; doubled for the texts whose delta is past TOLERANCE ...
MAX_STEPS = 256  # ... up to this many
TOLERANCE = 0.01  # |delta| allowed: this many logits, or this share of the logit change if larger


def within_tolerance(delta: Tensor, change: Tensor) -> Tensor:
    """(B,) bools: |delta| <= TOLERANCE * max(1, |change|)."""
    return delta.abs() <= TOLERANCE * change.abs().clamp(min=1.0)


def explain_ids(net, ids: Tensor, task: Task, targets: list[int | None] | None = None) -> list[dict]:
    """Token ids (B, T) -> per text the task's decision (``Task.decision``) and, for ``target`` (a class
    name; ``Task.explained`` of the decision where ``targets`` gives None), ``positions`` (the read, unpadded
    steps), ``scores`` (one per position), ``logit``, ``baseline_logit`` and ``delta`` (see ``integrated_gradients``)."""
    with torch.inference_mode(False):  # Lightning's predict loop runs in inference mode; this needs gradients
        ids = ids.clone()
        with torch.no_grad():
            probs = task.probabilities(net.eval()(ids)).tolist()
        found = [task.decision(p) for p in probs]
        chosen = [
            task.explained(found[i]) if targets is None or targets[i] is None else targets[i] for i in range(len(found))
        ]
        target = torch.tensor(chosen)
        out = integrated_gradients(net, task, ids, target)
        steps = STEPS
        while steps < MAX_STEPS:  # the quadrature's error shows in delta: more nodes for the texts past it
            redo = (~within_tolerance(out["delta"], out["logit"] - out["baseline_logit"])).nonzero().flatten()
            if not len(redo):
                break
            steps *= 2
            again = integrated_gradients(net, task, ids[redo], target[redo], steps)
            for key in out:
                out[key][redo] = again[key]
    rows = []
    for i, pred in enumerate(found):
        positions = (ids[i] != net.pad_id).nonzero().flatten().tolist()
        rows.append(
            {
                **pred,
                "target": task.class_names[chosen[i]],
                "positions": positions,
                "scores": out["scores"][i, positions].tolist(),
                **{key: out[key][i].item() for key in ("logit", "baseline_logit", "delta")},
            }
        )
    return rows


def integrated_gradients(net, task: Task, tokens: Tensor, target: Tensor, steps: int = STEPS) -> dict[str, Tensor]:
    """``net`` (a ``TextRNN``) of ``task``, tokens (B, T) and target classes (B,) -> ``scores`` (B, T), zero at
    padding; ``logit`` and ``baseline_logit`` (B,) of the target class (``Task.class_logit``); ``delta`` (B,) =
    sum(scores) - their difference.

    The n-gram bag does not depend on the embeddings: it cancels from the integral's end points and is
    added back as its exact per-word shares."""
    was_training = net.training
    net.eval()  # no dropout: the function integrated is the one that predicts
    try:
        b, t = tokens.shape
        with torch.no_grad():
            x = net.embed(tokens).float()  # (T, B, E)
            logits = net.classify(x, tokens)  # (B,) or (B, C)
            logit = task.class_logit(logits, target)
            at_zero = task.class_logit(net.classify(torch.zeros_like(x), tokens), target)
        nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1], mapped to [0, 1]
        alphas = torch.tensor((nodes + 1) / 2, dtype=x.dtype)
        weights = torch.tensor(weights / 2, dtype=x.dtype)
        with torch.enable_grad():
            # every node's point on the path as one batch, node-major: (T, steps * B, E)
            path = (alphas.view(1, -1, 1, 1) * x.unsqueeze(1)).reshape(t, steps * b, -1)
            path.requires_grad_(True)
            f = task.class_logit(net.classify(path, tokens.repeat(steps, 1)), target.repeat(steps))
            (grad,) = torch.autograd.grad((f * weights.repeat_interleave(b)).sum(), path)
        scores = (x * grad.view(t, steps, b, -1).sum(1)).sum(-1).t()  # (B, T)
        baseline = at_zero
        if net.ngrams is not None:
            with torch.no_grad():
                shares = ngram_shares(net, tokens)  # (B, T, C), C logits as the head has them
                shares = shares.reshape(b, t, *logits.shape[1:])  # as the network gives logits: (B, T) for one
                shares = task.class_logit(shares, target.unsqueeze(1).expand(b, t))  # (B, T)
            scores = scores + shares
            baseline = at_zero - shares.sum(1)  # the baseline has no bag
        return {
            "scores": scores,
            "logit": logit,
            "baseline_logit": baseline,
            "delta": scores.sum(1) - (logit - baseline),
        }
    finally:
        net.train(was_training)


def ngram_shares(net, tokens: Tensor) -> Tensor:
    """tokens (B, T) -> (B, T, C): the n-gram bag's logits (``TextRNN._ngram_logits``) split over the words, each
    n-gram's term in equal shares to its n words (with ``ngram_nb``, a repeated n-gram's single term also in
    equal shares to its occurrences). Summed over T it is the bag's logits."""
    rows = net._ngram_rows(tokens)  # (3, B, T): the word, pair and triple ending at each step
    present = rows != 0
    terms = net.ngrams(rows).float()  # (3, B, T, C)
    occurrences = torch.ones(rows.shape)
    count = present.transpose(0, 1).flatten(1).sum(1)  # (B,) n-grams per text
    if net.ngram_nb:
        terms = terms * net.ngram_scale[rows]
        for i in range(rows.shape[1]):  # each distinct n-gram counts once (TextRNN._review_ngrams)
            seen = rows[:, i][present[:, i]]
            unique, inverse, counts = torch.unique(seen, return_inverse=True, return_counts=True)
            occurrences[:, i][present[:, i]] = counts[inverse].float()
            count[i] = len(unique)
    gain = net.ngram_gain / count.clamp(min=1).float().sqrt()  # (B,)
    terms = terms * present.unsqueeze(-1) * (gain.view(1, -1, 1, 1) / occurrences.unsqueeze(-1))
    shares = terms[0] + terms[1] / 2 + terms[2] / 3  # each term's share of the word it ends at
    shares[:, :-1] += terms[1][:, 1:] / 2 + terms[2][:, 1:] / 3  # of the word before
    shares[:, :-2] += terms[2][:, 2:] / 3  # of the word two before
    return shares
