import copy
import io
import subprocess
import sys
import types

import pytest
import torch

from rnn_lightning.models import TextClassifier
from rnn_lightning.network import cpu_rnn, text_rnn
from rnn_lightning.network.recurrent import RecurrentLayer
from rnn_lightning.network.text_rnn import TextRNN, upgrade_state_dict
from tests.helpers import ROOT, SUBPROCESS_ENV

# Where a GPU is present (a device machine; never in CI) the implementation tests run there too, so
# the fused path is checked against cuDNN and the hand-written backward against CUDA kernels.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def exact_cuda():
    """float32 as float32 on the GPU: no TF32 in cuDNN's or cuBLAS' products."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reference_forward(layer: RecurrentLayer, x: torch.Tensor, implementation=None, last_only: bool = False):
    """The reference every implementation is compared against: a Python loop over the time steps, from
    the layer's own tensors, differentiated by autograd."""
    outs = [_loop(layer, x, sfx) for sfx in layer.directions]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
    if not last_only:
        return out
    h = layer.hidden_size
    return out[-1] if len(outs) == 1 else torch.cat([out[-1, :, :h], out[0, :, h:]], dim=-1)


def _loop(layer: RecurrentLayer, x: torch.Tensor, sfx: str) -> torch.Tensor:
    w_ih, w_hh, b_ih, b_hh = (layer.tensor(name, sfx) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    steps = range(x.shape[0] - 1, -1, -1) if sfx else range(x.shape[0])
    gi = torch.addmm(b_ih, x.flatten(0, 1), w_ih.t()).view(x.shape[0], x.shape[1], -1)  # (T, B, G*H)
    h = x.new_zeros(x.shape[1], layer.hidden_size)
    c = h
    outs = [h] * x.shape[0]
    for t in steps:
        gh = torch.addmm(b_hh, h, w_hh.t())  # (B, G*H)
        if layer.cell == "rnn":
            h = torch.tanh(gi[t] + gh)
        elif layer.cell == "gru":
            i_r, i_z, i_n = gi[t].chunk(3, dim=1)
            h_r, h_z, h_n = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = n + z * (h - n)
        else:
            i, f, g, o = (gi[t] + gh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        outs[t] = h
    return torch.stack(outs)


def reference(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` (a network or one layer) with every recurrent layer computed by ``reference_forward``."""
    for layer in [m for m in module.modules() if isinstance(m, RecurrentLayer)]:
        layer.forward = types.MethodType(reference_forward, layer)
    return module


def test_base_model_has_the_tutorials_1018881_parameters():
    net = TextClassifier().net  # defaults are configs/base.yaml's model
    assert count(net.embedding) == 1_000_000
    assert [count(layer) for layer in net.layers] == [10_560, 8_256]
    assert count(net.head) == 65
    assert count(net) == 1_018_881


def test_gru_and_lstm_count_like_pytorch():
    for cell, ref in (("gru", torch.nn.GRU), ("lstm", torch.nn.LSTM)):
        ours = RecurrentLayer(cell, 10, 6, bidirectional=True)
        assert count(ours) == count(ref(10, 6, bidirectional=True))


def test_keras_initialisation():
    torch.manual_seed(0)
    net = TextRNN(vocab_size=50, embed_dim=8, cell="lstm", hidden_size=4, num_layers=1, pad_id=0)
    emb = net.embedding.weight
    assert emb.abs().max() <= 0.05 and torch.all(emb[0] == 0)  # pad row is zero
    lstm = net.layers[0].rnn
    w_hh = lstm.weight_hh_l0.detach()  # (4H, H): orthogonal columns
    torch.testing.assert_close(w_hh.t() @ w_hh, torch.eye(4), atol=1e-5, rtol=0)
    assert torch.all(lstm.bias_ih_l0[4:8] == 1) and torch.all(lstm.bias_ih_l0[:4] == 0)  # forget gate bias 1
    assert torch.all(lstm.bias_hh_l0 == 0) and torch.all(net.head.bias == 0)


@pytest.mark.parametrize("cell, impl", [("rnn", "fused"), ("rnn", "bptt"), ("gru", "fused"), ("lstm", "fused")])
@pytest.mark.parametrize("pooling", ["max", "last"])
@pytest.mark.parametrize("device", DEVICES)
def test_implementations_match_the_reference_loops_outputs_and_gradients(cell, impl, pooling, device, exact_cuda):
    """Same outputs and every parameter's gradient as the reference loop, to 1e-5, with dropout,
    two bidirectional layers, and max pooling (every time step's output gets a gradient) or the
    final states (the last layer returns nothing else). ``bptt`` is the rnn cell's compiled CPU loop."""
    if impl == "bptt" and (device != "cpu" or not cpu_rnn.available()):
        pytest.skip("the compiled loop runs on a CPU with a C++ compiler")
    torch.manual_seed(0)
    kwargs = dict(
        vocab_size=40,
        embed_dim=12,
        cell=cell,
        hidden_size=10,
        num_layers=2,
        dropout=0.3,
        bidirectional=True,
        pooling=pooling,
    )
    ref = reference(TextRNN(**kwargs)).to(device)
    other = TextRNN(**kwargs, implementation=impl).to(device)
    other.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 40, (7, 15), device=device)
    tokens[:2, :5] = 0  # some front padding
    results = []
    for net in (ref, other):
        torch.manual_seed(1)  # the same dropout masks
        logits = net(tokens)
        (logits * torch.linspace(-1, 1, 7, device=device)).sum().backward()
        results.append((logits.detach(), {n: p.grad for n, p in net.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        # On a GPU, cuDNN's tanh RNN sums the embedding's gradient in another order than the reference
        # loop, a gap above 1e-5 there; everything else stays within 1e-5.
        loose = device == "cuda" and impl == "fused" and cell == "rnn" and name == "embedding.weight"
        torch.testing.assert_close(
            grads_b[name], grads_a[name], atol=5e-5 if loose else 1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("pooling", ["last", "mean", "max_mean"])
def test_last_and_mean_pooling_agree_across_implementations(pooling):
    torch.manual_seed(0)
    kwargs = dict(
        vocab_size=30,
        embed_dim=6,
        cell="gru",
        hidden_size=5,
        num_layers=1,
        dropout=0.0,
        bidirectional=True,
        pooling=pooling,
    )
    nets = [reference(TextRNN(**kwargs)), TextRNN(**kwargs, implementation="fused")]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    tokens = torch.randint(1, 30, (4, 9))
    outs = [net(tokens) for net in nets]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=0)


def test_front_padding_does_not_change_mean_or_max_pooling():
    torch.manual_seed(0)
    for pooling in ("mean", "max", "max_mean"):
        net = TextRNN(vocab_size=30, embed_dim=6, hidden_size=5, num_layers=1, pooling=pooling).eval()
        words = torch.randint(1, 30, (1, 6))
        padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), words], dim=1)
        # The pad embedding is zero and the initial biases are zero, so the state stays zero over padding.
        torch.testing.assert_close(net(padded), net(words), atol=1e-6, rtol=0)


def test_dropout_mask_is_shared_across_time_steps():
    torch.manual_seed(0)
    net = TextRNN(vocab_size=30, embed_dim=64, hidden_size=4, num_layers=1, dropout=0.5)
    seen = {}
    net.layers[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    net.train()(torch.randint(1, 30, (3, 5)))
    dropped = seen["x"] == 0  # (T, B, E): zeroed input features
    assert dropped.any()
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # same features dropped at every step


@pytest.mark.parametrize("k", [2, 5])
def test_training_metrics_keep_no_per_review_state(k):
    """Training metrics stay the same size however many steps an epoch has; validation's exact AUROC
    keeps every score."""
    model = TextClassifier(class_names=[str(i) for i in range(k)])
    for _ in range(3):
        scores = torch.rand(8) if k == 2 else torch.rand(8, k).softmax(-1)
        labels = torch.randint(0, k, (8,))
        model.train_metrics.update(scores, labels)
        model.val_metrics.update(scores, labels)
    states = [v for m in model.train_metrics.values() for v in m.metric_state.values()]
    assert states and not any(isinstance(v, list) for v in states)
    assert "train/auroc" not in model.train_metrics.compute() and "val/auroc" in model.val_metrics.compute()


def test_predict_step_returns_probabilities():
    model = TextClassifier(vocab_size=20, embed_dim=4, hidden_size=3, num_layers=1)
    for names in (["neg", "pos"], ["a", "b", "c"]):
        model = TextClassifier(class_names=names, vocab_size=20, embed_dim=4, hidden_size=3, num_layers=1)
        probs = model.predict_step((torch.randint(0, 20, (5, 7)), torch.zeros(5)), 0)
        assert probs.shape == (5, len(names)) and torch.all((probs > 0) & (probs < 1))
        assert torch.allclose(probs.sum(-1), torch.ones(5))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"cell": "transformer"}, "model.cell"),
        ({"vocab_size": 2}, "model.vocab_size"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"word_dropout": -0.1}, "model.word_dropout"),
        ({"bigram_buckets": 1}, "model.bigram_buckets"),
        ({"ngram_buckets": -3}, "model.ngram_buckets"),
        ({"ngram_gain": 0.0}, "model.ngram_gain"),
        ({"ngram_nb": True}, "model.ngram_nb"),
        ({"num_layers": 0}, "model.num_layers"),
    ],
)
def test_bad_model_values_name_the_field(kwargs, field):
    from rnn_lightning.errors import InputError

    with pytest.raises(InputError, match=field):
        TextClassifier(**kwargs)


def logits_and_grads(net: TextRNN, tokens: torch.Tensor, weights: torch.Tensor, bf16: bool):
    """Logits and every parameter's gradient of sum(logits * weights), under bf16 autocast or not;
    the dropout masks drawn from the same seed every call."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = net(tokens).float()
    (logits * weights).sum().backward()
    return logits.detach(), {n: p.grad for n, p in net.named_parameters()}


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_stays_close_to_float32(cell, device, exact_cuda):
    """Under bf16 autocast (``auto``: the compiled loop for rnn on a CPU, PyTorch's kernels otherwise)
    outputs and gradients stay within bfloat16's precision of the float32 reference, and every
    gradient arrives in float32."""
    torch.manual_seed(0)
    kwargs = dict(vocab_size=50, embed_dim=16, cell=cell, hidden_size=12, num_layers=2, dropout=0.25, pooling="last")
    ref = reference(TextRNN(**kwargs)).to(device)
    fast = TextRNN(**kwargs, implementation="auto").to(device)
    fast.load_state_dict(ref.state_dict())
    tokens = torch.randint(1, 50, (32, 20), device=device)
    weights = torch.randn(32, generator=torch.Generator().manual_seed(2)).to(device)
    out_ref, grads_ref = logits_and_grads(ref, tokens, weights, bf16=False)
    out_fast, grads_fast = logits_and_grads(fast, tokens, weights, bf16=True)
    torch.testing.assert_close(out_fast, out_ref, atol=2e-2, rtol=0)
    for name, g in grads_ref.items():
        assert grads_fast[name].dtype == torch.float32
        rel = (grads_fast[name] - g).norm() / g.norm()
        assert rel < 5e-2, f"{name}: relative error {rel:.3g}"


def test_the_compiled_loop_keeps_float32_states_under_any_autocast():
    """Only the projections run in the autocast dtype; a chained recurrence keeps float32 states."""
    if not cpu_rnn.available():
        pytest.skip("no C++ compiler")
    layer = RecurrentLayer("rnn", 6, 5)
    x = torch.randn(7, 3, 6)
    for dtype in (torch.bfloat16, torch.float16, None):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = layer(x, "bptt")
        assert out.dtype == torch.float32
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_bigram_rows_hash_word_pairs_and_skip_padding():
    net = TextRNN(vocab_size=50, embed_dim=8, hidden_size=6, num_layers=1, bigram_buckets=1000)
    tokens = torch.tensor([[0, 0, 5, 7, 5, 7], [0, 5, 7, 9, 5, 7]])
    rows = net._bigram_rows(tokens)
    assert rows[0, :3].tolist() == [0, 0, 0]  # padding and the first word: no pair
    assert rows[1, 1] == 0 and torch.all(rows[rows != 0] >= 1) and torch.all(rows < 1000)
    assert rows[0, 3] == rows[0, 5] == rows[1, 2] == rows[1, 5]  # every (5, 7) shares a row
    assert rows[0, 3] != rows[0, 4]  # (5, 7) and (7, 5) do not
    net(tokens).sum().backward()
    grad = net.bigrams.weight.grad.abs().sum(1)
    assert grad[0] == 0 and set(grad.nonzero().flatten().tolist()) == set(rows[rows != 0].tolist())


def test_ngram_bag_adds_the_normalised_weights_of_the_reviews_words_pairs_and_triples():
    net = TextRNN(vocab_size=50, embed_dim=8, hidden_size=6, num_layers=1, ngram_buckets=1000)
    tokens = torch.tensor([[0, 0, 5, 7, 5, 7], [0, 5, 7, 9, 5, 7]])
    plain = TextRNN(vocab_size=50, embed_dim=8, hidden_size=6, num_layers=1)
    plain.load_state_dict(net.state_dict(), strict=False)
    net.eval(), plain.eval()
    assert torch.equal(net(tokens), plain(tokens))  # the table starts at zero: silent until trained
    rows = net._ngram_rows(tokens)
    assert (rows[:, 0] != 0).sum(1).tolist() == [4, 3, 2]  # 4 words, 3 pairs, 2 triples after the padding
    assert rows[0, 1, 0] == 0 and rows[1, 1, 1] == 0 and rows[2, 1, 2] == 0
    assert rows[1, 0, 3] == rows[1, 0, 5] == rows[1, 1, 2]  # every (5, 7) shares a row, across reviews
    assert rows[2, 0, 4] != rows[2, 0, 5]  # (5, 7, 5) and (7, 5, 7) do not
    with torch.no_grad():
        net.ngrams.weight.copy_(torch.randn(1000, 1))
        net.ngrams.weight[0].zero_()
    w = net.ngrams.weight[:, 0]
    bag = torch.stack([30 * w[r[r != 0]].sum() / (r != 0).sum().sqrt() for r in rows.transpose(0, 1).reshape(2, -1)])
    assert torch.allclose(net(tokens) - plain(tokens), bag, atol=1e-5)
    net(tokens).sum().backward()
    used = net.ngrams.weight.grad[:, 0].nonzero().flatten().tolist()
    assert set(used) == set(rows[rows != 0].tolist())


def test_ngram_nb_counts_each_ngram_once_and_scales_it_by_its_naive_bayes_ratio():
    net = TextRNN(vocab_size=50, embed_dim=8, hidden_size=6, num_layers=1, ngram_buckets=1000, ngram_nb=True)
    tokens = torch.tensor([[0, 5, 7, 5, 7, 5, 7], [0, 0, 0, 0, 9, 11, 13]])
    rows = net._review_ngrams(tokens)
    # 5 7 5 7 5 7: words {5, 7}, pairs {57, 75}, triples {575, 757}; the second review's 3 + 2 + 1 all distinct
    assert (rows != 0).sum(1).tolist() == [6, 6]
    assert set(rows[0][rows[0] != 0].tolist()) == set(net._ngram_rows(tokens)[:, 0].flatten().tolist()) - {0}
    net.fit_ngram_scale([(tokens[:1], torch.tensor([1])), (tokens[1:], torch.tensor([0]))])  # two batches
    scale = net.ngram_scale[:, 0]
    # alpha 1: a row in the 6 presences of class 1 only: log((1+1)/(6+B)) - log((0+1)/(6+B)) = log 2
    expected = torch.log(torch.tensor(2.0))
    assert torch.allclose(scale[rows[0][rows[0] != 0]], expected) and torch.allclose(
        scale[rows[1][rows[1] != 0]], -expected
    )
    assert int((scale != 0).sum()) == 12  # every other row, and row 0, is unseen: 0
    with torch.no_grad():
        net.ngrams.weight.normal_()
        net.ngrams.weight[0].zero_()
    plain = TextRNN(vocab_size=50, embed_dim=8, hidden_size=6, num_layers=1)
    plain.load_state_dict(net.state_dict(), strict=False)
    net.eval(), plain.eval()
    w = net.ngrams.weight[:, 0] * scale
    bag = torch.stack([30 * w[r[r != 0]].sum() / (r != 0).sum().sqrt() for r in rows])
    assert torch.allclose(net(tokens) - plain(tokens), bag, atol=1e-5)


def test_ngram_nb_scale_has_one_column_per_class_for_more_than_two():
    net = TextRNN(
        vocab_size=50, embed_dim=8, hidden_size=6, num_layers=1, num_outputs=3, ngram_buckets=1000, ngram_nb=True
    )
    tokens = torch.tensor([[0, 5, 7], [0, 9, 11], [0, 13, 15]])
    net.fit_ngram_scale([(tokens, torch.tensor([0, 1, 2]))])
    row = net._review_ngrams(tokens[1:2])[0].max()  # one of the class-1 review's rows
    r = net.ngram_scale[row]  # class 1 against the rest (3 presences each side): positive; the others negative
    assert r[1] > 0 and r[0] < 0 and r[2] < 0


def test_word_dropout_hides_words_while_training_only():
    """Each of 200 distinct words appears once: about half get no gradient with word_dropout 0.5,
    all of them with 0, and evaluation sees every word."""
    torch.manual_seed(0)
    tokens = torch.arange(1, 201).view(4, 50)
    learned = {}
    for p in (0.0, 0.5):
        net = TextRNN(vocab_size=201, embed_dim=8, hidden_size=6, num_layers=1, dropout=0.0, word_dropout=p)
        net(tokens).sum().backward()
        learned[p] = int((net.embedding.weight.grad.abs().sum(1) > 0).sum())
        net.eval()
        with torch.no_grad():
            assert torch.equal(net(tokens), net(tokens))  # no randomness at evaluation
    assert learned[0.0] == 200
    assert 70 < learned[0.5] < 130


@pytest.mark.parametrize("impl", ["fused", "bptt"])
@pytest.mark.parametrize("device", DEVICES)
def test_every_implementation_trains_and_evaluates_under_bf16_autocast(impl, device):
    """Under autocast a layer may get bfloat16 inputs from the one before: each implementation must take them."""
    if impl == "bptt" and (device != "cpu" or not cpu_rnn.available()):
        pytest.skip("the compiled loop runs on a CPU with a C++ compiler")
    for cell in ("rnn",) if impl == "bptt" else ("rnn", "gru", "lstm"):
        for pooling in ("last", "max_mean"):
            net = TextRNN(
                vocab_size=50, embed_dim=16, cell=cell, hidden_size=8, num_layers=2,
                bidirectional=True, pooling=pooling, implementation=impl,
            ).to(device)  # fmt: skip
            tokens = torch.randint(1, 50, (4, 10), device=device)
            with torch.autocast(device, dtype=torch.bfloat16):
                logits = net(tokens)
            logits.float().sum().backward()
            assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
            net.eval()
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
                assert net(tokens).shape == (4,)


def test_the_network_signature_is_the_one_source_of_its_hyperparameters():
    import inspect

    from rnn_lightning.errors import InputError

    model = TextClassifier(cell="gru", hidden_size=5, vocab_size=50)
    defaults = {k: p.default for k, p in inspect.signature(TextRNN).parameters.items()}
    assert model.net.config == {**defaults, "cell": "gru", "hidden_size": 5, "vocab_size": 50}
    # The checkpoint holds every one; the number of classes as the class names it counts.
    assert {k: model.hparams[k] for k in defaults if k != "num_outputs"} | {"num_outputs": 1} == model.net.config
    assert model.hparams.class_names == ["neg", "pos"] and "num_outputs" not in model.hparams
    assert model.net.layers[0].cell == "gru" and model.net.layers[0].hidden_size == 5
    for bad, field in (({"hidden_size": 0}, "model.hidden_size"), ({"pooling": "sum"}, "model.pooling"),
                       ({"dropout": 1.0}, "model.dropout"), ({"pad_id": 99, "vocab_size": 10}, "model.pad_id")):  # fmt: skip
        with pytest.raises(InputError, match=field):
            TextClassifier(**bad)
    with pytest.raises(InputError, match="model: .*unexpected keyword argument 'colour'"):
        TextClassifier(colour="red")


def _reference_recurrence(gi, w_hh, gout):
    """The tanh recurrence and its backward, step by step in PyTorch: hs (T + 1, B, H), dz (T, B, H)."""
    T = gi.shape[0]
    hs = [torch.zeros_like(gi[0])]
    for t in range(T):
        hs.append(torch.tanh(gi[t] + hs[-1] @ w_hh.t()))
    hs = torch.stack(hs)
    dz = torch.empty_like(gi)
    dh = gout[-1] if gout.dim() == 3 else gout
    for t in range(T - 1, -1, -1):
        dz[t] = dh * (1 - hs[t + 1] ** 2)
        if t:
            dh = dz[t] @ w_hh + (gout[t - 1] if gout.dim() == 3 else 0)
    return hs, dz


@pytest.fixture
def compiled():
    if not cpu_rnn.available():
        pytest.skip("no C++ compiler")
    return torch.ops.rnn_lightning


@pytest.mark.parametrize("H", [64, 128, 10])  # the register-tiled product (H a multiple of 64) and the general one
@pytest.mark.parametrize("last_only", [False, True])
def test_the_recurrence_op_matches_the_recurrence_step_by_step(H, last_only, compiled):
    """States and pre-activation gradients of the compiled ops against PyTorch's tanh, over 30 steps and
    a batch that leaves a partial block of rows."""
    torch.manual_seed(0)
    T, B = 30, 13
    gi, bias, w_hh = torch.randn(T, B, H) * 0.7, torch.randn(H) * 0.3, torch.randn(H, H) / H**0.5
    gout = torch.randn(B, H) if last_only else torch.randn(T, B, H)
    hs_ref, dz_ref = _reference_recurrence(gi + bias, w_hh, gout)
    last, hs = compiled.tanh_recurrence(gi, bias, w_hh)
    torch.testing.assert_close(hs, hs_ref, atol=2e-6, rtol=0)
    assert torch.equal(last, hs[-1])
    dz, db = compiled.tanh_recurrence_backward(hs, gout, w_hh)
    torch.testing.assert_close(dz, dz_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(db, dz_ref.sum((0, 1)), atol=1e-4, rtol=1e-5)


def test_the_recurrence_op_passes_pytorchs_custom_op_checks(compiled):
    """torch.library.opcheck: schema, fake (shape) kernel, autograd registration, as compile/export use them."""
    torch.manual_seed(0)
    args = (
        torch.randn(6, 5, 4, requires_grad=True),
        torch.randn(4, requires_grad=True),
        torch.randn(4, 4, requires_grad=True),
    )
    torch.library.opcheck(compiled.tanh_recurrence.default, args)
    hs = compiled.tanh_recurrence(*(a.detach() for a in args))[1]
    for gout in (torch.randn(6, 5, 4), torch.randn(5, 4)):
        torch.library.opcheck(compiled.tanh_recurrence_backward.default, (hs, gout, args[2].detach()))


def test_the_ops_refuse_what_they_cannot_compute(compiled):
    with pytest.raises(RuntimeError, match="gi: expected a float32 CPU tensor"):
        compiled.tanh_recurrence(torch.zeros(2, 3, 4, dtype=torch.float64), torch.zeros(4), torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match=r"bias \(H\) and w_hh \(H, H\)"):
        compiled.tanh_recurrence(torch.zeros(2, 3, 4), torch.zeros(5), torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match="gout: expected"):
        compiled.tanh_recurrence_backward(torch.zeros(3, 3, 4), torch.zeros(2, 2, 4), torch.zeros(4, 4))


def test_the_compiled_tanh_is_exact_to_float_precision_over_its_whole_range(compiled):
    """One step from a zero state is tanh(gi): within 2 float32 ulps of 1 everywhere, signs kept, no NaN at the extremes."""
    x = torch.cat([torch.linspace(-30, 30, 200_001), torch.tensor([0.0, -0.0, 1e-30, -1e-8, 88.0, -100.0, 1e30])])
    gi = x.view(1, -1, 1)  # T = 1, B = every value, H = 1
    h = compiled.tanh_recurrence(gi, torch.zeros(1), torch.zeros(1, 1))[0][:, 0]
    torch.testing.assert_close(h, torch.tanh(x.double()).float(), atol=2.4e-7, rtol=0)
    assert torch.equal(torch.sign(h), torch.sign(x)) and torch.isfinite(h).all()


def test_export_and_compile_see_the_compiled_loop_as_one_op(compiled):
    """``auto`` on a CPU exports and compiles as it is: the loop is a registered op, not a C call;
    ``fused`` exports PyTorch's own kernel (what ``Predictor.export`` writes)."""
    torch.manual_seed(0)
    net = TextRNN(vocab_size=50, embed_dim=12, hidden_size=8).eval()
    tokens = torch.randint(1, 50, (4, 10))
    exported = torch.export.export(net, (tokens,))
    ops = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert ops.count("rnn_lightning.tanh_recurrence.default") == 2  # one per layer
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(tokens), net(tokens), atol=0, rtol=0)
        torch.testing.assert_close(torch.compile(net)(tokens), net(tokens), atol=1e-6, rtol=0)
    net.implementation = "fused"
    ops = [str(n.target) for n in torch.export.export(net, (tokens,)).graph.nodes if n.op == "call_function"]
    assert ops.count("aten.rnn_tanh.input") == 2 and not [op for op in ops if op.startswith("rnn_lightning")]


def test_without_a_compiler_pytorchs_kernel_runs_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(cpu_rnn.ENV_DIR, str(tmp_path / "build"))
    cpu_rnn.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="compiled rnn loop is unavailable"):
            assert not cpu_rnn.available()
        layer = RecurrentLayer("rnn", 6, 5)
        x = torch.randn(9, 4, 6)
        torch.testing.assert_close(layer(x, "auto"), reference_forward(layer, x), atol=1e-6, rtol=0)
        with pytest.raises(RuntimeError, match="implementation bptt"):
            layer(x, "bptt")
    finally:
        cpu_rnn.library.cache_clear()  # the next user builds it again from the session's directory


BUILD_TWICE = """
import sys
from pathlib import Path
from rnn_lightning.network import cpu_rnn
built = Path(cpu_rnn.library())
assert built.parent.parent == Path(sys.argv[1]), built
stamp = built.stat().st_mtime_ns
cpu_rnn.library.cache_clear()
assert cpu_rnn.library() == str(built) and built.stat().st_mtime_ns == stamp  # reused, not rebuilt
print("BUILT", built.name)
"""


@pytest.mark.slow
def test_the_compiled_loop_is_built_once_into_its_cache_directory(tmp_path, compiled):
    """In a process of its own: a process loads one build of the ops (the session's is loaded here)."""
    env = {**SUBPROCESS_ENV, cpu_rnn.ENV_DIR: str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", BUILD_TWICE, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "BUILT rnnl_cpu_kernels_" in proc.stdout, proc.stderr[-2000:]
    assert len(list(tmp_path.glob("*/*.so"))) == 1


def test_the_build_folder_is_the_projects_then_torchs_then_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(cpu_rnn.ENV_DIR, raising=False)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert cpu_rnn.build_folder("x") == tmp_path / "home" / ".cache" / "torch_extensions" / "x"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch"))
    assert cpu_rnn.build_folder("x") == tmp_path / "torch" / "x"
    monkeypatch.setenv(cpu_rnn.ENV_DIR, str(tmp_path / "ours"))
    assert cpu_rnn.build_folder("x") == tmp_path / "ours" / "x" and (tmp_path / "ours" / "x").is_dir()


def test_switched_off_the_loop_is_not_loaded(monkeypatch):
    monkeypatch.setenv(cpu_rnn.ENV_SWITCH, "0")
    cpu_rnn.library.cache_clear()
    try:
        assert cpu_rnn.library() is None and not cpu_rnn.available()
    finally:
        cpu_rnn.library.cache_clear()


def test_the_recurrence_ops_gradient_when_both_the_final_state_and_every_state_are_used(compiled):
    torch.manual_seed(0)
    gi, b, w = (torch.randn(7, 3, 4, requires_grad=True), torch.randn(4, requires_grad=True),
                torch.randn(4, 4, requires_grad=True))  # fmt: skip
    last, hs = compiled.tanh_recurrence(gi, b, w)
    ours = torch.autograd.grad(last.sum() * 2 + hs.pow(2).sum(), (gi, b, w))
    states = [torch.zeros(3, 4)]
    for t in range(7):
        states.append(torch.tanh(gi[t] + b + states[-1] @ w.t()))
    ref_hs = torch.stack(states)
    ref = torch.autograd.grad(ref_hs[-1].sum() * 2 + ref_hs.pow(2).sum(), (gi, b, w))
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_layer_is_pytorchs_module_and_the_rnn_cell_keeps_one_bias(cell):
    """The layer's module is nn.RNN/GRU/LSTM itself; the rnn cell's second bias is a zero buffer that is
    not saved, gets no gradient and follows the module through .to(), .double(), deepcopy and load_state_dict."""
    layer = RecurrentLayer(cell, 5, 4, bidirectional=True)
    assert type(layer.rnn) is {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    names += [n + "_reverse" for n in names]
    saved = [n for n in names if cell != "rnn" or not n.startswith("bias_hh")]
    assert list(layer.state_dict()) == ["rnn." + n for n in saved]
    assert [n for n, _ in layer.named_parameters()] == ["rnn." + n for n in saved]
    x = torch.randn(6, 3, 5)
    out = layer(x, "fused")
    out.pow(2).sum().backward()
    if cell == "rnn":
        assert not layer.rnn.bias_hh_l0.requires_grad and layer.rnn.bias_hh_l0.grad is None
    for other in (copy.deepcopy(layer), layer.double(), layer.float(), RecurrentLayer(cell, 5, 4, bidirectional=True)):
        other.load_state_dict(layer.state_dict())
        flat = other.rnn._flat_weights  # what PyTorch's kernel is given: every tensor of the module, the buffers too
        assert all(w is getattr(other.rnn, n) for w, n in zip(flat, names, strict=True))
        assert all(torch.all(getattr(other.rnn, n) == 0) for n in names if cell == "rnn" and n.startswith("bias_hh"))
        torch.testing.assert_close(other(x, "fused"), out, atol=1e-6, rtol=0)
    with torch.device("meta"):  # as TextRNN.from_checkpoint builds it, then given a checkpoint's tensors
        mapped = RecurrentLayer(cell, 5, 4, bidirectional=True)
    mapped.load_state_dict(layer.state_dict(), assign=True)
    assert not any(t.is_meta for t in [*mapped.parameters(), *mapped.buffers()])
    torch.testing.assert_close(mapped(x, "fused"), out, atol=0, rtol=0)


def test_an_exported_layer_holds_pytorchs_kernel_and_its_zero_bias():
    torch.manual_seed(0)
    layer = RecurrentLayer("rnn", 5, 4, bidirectional=True).eval()
    x = torch.randn(6, 3, 5)
    program = torch.export.export(layer, (x,), kwargs={"implementation": "fused"})
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    torch.testing.assert_close(loaded(x, implementation="fused"), layer(x, "fused"), atol=0, rtol=0)


def test_state_dicts_of_an_earlier_version_are_renamed_and_load():
    torch.manual_seed(0)
    net = TextRNN(vocab_size=30, embed_dim=6, hidden_size=5, num_layers=2, bidirectional=True)
    today = {"net." + k: v for k, v in net.state_dict().items()}
    former = {k.replace("rnn.", "").replace("_l0", ""): v for k, v in today.items()}
    assert "net.layers.1.weight_hh_reverse" in former and "net.layers.0.bias_hh" not in former
    former["optimizer_step"] = torch.zeros(())  # what does not start with the prefix is left alone
    upgraded = upgrade_state_dict(former, "net.")
    assert upgraded is former and list(upgraded) == [*today, "optimizer_step"]
    assert all(upgraded[k] is today[k] for k in today)
    assert list(upgrade_state_dict(dict(today), "net.")) == list(today)  # today's names pass unchanged
    gru = TextRNN(vocab_size=30, embed_dim=6, cell="gru", hidden_size=5, num_layers=1)
    old_gru = {k.replace("rnn.", "").replace("_l0", ""): v for k, v in gru.state_dict().items()}
    assert "layers.0.bias_hh" in old_gru
    TextRNN(vocab_size=30, embed_dim=6, cell="gru", hidden_size=5, num_layers=1).load_state_dict(
        upgrade_state_dict(old_gru)
    )


@pytest.mark.parametrize("bigrams", [0, 97])
def test_the_embedding_lookup_gives_nn_embeddings_gradients_bit_for_bit(bigrams):
    """The training lookup (``index_add_`` backward) against ``nn.Embedding``'s own backward: the same
    output and the same gradients of every parameter, the pad rows' included (zero), to the last bit."""
    torch.manual_seed(0)
    net = TextRNN(vocab_size=50, embed_dim=8, hidden_size=16, bigram_buckets=bigrams)
    tokens = torch.randint(1, 50, (6, 12))
    tokens[:2, :4] = net.pad_id  # front padding
    labels = torch.tensor([0, 1, 1, 0, 1, 0]).float()
    grads = []
    for lookup in (text_rnn._lookup, lambda table, ids: table(ids)):
        net.zero_grad(set_to_none=True)
        net.generator = torch.Generator().manual_seed(1)  # the same dropout masks in both runs
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(text_rnn, "_lookup", lookup)
            torch.nn.functional.binary_cross_entropy_with_logits(net(tokens), labels).backward()
        grads.append({name: p.grad.clone() for name, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name
    assert grads[0]["embedding.weight"][net.pad_id].abs().sum() == 0
    assert grads[0]["embedding.weight"].abs().sum() > 0
