"""Checkpoints for the server's tests: the tracked v1 classifier (two classes) and a three-class one made from it."""

from pathlib import Path

import pytest
import torch

V1 = Path(__file__).parents[1] / "fixtures" / "v1"


@pytest.fixture(scope="session")
def binary_ckpt() -> Path:
    return V1 / "classifier_bigru.ckpt"


@pytest.fixture(scope="session")
def three_class_ckpt(tmp_path_factory) -> Path:
    """The v1 classifier with a head of three classes, one named like markup."""
    ckpt = torch.load(V1 / "classifier_bigru.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["class_names"] = ["neg", "mixed", "<b>pos</b>"]
    weights = ckpt["state_dict"]
    width = weights["net.head.weight"].shape[1]
    gen = torch.Generator().manual_seed(0)
    weights["net.head.weight"] = torch.randn(3, width, generator=gen)
    weights["net.head.bias"] = torch.randn(3, generator=gen)
    path = tmp_path_factory.mktemp("three") / "three.ckpt"
    torch.save(ckpt, path)
    return path
