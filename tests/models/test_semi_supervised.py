"""Language-model pretraining, starting a classifier from it, and the semi-supervised objectives."""

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from rnn_lightning import checkpoint
from rnn_lightning.models import LanguageModel, SemiSupervisedClassifier, TextClassifier
from rnn_lightning.models.objectives import categorical_kl, perturbation, soft_label_loss
from rnn_lightning.models.transfer import copy_network
from rnn_lightning.training.cli import main
from tests.helpers import ckpt_dir, make_reviews, one_line_error, tiny_cli_args, write_splits

NET = {"vocab_size": 64, "embed_dim": 16, "hidden_size": 12, "num_layers": 1}


@pytest.fixture(scope="module")
def data_with_unlabelled(tmp_path_factory):
    """train/test parquet plus 200 unlabelled reviews (unsupervised.parquet), the IMDB hub layout."""
    root = write_splits(tmp_path_factory.mktemp("semi"), make_reviews(96, seed=1), make_reviews(48, seed=2))
    make_reviews(200, seed=7).drop(columns="label").to_parquet(root / "unsupervised.parquet")
    return root


def lm_args(data, root) -> list[str]:
    return [*tiny_cli_args(data, root), "--data.unlabelled", "true", "--model.cutoffs", "[8, 20]",
            "--model.embed_dim", "16", "--model.hidden_size", "12", "--model.num_layers", "1",
            "--model.bidirectional", "true", "--optimizer.init_args.lr", "0.02", "--trainer.max_epochs", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(data_with_unlabelled, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    main(["fit", *lm_args(data_with_unlabelled, root)], model_class=LanguageModel)
    return root, ckpt_dir(root) / "last.ckpt"


def test_language_model_loss_falls_on_a_tiny_corpus():
    torch.manual_seed(0)
    model = LanguageModel(cutoffs=[8, 20], **NET, bidirectional=True)
    tokens = torch.randint(2, 64, (8, 20))
    tokens[:, :5] = 0  # front padding: never a target
    tokens[:, 5::2] = tokens[:, 5:6]  # a repeated word every other step: something to learn
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(80):
        nll, count = model(tokens)
        assert count == 8 * 15 + 8 * 14  # forward: the 15 real words; backward: all but the first (pads never count)
        optimizer.zero_grad()
        (nll / count).backward()
        optimizer.step()
        losses.append(float(nll / count))
    assert losses[-1] < 0.6 * losses[0]


def test_pretraining_runs_through_the_cli_and_logs_perplexity(pretrained):
    root, last = pretrained
    state = checkpoint.load_checkpoint(last)
    assert state["epoch"] == 3 and any(k.startswith("output.") for k in state["state_dict"])
    best = next(ckpt_dir(root).glob("best-epoch*-loss*.ckpt"))  # best by val/loss
    assert best.exists()


def test_init_from_copies_exactly_the_network_but_its_head(pretrained, data_with_unlabelled, tmp_path, cli):
    _, last = pretrained
    source = checkpoint.load_checkpoint(last)["state_dict"]
    args = [*tiny_cli_args(data_with_unlabelled, tmp_path), "--data.unlabelled", "true", "--model.embed_dim", "16",
            "--model.hidden_size", "12", "--model.num_layers", "1", "--model.bidirectional", "true",
            "--model.pooling", "max", "--model.init_from", str(last), "--model.virtual_adversarial", "1",
            "--trainer.max_epochs", "1", "--optimizer.init_args.lr", "0"]  # fmt: skip
    result = cli("fit", *args)
    assert "model.init_from: 7 tensors from" in result.output  # embedding + 3 per direction (rnn cell: one bias)
    trained = checkpoint.load_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")
    copied = [k for k in trained["state_dict"] if k.startswith("net.") and not k.startswith("net.head.")]
    assert len(copied) == 7
    for k in copied:  # lr 0: what the classifier holds is what it was given
        assert torch.equal(trained["state_dict"][k], source[k]), k
    # the pretraining's tokenizer came along (data.tokenizer_from is linked to model.init_from)
    assert checkpoint.tokenizer_json(trained) == checkpoint.tokenizer_json(checkpoint.load_checkpoint(last))


def test_a_checkpoint_of_another_vocabulary_or_shape_is_refused_in_one_line(pretrained, parquet_dir, tmp_path, cli):
    _, last = pretrained
    base = [*tiny_cli_args(parquet_dir, tmp_path), "--model.init_from", str(last), "--model.num_layers", "1",
            "--model.bidirectional", "true", "--model.embed_dim", "16", "--model.hidden_size", "12"]  # fmt: skip
    line = one_line_error(cli("fit", *base, "--data.vocab_size", "100", check=False))
    assert line.startswith("error: model.init_from: embedding.weight is (64, 16)") and "(100, 16) here" in line
    line = one_line_error(cli("fit", *base, "--model.hidden_size", "10", check=False))
    assert "model.init_from: layers.0.rnn.weight_ih_l0 is" in line  # the layer keeps an nn.RNN
    line = one_line_error(cli("fit", *base, "--data.vocab_size", "20", check=False))
    assert line.startswith("error: data.vocab_size: 20, but the tokenizer of")


def test_perturbations_have_the_configured_norm_and_skip_padding():
    tokens = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])  # (B, T), the first review front-padded
    r = perturbation(torch.randn(4, 2, 3), tokens, pad_id=0, norm=2.5)  # (T, B, E)
    assert torch.all(r[:2, 0] == 0)  # no perturbation on padding
    assert r.square().sum(dim=(0, 2)).sqrt().tolist() == pytest.approx([2.5, 2.5], rel=1e-5)
    assert categorical_kl(torch.tensor([0.3, -2.0]), torch.tensor([0.3, -2.0])).item() == pytest.approx(0, abs=1e-7)
    assert categorical_kl(torch.tensor([3.0]), torch.tensor([-3.0])).item() > 0


