"""The presets in configs/: each recipe is one complete file that the CLI resolves on its own, opens with
the command that runs it and states no cosine length (CosineOverFit sizes it from the run); each trainer
fragment combines with base.yaml and changes only the trainer settings it names. And CosineOverFit: its
"epoch" interval is PyTorch's CosineAnnealingLR(T_max=max_epochs) to the bit, its "step" interval the
closed-form cosine over the run's optimizer steps."""

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from rnn_lightning.models import LanguageModel, SemiSupervisedClassifier
from rnn_lightning.training.cli import main
from rnn_lightning.training.schedules import CosineOverFit
from tests.helpers import ROOT, ckpt_dir, make_reviews, one_line_error, tiny_cli_args, write_splits

CONFIGS = ROOT / "configs"
FRAGMENTS = {"bf16.yaml", "ddp.yaml", "ddp_cpu.yaml"}  # trainer concerns only, added after a recipe
ALL = sorted(p.name for p in CONFIGS.glob("*.yaml"))
RECIPES = [name for name in ALL if name not in FRAGMENTS]


def load(name: str) -> dict:
    """The file's settings, with each group given as a nested file (``optimizer: optimizer/adamw.yaml``) read in."""
    stated = yaml.safe_load((CONFIGS / name).read_text()) or {}
    for key, value in stated.items():
        if isinstance(value, str) and value.endswith(".yaml"):
            stated[key] = yaml.safe_load((CONFIGS / value).read_text())
    return stated


def resolve(capsys, *args: str, model_class=SemiSupervisedClassifier) -> dict:
    """``fit ... --print_config`` in this process: the configuration the run would use."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--print_config"], model_class=model_class)
    out, err = capsys.readouterr()
    assert exit_.value.code in (0, None), err[-2000:]
    return yaml.safe_load(out)


def program(name: str) -> str:
    """The command the file's first line runs: ``fit`` or ``pretrain``."""
    first = (CONFIGS / name).read_text().splitlines()[0]
    match = re.match(r"# python cli\.py (fit|pretrain) +--config configs/(\S+)", first)
    assert match, f"{name} must open with the command that runs it, not {first!r}"
    return match.group(1)


def contains(resolved, stated) -> bool:
    """Whether every value the file states is the resolved one."""
    if isinstance(stated, dict):
        return isinstance(resolved, dict) and all(k in resolved and contains(resolved[k], v) for k, v in stated.items())
    return resolved == stated


def keys(tree) -> set[str]:
    if isinstance(tree, dict):
        return set(tree) | {k for v in tree.values() for k in keys(v)}
    if isinstance(tree, list):
        return {k for v in tree for k in keys(v)}
    return set()


