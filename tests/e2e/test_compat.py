"""Checkpoints and saved ``config.yaml`` files written by the code before the package's reorganisation
(``tests/fixtures/v1``: tiny models on tiny data, the class then named IMDBDataModule, a language model
with an unused head) still load, predict the same, and resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnn_lightning import checkpoint
from rnn_lightning.inference import Predictor
from tests.helpers import ckpt_dir, make_reviews, write_splits

V1 = Path(__file__).parents[1] / "fixtures" / "v1"


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory) -> Path:
    """The data the fixtures were trained on (the same generator and seeds)."""
    return write_splits(tmp_path_factory.mktemp("v1data"), make_reviews(64, seed=1), make_reviews(32, seed=2))


@pytest.mark.parametrize("name", ["classifier_rnn", "classifier_bigru"])
def test_an_old_classifier_predicts_what_it_predicted_then(name):
    expected = json.loads((V1 / "expected.json").read_text())[name]
    got = Predictor.from_checkpoint(str(V1 / f"{name}.ckpt"))(expected["texts"])
    for g, e in zip(got, expected["predictions"], strict=True):
        assert g["label"] == e["label"]
        if e["probs"] is not None:
            for k, p in e["probs"].items():
                assert g["probs"][k] == pytest.approx(p, abs=1e-6)


def test_upgrading_an_old_language_model_drops_its_unused_head_and_its_optimizer_slots():
    ckpt = checkpoint.load_checkpoint(V1 / "language_model.ckpt")
    assert ckpt[checkpoint.FORMAT_KEY] == checkpoint.FORMAT and checkpoint.DATAMODULE_KEY in ckpt
    assert not [k for k in ckpt[checkpoint.WEIGHTS_KEY] if k.startswith("net.head.")]
    old = torch.load(V1 / "language_model.ckpt", weights_only=True)
    (state,), (old_state,) = ckpt[checkpoint.OPTIMIZERS_KEY], old[checkpoint.OPTIMIZERS_KEY]
    assert len(state["param_groups"][0]["params"]) == len(old_state["param_groups"][0]["params"]) - 2
    # the adaptive softmax's first weight was parameter 11 (after the two head tensors), now 9
    assert torch.equal(state["state"][9]["exp_avg"], old_state["state"][11]["exp_avg"])


def test_the_network_the_server_and_the_serving_path_import_no_lightning():
    code = (
        "import sys, rnn_lightning.network.text_rnn, rnn_lightning.serving, rnn_lightning.inference, "
        "rnn_lightning.server, rnn_lightning.explain; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _resume_args(config: Path, ckpt: Path, data: Path, root: Path) -> list[str]:
    return [
        "--config", str(config), "--ckpt_path", str(ckpt),
        "--data.dataset", str(data), "--data.cache_dir", str(root / "cache"),
        "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2",
    ]  # fmt: skip


def test_an_old_run_resumes_from_its_saved_config_and_checkpoint(cli, fixture_data, tmp_path):
    cli("fit", *_resume_args(V1 / "classifier_rnn.config.yaml", V1 / "classifier_rnn.ckpt", fixture_data, tmp_path))
    resumed = checkpoint.load_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")
    old = checkpoint.load_checkpoint(V1 / "classifier_rnn.ckpt")
    assert resumed["epoch"] == old["epoch"] + 1
    assert checkpoint.tokenizer_json(resumed) == checkpoint.tokenizer_json(old)


def test_an_old_language_model_resumes(fixture_data, tmp_path):
    from rnn_lightning.models import LanguageModel
    from rnn_lightning.training.cli import main

    args = _resume_args(V1 / "language_model.config.yaml", V1 / "language_model.ckpt", fixture_data, tmp_path)
    main(["fit", *args], model_class=LanguageModel)  # what `rnn-lightning pretrain` runs
    resumed = checkpoint.load_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")
    assert resumed["epoch"] == 1 and not [k for k in resumed[checkpoint.WEIGHTS_KEY] if k.startswith("net.head.")]