@pytest.mark.parametrize("objective", ["adversarial", "virtual_adversarial", "entropy"])
def test_each_objective_adds_a_finite_loss_with_finite_gradients(objective):
    torch.manual_seed(0)
    model = SemiSupervisedClassifier(**NET, pooling="max", **{objective: 1.0, "epsilon": 0.5})
    model.train()
    tokens, labels = torch.randint(1, 64, (6, 10)), torch.tensor([0, 1, 0, 1, 1, 0])
    unlabelled = torch.randint(1, 64, (9, 10))
    plain = TextClassifier(**NET, pooling="max")
    plain.load_state_dict(model.state_dict())
    model._unlabelled = plain._unlabelled = unlabelled
    torch.manual_seed(1)
    loss = model._step((tokens, labels), "train")
    torch.manual_seed(1)
    base = plain._step((tokens, labels), "train")
    assert torch.isfinite(loss) and loss.item() > base.item()  # each objective is a positive addition
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_a_bidirectional_language_model_refuses_what_would_let_it_see_its_targets():
    from rnn_lightning.errors import InputError

    with pytest.raises(InputError, match="model.num_layers: a bidirectional language model needs 1 layer"):
        LanguageModel(cutoffs=[8, 20], **{**NET, "num_layers": 2}, bidirectional=True)
    with pytest.raises(InputError, match="model.bigram_buckets: a bidirectional language model cannot"):
        LanguageModel(cutoffs=[8, 20], **NET, bidirectional=True, bigram_buckets=50)
    with pytest.raises(InputError, match="model.ngram_buckets: a language model predicts words"):
        LanguageModel(cutoffs=[8, 20], **NET, ngram_buckets=50)
    with pytest.raises(InputError, match="model.cutoffs"):
        LanguageModel(cutoffs=[20, 8], **NET)
    LanguageModel(cutoffs=[8, 20], **NET, bigram_buckets=50)  # one direction: the pair holds no future word


def test_tensors_the_language_model_lacks_keep_their_initialisation_and_are_named(pretrained, caplog):
    _, last = pretrained
    model = TextClassifier(**{**NET, "bidirectional": True}, bigram_buckets=50)
    before = model.net.bigrams.weight.clone()
    with caplog.at_level("INFO"):
        names = copy_network(str(last), model)
    assert "bigrams.weight" not in names and torch.equal(model.net.bigrams.weight, before)
    assert "initialised afresh: bigrams.weight" in caplog.text


def test_the_class_logits_weights_start_afresh_for_another_number_of_classes(tmp_path):
    """A binary classifier with an n-gram bag starts a 5-class one: embedding and layers copied, the
    head and the bag (one weight per class each) left as initialised."""
    net = {**NET, "pooling": "max", "ngram_buckets": 50}
    source = TextClassifier(**net)
    torch.nn.init.normal_(source.net.ngrams.weight)
    tokenizer = Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")).to_str()
    ckpt = {checkpoint.WEIGHTS_KEY: source.state_dict(), checkpoint.HPARAMS_KEY: {},
            checkpoint.DATAMODULE_KEY: {checkpoint.TOKENIZER_KEY: tokenizer}}  # fmt: skip
    torch.save(ckpt, tmp_path / "binary.ckpt")
    model = TextClassifier(**net, class_names=["a", "b", "c", "d", "e"])
    names = copy_network(str(tmp_path / "binary.ckpt"), model)
    assert model.net.ngrams.weight.shape == (50, 5) and not model.net.ngrams.weight.any()
    assert names and not any(k.startswith(("head.", "ngrams.")) for k in names)
    assert torch.equal(model.net.embedding.weight, source.net.embedding.weight)