def test_configs_are_recipes_and_trainer_fragments():
    fragments = {name for name in ALL if set(load(name)) <= {"trainer"}}
    assert fragments == FRAGMENTS
    assert {"base.yaml", "bigru.yaml", "bigru_bigram.yaml", "teacher.yaml", "student.yaml", "lm.yaml"} <= set(RECIPES)
    assert {"lm_finetune.yaml", "sst5.yaml"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_resolves_alone(name, capsys):
    model_class = LanguageModel if program(name) == "pretrain" else SemiSupervisedClassifier  # cli.py's
    first = (CONFIGS / name).read_text().splitlines()[0]
    assert re.search(rf"--config configs/{re.escape(name)}(\s|$)", first) and first.count("--config") == 1
    stated = load(name)
    resolved = resolve(capsys, "--config", str(CONFIGS / name), model_class=model_class)
    assert contains(resolved, stated)
    assert "T_max" not in keys(stated)  # a cosine is sized by the run: CosineOverFit
    scheduler = resolved["lr_scheduler"]
    assert scheduler is None or scheduler["class_path"] == "rnn_lightning.training.schedules.CosineOverFit"


@pytest.mark.parametrize("name", sorted(FRAGMENTS))
def test_fragment_combines_with_base(name, capsys):
    first = (CONFIGS / name).read_text().splitlines()[0]
    assert first.startswith(f"# python cli.py fit --config configs/base.yaml --config configs/{name} ")
    base = resolve(capsys, "--config", str(CONFIGS / "base.yaml"))
    both = resolve(capsys, "--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / name))
    stated = load(name)
    assert contains(both, stated)
    expected = copy.deepcopy(base)  # base's configuration, but for the trainer settings the fragment names
    for key in stated["trainer"]:
        expected["trainer"][key] = both["trainer"][key]
    assert both == expected


@pytest.mark.parametrize("name", ALL)
def test_comments_give_reasons_and_shapes_only(name):
    comments = "\n".join(line for line in (CONFIGS / name).read_text().splitlines() if "#" in line)
    for pattern in (r"README", r"BENCHMARKS", r"\b\d+(\.\d+)?x\b", r"\b20\d\d-\d\d", r"\bsweep\b", r"\bwas\b"):
        assert not re.search(pattern, comments), f"{name}: {pattern!r} in its comments (figures: docs/results.md)"


# ---------------------------------------------------------------- CosineOverFit


def optimizers(n: int) -> list[torch.optim.Optimizer]:
    """``n`` identical optimizers with two parameter groups at different learning rates."""
    return [
        torch.optim.AdamW(
            [
                {"params": [torch.zeros(1, requires_grad=True)]},
                {"params": [torch.zeros(1, requires_grad=True)], "lr": 3e-4},
            ],
            lr=2e-3,
        )
        for _ in range(n)
    ]


def lrs(optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


@pytest.mark.parametrize("epochs", [1, 2, 6, 7])
@pytest.mark.parametrize("eta_min", [0.0, 1e-5])
def test_epoch_interval_is_pytorchs_cosine_annealing_to_the_bit(epochs, eta_min):
    ours_opt, theirs_opt = optimizers(2)
    ours = CosineOverFit(ours_opt, eta_min=eta_min, interval="epoch")
    ours.T_max = epochs  # what the CLI sets: trainer.max_epochs
    theirs = torch.optim.lr_scheduler.CosineAnnealingLR(theirs_opt, T_max=epochs, eta_min=eta_min)
    for _ in range(epochs):
        assert lrs(ours_opt) == lrs(theirs_opt)  # exactly: the same floats
        ours_opt.step(), theirs_opt.step(), ours.step(), theirs.step()
    assert lrs(ours_opt) == lrs(theirs_opt) == pytest.approx([eta_min, eta_min])


@pytest.mark.parametrize("total", [1, 5, 176])
def test_step_interval_is_the_closed_form_cosine_over_the_runs_steps(total):
    opt = optimizers(1)[0]
    scheduler = CosineOverFit(opt, eta_min=1e-5)  # interval "step" by default
    assert scheduler.interval == "step"
    scheduler.total_steps = total  # what the CLI sets: trainer.estimated_stepping_batches
    for t in range(total + 3):  # past the end it stays at eta_min
        done = min(t, total) / total
        assert lrs(opt) == [1e-5 + (base - 1e-5) * (1 + math.cos(math.pi * done)) / 2 for base in (2e-3, 3e-4)]
        opt.step(), scheduler.step()


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_unsized_schedule_keeps_the_learning_rate_and_saves_no_length(interval):
    opt = optimizers(1)[0]
    scheduler = CosineOverFit(opt, interval=interval)
    for _ in range(3):
        opt.step(), scheduler.step()
    assert lrs(opt) == [2e-3, 3e-4]
    scheduler.total_steps = scheduler.T_max = 4
    assert not {"total_steps", "T_max", "interval"} & set(scheduler.state_dict())  # a resumed run sizes its own


def test_the_import_path_of_saved_configs_still_works():
    from rnn_lightning.schedules import CosineOverFit as saved

    assert saved is CosineOverFit


# ---------------------------------------------------------------- the same learning rates in a real fit


@pytest.fixture()
def data(tmp_path) -> Path:
    return write_splits(tmp_path / "data", make_reviews(96, seed=1), make_reviews(48, seed=2))


def fit_weights(cli, data: Path, root: Path, *args: str) -> tuple[dict, dict]:
    cli("fit", *tiny_cli_args(data, root), *args)
    last = torch.load(ckpt_dir(root) / "last.ckpt", weights_only=True)
    return last["state_dict"], last


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_interval_fit_trains_exactly_as_cosine_annealing_with_t_max_max_epochs(cli, data, tmp_path):
    epochs = ["--trainer.max_epochs", "3"]
    ours, ours_ckpt = fit_weights(
        cli, data, tmp_path / "ours", *epochs,
        "--lr_scheduler", "rnn_lightning.training.schedules.CosineOverFit", "--lr_scheduler.init_args.interval", "epoch",
    )  # fmt: skip
    theirs, theirs_ckpt = fit_weights(
        cli, data, tmp_path / "theirs", *epochs, "--lr_scheduler", "CosineAnnealingLR", "--lr_scheduler.T_max", "3"
    )
    assert (
        ours_ckpt["lr_schedulers"][0]["last_epoch"] == theirs_ckpt["lr_schedulers"][0]["last_epoch"] == 3
    )  # per epoch
    assert_same_weights(ours, theirs)


def test_one_epoch_trains_at_the_base_rate_whatever_an_epoch_cosine_says(cli, data, tmp_path):
    """teacher.yaml: a cosine over epochs (T_max 2) first steps after the only epoch; no schedule is the same."""
    one = ["--trainer.max_epochs", "1", "--optimizer", "AdamW", "--optimizer.lr", "2e-3"]
    cosine, _ = fit_weights(
        cli, data, tmp_path / "cosine", *one, "--lr_scheduler", "CosineAnnealingLR", "--lr_scheduler.T_max", "2"
    )
    constant, _ = fit_weights(cli, data, tmp_path / "constant", *one)
    assert_same_weights(cosine, constant)


def test_epoch_interval_needs_max_epochs(cli, data, tmp_path):
    result = cli(
        "fit", *tiny_cli_args(data, tmp_path), "--trainer.max_epochs", "-1", "--trainer.max_steps", "2",
        "--lr_scheduler", "rnn_lightning.training.schedules.CosineOverFit", "--lr_scheduler.init_args.interval", "epoch",
        check=False,
    )  # fmt: skip
    assert "trainer.max_epochs" in one_line_error(result)
