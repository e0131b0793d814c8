"""No input runs code: checkpoints (any path or scheme), configs and saved config.yaml files (the classes and
functions they name), and export folders are checked before anything from them is loaded or imported.

Every hostile input here would write a marker file under tmp_path if its code ran; each test asserts the
one line it gets and that the marker is absent.
"""

import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.inference import Predictor
from rnn_lightning.serving import ExportedPredictor
from rnn_lightning.training.trust import EXTRA_IMPORTS_ENV
from tests.helpers import ckpt_dir, one_line_error, runs, tiny_cli_args


class WritesMarker:
    """Unpickling it opens (creates) ``path``: what a hostile pickle could do instead."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def trained(parquet_dir, tmp_path_factory):
    """One epoch through the CLI with classes a config may name (a Lightning callback, LightningCLI's
    ReduceLROnPlateau): (base args, run folder, a copy of its last.ckpt, an export of that copy)."""
    from rnn_lightning.training.cli import main

    root = tmp_path_factory.mktemp("trusted")
    args = [
        *tiny_cli_args(parquet_dir, root),
        "--trainer.max_epochs", "1",
        "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping", "--trainer.callbacks.monitor", "val/loss",
        "--lr_scheduler", "ReduceLROnPlateau", "--lr_scheduler.monitor", "val/loss",
    ]  # fmt: skip
    main(["fit", *args])
    last = shutil.copy(ckpt_dir(root) / "last.ckpt", root / "epoch1.ckpt")  # the run's own goes on in a resume
    export = Predictor.from_checkpoint(str(last)).export(str(root / "export"))
    return args, root / "lightning_logs" / "version_0", Path(last), export


def test_saved_config_with_allowed_classes_resumes(cli, trained):
    _, run, _, _ = trained
    saved = (run / "config.yaml").read_text()
    assert "EarlyStopping" in saved and "ReduceLROnPlateau" in saved
    result = cli("fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.max_epochs", "2")
    assert "Restored all states" in result.output
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # the second epoch


@pytest.mark.parametrize(
    "path, expected",
    [
        ("https://example.com/model.ckpt", "is a URL; download it and pass the local path"),
        ("http://127.0.0.1:9/x.ckpt", "is a URL; download it and pass the local path"),
        ("s3://bucket/model.ckpt", "is a URL; download it and pass the local path"),
        ("registry", "model registry is not supported"),
        ("registry:my-model:v2", "model registry is not supported"),
        ("hpc", "holds no hpc_ckpt_*.ckpt"),
    ],
)
def test_ckpt_path_that_is_not_a_local_file_is_refused(cli, tiny_args, tmp_path, path, expected):
    line = one_line_error(cli("test", *tiny_args, "--ckpt_path", path, check=False))
    assert line.startswith("error: ckpt_path: ") and expected in line
    assert runs(tmp_path) == []


def test_file_url_goes_through_the_checkpoint_check(cli, trained, tiny_args, tmp_path):
    _, _, last, _ = trained
    marker = tmp_path / "unpickled"
    hostile = torch.load(last, weights_only=True)
    hostile["extra"] = WritesMarker(marker)
    torch.save(hostile, tmp_path / "hostile.ckpt")
    for weights_only in ([], ["--weights_only", "false"]):
        line = one_line_error(
            cli("fit", *tiny_args, "--ckpt_path", (tmp_path / "hostile.ckpt").as_uri(), *weights_only, check=False)
        )
        assert line.startswith(("error: ckpt_path: ", "error: weights_only: "))
    assert not marker.exists()
    result = cli("test", *tiny_args, "--ckpt_path", last.as_uri())  # a file:// URL of a good checkpoint: its path
    assert "test/acc" in result.output


def test_weights_only_false_is_refused(cli, trained, tiny_args, tmp_path):
    _, _, last, _ = trained
    line = one_line_error(cli("test", *tiny_args, "--ckpt_path", str(last), "--weights_only", "false", check=False))
    assert line.startswith("error: weights_only: false")
    (tmp_path / "shared.yaml").write_text("weights_only: false\n")
    line = one_line_error(cli("test", *tiny_args, "--config", str(tmp_path / "shared.yaml"), check=False))
    assert line.startswith("error: weights_only: false")


@pytest.mark.parametrize("function", ["os._exit", "os.umask", "builtins.print", "math.exp"])
def test_function_from_elsewhere_is_refused(cli, tiny_args, tmp_path, function):
    result = cli(
        "fit", *tiny_args, "--lr_scheduler", "torch.optim.lr_scheduler.LambdaLR",
        "--lr_scheduler.lr_lambda", function, check=False,
    )  # fmt: skip
    line = one_line_error(result)  # os._exit would have ended this process with code 0
    assert line.startswith(f"error: lr_scheduler.lr_lambda: {function!r} is not allowed;")
    assert "torch.optim" in line and EXTRA_IMPORTS_ENV in line
    assert runs(tmp_path) == []


def test_class_beside_the_config_is_not_imported(cli, tiny_args, tmp_path, monkeypatch):
    module = f"beside_{tmp_path.name.replace('-', '_')}"  # a name no other test imports
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from lightning.pytorch.callbacks import Callback\n\n\nclass Sneaky(Callback):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, as a module beside a config often is
    config = tmp_path / "config.yaml"
    config.write_text(f"trainer:\n  callbacks:\n    - class_path: {module}.Sneaky\n")
    line = one_line_error(cli("fit", *tiny_args, "--config", str(config), check=False))
    assert line.startswith(f"error: trainer.callbacks: '{module}.Sneaky' is not allowed;")
    assert not marker.exists() and module not in sys.modules
    # the person running the command may trust their own package
    monkeypatch.setenv(EXTRA_IMPORTS_ENV, module)
    result = cli("fit", *tiny_args, "--config", str(config), "--print_config")
    assert f"class_path: {module}.Sneaky" in result.output and marker.exists()


def test_allowed_classes_parse(cli, tiny_args):
    result = cli(
        "fit", *tiny_args, "--trainer.callbacks+=LearningRateMonitor",
        "--lr_scheduler", "rnn_lightning.training.schedules.CosineOverFit", "--print_config",
    )  # fmt: skip
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in result.output
    assert "rnn_lightning.training.schedules.CosineOverFit" in result.output


def rewrite_archive(source, target, edit) -> None:
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    edit(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def member(members: dict, suffix: str) -> str:
    return next(name for name in members if name.endswith(suffix))


def test_own_export_loads_and_predicts_as_the_checkpoint(trained):
    # check_archive admits torch.export.save's inner layout only: a torch that writes another refuses this export
    _, _, last, export = trained
    texts = ["A wonderful film.", "Dull, and far too long.", ""]
    exported, direct = ExportedPredictor(str(export))(texts), Predictor.from_checkpoint(str(last))(texts)
    assert [r["label"] for r in exported] == [r["label"] for r in direct]
    assert exported[0]["prob"] == pytest.approx(direct[0]["prob"], abs=1e-5)


def test_tampered_export_is_refused_before_torch_reads_it(trained, tmp_path):
    *_, export = trained
    marker = tmp_path / "ran"

    def shape_expression(members):  # torch.export.load would sympify (eval) it
        name = member(members, "models/model.json")
        text = members[name].decode()
        start = text.index('"expr_str": "') + len('"expr_str": "')
        end = text.index('"', start)
        members[name] = (text[:start] + f"open('{marker}', 'w')" + text[end:]).encode()

    def sample_inputs(members):  # torch.export.load would retry it with weights_only=False
        buffer = io.BytesIO()
        torch.save(WritesMarker(marker), buffer)
        members[member(members, "sample_inputs/model.pt")] = buffer.getvalue()

    def graph_call(members):  # a node calling something that is not an operator
        name = member(members, "models/model.json")
        members[name] = members[name].replace(b'"torch.ops.aten.embedding.default"', b'"torch.os.system"')

    def pickled_weight(members):
        name = member(members, "model_weights_config.json")
        config = json.loads(members[name])
        next(iter(config["config"].values()))["use_pickle"] = True
        members[name] = json.dumps(config).encode()

    def extra_member(members):
        members[member(members, "models/model.json").replace("models/model.json", "data/constants/opaque_0")] = b""

    cases = {
        shape_expression: "shape expression",
        sample_inputs: "sample inputs hold pickled Python objects",
        graph_call: "its graph calls 'torch.os.system'",
        pickled_weight: "pickled or opaque payload",
        extra_member: "data/constants/opaque_0",
    }
    for edit, expected in cases.items():
        folder = tmp_path / edit.__name__
        shutil.copytree(export, folder)
        rewrite_archive(export / "model.pt2", folder / "model.pt2", edit)
        with pytest.raises(InputError, match="not an rnn-lightning export") as refused:
            ExportedPredictor(str(folder))
        assert expected in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()


def test_an_archive_with_two_entries_of_one_name_is_refused(trained, tmp_path):
    """zipfile reads the last of two same-named entries, torch.export.load the first: a checked program could
    hide another one that is loaded instead."""
    *_, export = trained
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    with zipfile.ZipFile(export / "model.pt2") as archive:
        name = member(archive.namelist(), "models/model.json")
        program = archive.read(name)
    with zipfile.ZipFile(folder / "model.pt2", "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr(name, program)
    with pytest.raises(InputError, match="not an rnn-lightning export") as refused:
        ExportedPredictor(str(folder))
    assert f"holds two entries named {name!r}" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "file, content, expected",
    [
        ("model.pt2", b"not a zip", "model.pt2: unreadable (BadZipFile"),
        ("tokenizer.json", b"{not json", "tokenizer.json: not a tokenizers JSON"),
        ("meta.json", b'{"class_names": [0, 1]}', "meta.json: class_names is [0, 1]"),
        ("meta.json", b'{"class_names": ["a", "b", "c"]}', "probabilities per text"),
        ("meta.json", b"[]", "meta.json: expected JSON with class_names"),
    ],
)
def test_junk_in_an_export_folder_is_one_line(trained, tmp_path, file, content, expected):
    *_, export = trained
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    (folder / file).write_bytes(content)
    with pytest.raises(InputError, match="^" + str(folder)) as refused:
        ExportedPredictor(str(folder))
    assert expected in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "spoil, expected",
    [
        (lambda c: c[checkpoint.DATAMODULE_KEY].update({checkpoint.TOKENIZER_KEY: "{not json"}), "holds a tokenizer"),
        (lambda c: c[checkpoint.DATAMODULE_KEY].update({checkpoint.TOKENIZER_KEY: "{}"}), "holds a tokenizer"),
        (lambda c: c[checkpoint.HPARAMS_KEY].update(class_names="neg,pos"), "holds class_names neg,pos"),
        (lambda c: c[checkpoint.HPARAMS_KEY].update(class_names=[0, 1]), "holds class_names [0, 1]"),
        (lambda c: c[checkpoint.HPARAMS_KEY].update(class_names=["pos", "pos"]), "holds class_names"),
    ],
)
def test_checkpoint_with_malformed_tokenizer_or_classes(cli, trained, tiny_args, tmp_path, spoil, expected):
    _, _, last, _ = trained
    ckpt = torch.load(last, weights_only=True)
    spoil(ckpt)
    path = tmp_path / "spoilt.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(InputError, match="^ckpt_path: ") as refused:
        Predictor.from_checkpoint(str(path))
    assert expected in str(refused.value)
    line = one_line_error(cli("predict", *tiny_args, "--ckpt_path", str(path), check=False))
    assert line == f"error: {refused.value}"