def test_fit_counts_the_ngram_nb_ratios_on_the_labelled_training_reviews_and_saves_them(data_with_unlabelled, tmp_path):
    """The scale in the checkpoint is the one the training split's reviews give (validation excluded);
    a classifier started from that checkpoint counts its own."""
    import yaml

    from rnn_lightning.text import TextDataModule

    args = [*tiny_cli_args(data_with_unlabelled, tmp_path), "--model.ngram_buckets", "4099", "--model.ngram_nb", "true",
            "--trainer.max_epochs", "1"]  # fmt: skip
    main(["fit", *args])
    saved = checkpoint.load_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")[checkpoint.WEIGHTS_KEY]["net.ngram_scale"]
    config = yaml.safe_load((ckpt_dir(tmp_path).parent / "config.yaml").read_text())
    dm = TextDataModule(**config["data"])
    dm.prepare_data(), dm.setup("fit")
    model = TextClassifier(vocab_size=64, embed_dim=16, hidden_size=8, ngram_buckets=4099, ngram_nb=True)
    model.net.fit_ngram_scale(dm.batches("fit", size=7))  # batches of any size count the same
    assert (saved != 0).sum() > 100 and torch.allclose(saved, model.net.ngram_scale)
    fresh = TextClassifier(vocab_size=64, embed_dim=16, hidden_size=8, ngram_buckets=4099, ngram_nb=True)
    assert "ngram_scale" not in copy_network(str(ckpt_dir(tmp_path) / "last.ckpt"), fresh)
    assert torch.equal(fresh.net.ngram_scale, torch.ones(4099, 1))


def test_the_teacher_objective_learns_the_teachers_probabilities_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    model = SemiSupervisedClassifier(**NET, pooling="max", distillation=1.0, teacher="unused.ckpt")
    teacher = TextClassifier(**NET, pooling="max").net.eval().requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model._teacher = (teacher,)
    model.train()
    tokens, labels = torch.randint(1, 64, (6, 10)), torch.tensor([0, 1, 0, 1, 1, 0])
    model._unlabelled = torch.randint(1, 64, (9, 10))
    loss = model._step((tokens, labels), "train")
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert not any(k.startswith("_teacher") for k in model.state_dict())  # never in a checkpoint
    model._teacher = (teacher, teacher)  # an ensemble averages its probabilities: two alike are one
    torch.manual_seed(3)
    single = model.extra_loss(tokens, labels, model.net.embed(tokens), loss.detach())
    model._teacher = (teacher,)
    torch.manual_seed(3)
    assert torch.allclose(single, model.extra_loss(tokens, labels, model.net.embed(tokens), loss.detach()))
    # the soft-label loss is smallest at the teacher's own probabilities, binary and K-class alike
    target = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    at_target = soft_label_loss(torch.logit(target[:, 1]), target)
    assert at_target < soft_label_loss(torch.tensor([2.0, -0.5]), target)
    three = torch.tensor([[0.2, 0.5, 0.3]])
    assert soft_label_loss(three.log(), three) < soft_label_loss(torch.zeros(1, 3), three)


@pytest.fixture(scope="module")
def teacher(data_with_unlabelled, tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    main(["fit", *tiny_cli_args(data_with_unlabelled, root), "--trainer.max_epochs", "1"])
    return ckpt_dir(root) / "last.ckpt"


def test_a_student_trains_from_a_teacher_with_its_tokenizer(teacher, data_with_unlabelled, tmp_path, cli):
    args = [*tiny_cli_args(data_with_unlabelled, tmp_path), "--data.unlabelled", "true",
            "--model.teacher", f"[{teacher}, {teacher}]", "--model.distillation", "1", "--trainer.max_epochs", "1"]  # fmt: skip
    cli("fit", *args)
    student = checkpoint.load_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")
    # the teacher's tokenizer came along (data.tokenizer_from is linked to model.teacher), its weights did not
    assert checkpoint.tokenizer_json(student) == checkpoint.tokenizer_json(checkpoint.load_checkpoint(teacher))
    assert student["state_dict"].keys() == checkpoint.load_checkpoint(teacher)["state_dict"].keys()
    assert student["hyper_parameters"]["teacher"] == [str(teacher), str(teacher)]  # an ensemble of two


def test_the_teacher_objective_refuses_what_it_cannot_use_in_one_line(teacher, data_with_unlabelled, tmp_path, cli):
    args = [*tiny_cli_args(data_with_unlabelled, tmp_path), "--trainer.max_epochs", "1"]
    line = one_line_error(cli("fit", *args, "--model.distillation", "1", "--data.unlabelled", "true", check=False))
    assert line.startswith("error: model.distillation: needs model.teacher")
    line = one_line_error(cli("fit", *args, "--model.distillation", "1", "--model.teacher", str(teacher), check=False))
    assert line.startswith("error: model.distillation: needs data.unlabelled: true")
    missing = str(tmp_path / "none.ckpt")
    line = one_line_error(cli("fit", *args, "--data.unlabelled", "true", "--model.distillation", "1",
                              "--model.teacher", missing, check=False))  # fmt: skip
    assert line.startswith("error: data.tokenizer_from (model.init_from or model.teacher):") and missing in line
