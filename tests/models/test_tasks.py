"""The task (rnn_lightning/tasks.py): the loss, probabilities, decisions, metrics and explained logit of
two classes and of K, each against the formula it stands for."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rnn_lightning.errors import InputError
from rnn_lightning.models import TextClassifier
from rnn_lightning.tasks import Binary, Multiclass, Task, make_task


def test_make_task_chooses_by_the_number_of_classes():
    assert type(make_task(["neg", "pos"])) is Binary and make_task(["neg", "pos"]).num_outputs == 1
    three = make_task(["a", "b", "c"])
    assert type(three) is Multiclass and three.num_outputs == 3 and three.class_names == ["a", "b", "c"]


def test_the_binary_loss_is_bce_on_logits_and_its_weighted_mean():
    task = make_task(["neg", "pos"])
    logits, labels = torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1, 1, 0, 0])
    assert torch.equal(task.loss(logits, labels), F.binary_cross_entropy_with_logits(logits, labels.float()))
    weight = task.class_weight([1.0, 3.0], None)
    per_text = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    w = torch.tensor([3.0, 3.0, 1.0, 1.0])  # w[y]
    assert torch.allclose(task.loss(logits, labels, weight), (w * per_text).sum() / w.sum())
    # not the plain mean of w[y] * loss (which a careless weighting would give)
    assert not torch.allclose(task.loss(logits, labels, weight), (w * per_text).mean())


def test_the_multiclass_loss_is_cross_entropy_with_its_class_weights():
    task = make_task(["a", "b", "c"])
    logits, labels = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 2, 1, 0])
    weight = task.class_weight("balanced", [60, 30, 10])
    assert torch.allclose(weight, torch.tensor([100 / 180, 100 / 90, 100 / 30]))  # N / (K * count)
    per_text = F.cross_entropy(logits, labels, reduction="none")
    w = weight[labels]
    assert torch.allclose(task.loss(logits, labels, weight), (w * per_text).sum() / w.sum())
    assert torch.equal(task.loss(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("bad", ["heavy", [1.0, 2.0], [0.0, 0.0, 0.0], [1.0, -1.0, 1.0]])
def test_class_weights_it_cannot_use_are_refused_naming_the_field(bad):
    with pytest.raises(InputError, match="model.class_weights: expected none, balanced or 3 numbers"):
        make_task(["a", "b", "c"]).class_weight(bad, None)
    with pytest.raises(InputError, match="model.class_weights: balanced needs a training count per class"):
        make_task(["a", "b", "c"]).class_weight("balanced", [5, 0, 3])
    assert make_task(["a", "b"]).class_weight(None, None) is None
    assert make_task(["a", "b"]).class_weight("none", None) is None


def test_probabilities_are_per_class_in_class_order():
    binary = make_task(["neg", "pos"]).probabilities(torch.tensor([0.0, 2.0]))
    assert binary.shape == (2, 2) and torch.allclose(binary[:, 1], torch.sigmoid(torch.tensor([0.0, 2.0])))
    assert torch.allclose(binary.sum(-1), torch.ones(2))
    logits = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16)
    three = make_task(["a", "b", "c"]).probabilities(logits)
    assert three.dtype == torch.float32 and torch.allclose(three, torch.softmax(logits.float(), -1))


def test_a_decision_names_the_most_probable_class_its_probability_and_every_class():
    task = make_task(["a", "b", "c"])
    assert task.decision([0.2, 0.5, 0.3]) == {"label": "b", "prob": 0.5, "probs": {"a": 0.2, "b": 0.5, "c": 0.3}}
    assert task.decision([0.4, 0.4, 0.2])["label"] == "a"  # a tie: the first class
    assert task.no_decision() == {"label": None, "prob": None, "probs": None}
    assert task.explained(task.decision([0.2, 0.5, 0.3])) == 1
    binary = make_task(["neg", "pos"])
    decided = binary.decision([0.25, 0.75])
    assert binary.columns == ["label", "prob", "prob_neg", "prob_pos"]
    assert binary.cells(decided) == {"label": "pos", "prob": 0.75, "prob_neg": 0.25, "prob_pos": 0.75}


def test_the_explained_logit_is_minus_the_logit_for_class_0_and_the_class_logit_for_k():
    binary = make_task(["neg", "pos"])
    logits = torch.tensor([[1.5, -2.0], [0.5, 3.0]])  # (B, T): leading dimensions pass through
    target = torch.tensor([[0, 1], [1, 0]])
    assert torch.equal(binary.class_logit(logits, target), torch.tensor([[-1.5, -2.0], [0.5, -3.0]]))
    three = make_task(["a", "b", "c"])
    logits = torch.arange(12.0).view(2, 2, 3)  # (B, T, K)
    assert torch.equal(
        three.class_logit(logits, torch.tensor([[0, 2], [1, 1]])), torch.tensor([[0.0, 5.0], [7.0, 10.0]])
    )


def test_each_stage_has_its_metric_names_and_training_no_auroc():
    binary, three = make_task(["neg", "pos"]), make_task(["a", "b", "c"])
    labels = torch.tensor([0, 1, 2, 2])
    names = {}
    for task, y in ((binary, labels % 2), (three, labels)):
        for stage in ("train", "val"):
            metrics = task.metrics(stage)
            logits = torch.randn(4, generator=torch.Generator().manual_seed(1)) if task is binary else torch.randn(4, 3)
            metrics.update(task.metric_input(logits), y)
            names[(task.num_outputs, stage)] = set(metrics.compute())
    assert names[(1, "val")] == {"val/acc", "val/f1", "val/auroc", "val/balanced_acc"}
    assert names[(1, "train")] == {"train/acc", "train/f1", "train/balanced_acc"}
    per_class = {"val/f1_a", "val/f1_b", "val/f1_c"}
    assert names[(3, "val")] == {"val/acc", "val/f1", "val/auroc", "val/balanced_acc"} | per_class
    assert names[(3, "train")] == {
        "train/acc",
        "train/f1",
        "train/balanced_acc",
        "train/f1_a",
        "train/f1_b",
        "train/f1_c",
    }
    assert set(binary.test_curves()) == {"confusion_matrix", "roc"} and set(three.test_curves()) == {"confusion_matrix"}


def test_binary_balanced_accuracy_is_the_mean_recall_of_the_class_each_probability_decides():
    task = make_task(["neg", "pos"])
    metrics = task.metrics("val")
    # a probability of exactly 0.5 decides class 1; recalls: class 0 1/3, class 1 1/1
    metrics.update(torch.tensor([0.5, 0.2, 0.7, 0.9]), torch.tensor([0, 0, 0, 1]))
    assert metrics.compute()["val/balanced_acc"].item() == pytest.approx((1 / 3 + 1) / 2)


def test_the_classifier_takes_its_loss_outputs_probabilities_and_monitor_from_the_task():
    model = TextClassifier(class_names=["a", "b", "c"], class_weights=[1.0, 2.0, 3.0], vocab_size=20, embed_dim=4,
                           hidden_size=3, num_layers=1)  # fmt: skip
    assert type(model.task) is Multiclass and model.net.head.out_features == model.task.num_outputs
    tokens, labels = torch.randint(1, 20, (5, 7)), torch.tensor([0, 1, 2, 0, 1])
    logits = model.eval()(tokens)
    assert torch.equal(model.loss(logits, labels), F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 2, 3])))
    assert torch.equal(model.predict_step((tokens, torch.arange(5)), 0), model.task.probabilities(logits))
    assert (TextClassifier.CHECKPOINT_MONITOR, TextClassifier.CHECKPOINT_MODE) == (Task.MONITOR, Task.MONITOR_MODE)
    assert (Task.MONITOR, Task.MONITOR_MODE) == ("val/acc", "max")
    assert model.train_metrics.prefix == "train/" and model.test_metrics.prefix == "test/"


def test_the_task_module_imports_no_lightning_and_no_torchmetrics():
    code = "import sys, rnn_lightning.tasks; print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'torchmetrics', 'pytorch_lightning'}))"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
