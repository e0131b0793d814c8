"""Integrated gradients (rnn_lightning/explain.py): completeness on every kind of network, exact n-gram shares."""

import pytest
import torch

from rnn_lightning.explain import explain_ids, integrated_gradients, ngram_shares, within_tolerance
from rnn_lightning.network.text_rnn import TextRNN
from rnn_lightning.tasks import make_task

KINDS = {
    "rnn, last state": {},
    "bigru, max_mean, word pairs": dict(cell="gru", bidirectional=True, pooling="max_mean", bigram_buckets=101),
    "lstm, mean, 3 classes": dict(cell="lstm", pooling="mean", num_outputs=3),
    "rnn + NBSVM n-gram bag": dict(ngram_buckets=4099, ngram_nb=True),
    "gru + n-gram bag, 4 classes": dict(cell="gru", ngram_buckets=4099, num_outputs=4),
}


def tiny_net(seed: int = 0, **kwargs) -> TextRNN:
    torch.manual_seed(seed)
    net = TextRNN(vocab_size=50, embed_dim=8, hidden_size=6, **kwargs)
    with torch.no_grad():  # inputs and head large enough that the logit moves far from the baseline
        net.embedding.weight.mul_(3)
        net.head.weight.mul_(3)
        if net.ngrams is not None:
            net.ngrams.weight.normal_()
            net.ngrams.weight[0] = 0  # "no n-gram", as training keeps it
            if net.ngram_nb:
                net.ngram_scale.uniform_(-1, 1)
    return net


def task(k: int):
    return make_task([str(i) for i in range(k)])


def tokens() -> torch.Tensor:
    ids = torch.randint(2, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    ids[0, :4] = 0  # front padding
    ids[1, 3:6] = 7  # a repeated word: repeated n-grams
    return ids


@pytest.mark.parametrize("kind", KINDS)
def test_scores_sum_to_the_logit_change_and_padding_scores_zero(kind):
    net = tiny_net(**KINDS[kind])
    ids = tokens()
    k = KINDS[kind].get("num_outputs", 2)  # classes: one output stands for two
    out = integrated_gradients(net, task(k), ids, torch.tensor([0, 1, k - 1]))
    change = out["logit"] - out["baseline_logit"]
    assert change.abs().max() > 0.01  # a real change to account for
    assert (
        within_tolerance(out["delta"], change).all() and (out["delta"].abs() <= 1e-3 * change.abs().clamp(min=1)).all()
    )
    assert torch.equal(out["delta"], out["scores"].sum(1) - change)
    assert (out["scores"][0, :4] == 0).all() and (out["scores"][:, 4:] != 0).all()
    with torch.no_grad():  # the logit is the network's own
        logits = net.eval()(ids)
    own = torch.stack([-logits[0], logits[1], logits[2]]) if k == 2 else logits[[0, 1, 2], [0, 1, k - 1]]
    assert torch.allclose(out["logit"], own, atol=1e-5)


def test_a_binary_network_explains_class_0_as_the_opposite_of_class_1():
    net, ids = tiny_net(), tokens()
    zero = integrated_gradients(net, task(2), ids, torch.zeros(3, dtype=torch.long))
    one = integrated_gradients(net, task(2), ids, torch.ones(3, dtype=torch.long))
    assert torch.allclose(zero["scores"], -one["scores"], atol=1e-6)


@pytest.mark.parametrize("kind", ["rnn + NBSVM n-gram bag", "gru + n-gram bag, 4 classes"])
def test_the_ngram_bag_is_shared_out_exactly(kind):
    net, ids = tiny_net(**KINDS[kind]), tokens()
    with torch.no_grad():
        assert torch.allclose(ngram_shares(net, ids).sum(1), net._ngram_logits(ids), atol=1e-4)


def test_explain_ids_predicts_and_explains_the_predicted_class_unless_told():
    net, ids = tiny_net(num_outputs=3, cell="gru"), tokens()
    names = ["a", "b", "c"]
    found = explain_ids(net, ids, make_task(names))
    probs = torch.softmax(net.eval()(ids), -1)
    for row, p in zip(found, probs, strict=True):
        assert row["label"] == names[int(p.argmax())] == row["target"]
        assert row["probs"] == pytest.approx(dict(zip(names, p.tolist(), strict=True)))
    assert found[0]["positions"] == list(range(4, 12)) and len(found[0]["scores"]) == 8
    chosen = explain_ids(net, ids, make_task(names), targets=[2, None, 0])
    assert [r["target"] for r in chosen] == ["c", found[1]["target"], "a"]
    with torch.inference_mode():  # as under Lightning's predict loop
        again = explain_ids(net, ids, make_task(names))
    assert again[0]["scores"] == pytest.approx(found[0]["scores"], abs=1e-6)


def test_texts_past_the_tolerance_are_integrated_again_with_more_nodes(monkeypatch):
    from rnn_lightning import explain

    net, ids = tiny_net(cell="gru", bidirectional=True, pooling="max_mean"), tokens()
    calls = []
    real = explain.integrated_gradients

    def spy(net, task, ids, target, steps=explain.STEPS):
        calls.append((len(ids), steps))
        return real(net, task, ids, target, steps)

    monkeypatch.setattr(explain, "integrated_gradients", spy)
    monkeypatch.setattr(explain, "TOLERANCE", -1.0)  # nothing is within it, not even a delta of exactly 0
    found = explain_ids(net, ids, task(2))
    assert calls == [(3, 32), (3, 64), (3, 128), (3, 256)] and len(found) == 3
