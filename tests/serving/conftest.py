"""For the server's tests: the tracked v1 classifier (two classes), a three-class one made from it, and a
headless Chromium."""

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import SUBPROCESS_ENV

V1 = Path(__file__).parents[1] / "fixtures" / "v1"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


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


@pytest.fixture()
def chrome(tmp_path):
    """Headless Chromium driven by chromedriver (selenium), keeping its console for ``browser.get_log("browser")``;
    its profile, settings and caches under ``tmp_path``."""
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium/chromedriver (apt install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="no selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Chromium's GLib settings and caches default to the home folder: they go under tmp_path instead
    home = {"GSETTINGS_BACKEND": "memory", "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "XDG_CONFIG_HOME": str(tmp_path / "config")}  # fmt: skip
    browser = webdriver.Chrome(service=Service(DRIVER, env={**SUBPROCESS_ENV, **home}), options=options)
    try:
        yield browser
    finally:
        browser.quit()
