"""The page and the report as headless Chromium draws them: predict's report, a hand-made multi-label report,
and the served page after an explanation (with emoji before the words) and a prediction. Each reads the
rendered DOM and the browser's console (no SEVERE entry: no script error, no refused script or request)."""

import json

import pytest

from rnn_lightning import page
from rnn_lightning.inference import Predictor
from tests.helpers import ROOT
from tests.serving.test_server_process import serving

pytestmark = pytest.mark.slow

CLASSES = ["neg", "mixed", "<b>pos</b>"]  # three_class_ckpt's, one named like markup


def severe(browser) -> list[str]:
    """The console's SEVERE entries since the last call (reading the log empties it)."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def results(browser) -> list[dict]:
    """Each drawn result (section): its title, the chosen classes' line, each class's row, and the words."""
    from selenium.webdriver.common.by import By

    drawn = []
    for section in browser.find_elements(By.CSS_SELECTOR, "#results section.result"):
        rows = section.find_elements(By.CSS_SELECTOR, "table.probs tr")
        drawn.append(
            {
                "title": section.find_element(By.TAG_NAME, "h2").text
                if section.find_elements(By.TAG_NAME, "h2")
                else None,
                "label": section.find_element(By.CSS_SELECTOR, "[data-testid=label]").text,
                "head": section.find_element(By.CSS_SELECTOR, ".row").text,
                "probs": {
                    r.get_attribute("data-class"): float(r.find_element(By.CLASS_NAME, "prob").text) for r in rows
                },
                "bars": {
                    r.get_attribute("data-class"): r.find_element(By.CLASS_NAME, "bar").size["width"] for r in rows
                },
                "chosen": [r.get_attribute("data-class") for r in rows if r.get_attribute("data-chosen") == "true"],
                "legend": [e.find_element(By.XPATH, "..").text for e in section.find_elements(By.CLASS_NAME, "legend")],
                "words": [
                    (w.text, w.get_attribute("title").rsplit(": ", 1)[0])  # title: "token: score"
                    for w in section.find_elements(By.CSS_SELECTOR, "[data-testid=review] .w")
                ],
                "review": [r.text for r in section.find_elements(By.CSS_SELECTOR, "[data-testid=review]")],
            }
        )
    return drawn


def test_predicts_report_shows_every_review_with_a_bar_per_class(cli, three_class_ckpt, tmp_path, chrome):
    lines = ["A wonderful, brilliant movie. Loved it.", "", "<img src=x onerror=alert(1)> awful", "great plot"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    cli("predict", "--config", str(ROOT / "configs" / "base.yaml"), "--ckpt_path", str(three_class_ckpt),
        "--trainer.default_root_dir", str(tmp_path), "--data.predict_path", str(tmp_path / "in.txt"),
        "--prediction_writer.output", str(out), "--prediction_writer.explain", "true")  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    chrome.get((tmp_path / "out.html").as_uri())
    assert severe(chrome) == []
    assert chrome.find_element("id", "model").text == "4 explained predictions"
    drawn = results(chrome)
    explained = [row for row in rows if row["label"] is not None]
    assert len(drawn) == len(explained) == 3
    for shown, row in zip(drawn, explained, strict=True):
        assert shown["title"] == row["id"]
        assert [text for text, _ in shown["words"]] == [w["token"] for w in row["words"]]  # every word read
        assert shown["review"] == [" ".join(w["token"] for w in row["words"])]
        assert shown["probs"] == {name: pytest.approx(row[f"prob_{name}"], abs=1e-4) for name in CLASSES}
        assert all(width > 0 for width in shown["bars"].values()) and set(shown["bars"]) == set(CLASSES)
        assert shown["chosen"] == [row["label"]] and shown["label"] == row["label"]
        assert f'Attribution to "{row["target"]}"' in shown["legend"][0]
    headings = [h.text for h in chrome.find_elements("css selector", "#results > h2")]
    assert headings == ["2: empty review"]  # the row without text keeps its place, with its error
    assert chrome.execute_script("return document.querySelectorAll('#results img').length") == 0


def test_a_multi_label_report_marks_every_chosen_class(chrome, tmp_path):
    """Records as a multi-label task will decide them (``labels``, no ``label`` or ``prob``), beside a
    single-label one and a row without text."""
    words = [{"token": "funny", "score": 0.8}, {"token": "and", "score": 0.0}, {"token": "scary", "score": -0.3}]
    explained = {"words": words, "logit": 1.2, "baseline_logit": 0.7, "delta": 0.0}
    probs = {"comedy": 0.91, "drama": 0.12, "horror": 0.64}
    records = [
        {"id": "m", "error": "", "labels": ["comedy", "horror"], "probs": probs, "target": "horror", **explained},
        {"id": "none", "error": "", "labels": [], "probs": probs, "target": "drama", **explained},
        {
            "id": "s",
            "error": "",
            "label": "drama",
            "prob": 0.5,
            "probs": {"comedy": 0.5, "drama": 0.5},
            "target": "drama",
            **explained,
        },  # fmt: skip
        {"id": "e", "error": "empty review", "labels": None, "probs": None},
    ]
    (tmp_path / "report.html").write_text(page.report(records), encoding="utf-8")
    chrome.get((tmp_path / "report.html").as_uri())
    assert severe(chrome) == []
    multi, nothing, single = results(chrome)
    assert multi["chosen"] == ["comedy", "horror"] and multi["label"] == "comedy, horror"
    assert "probability" not in multi["head"] and multi["probs"] == probs
    assert multi["bars"]["comedy"] > multi["bars"]["horror"] > multi["bars"]["drama"] > 0
    assert 'Attribution to "horror"' in multi["legend"][0]
    assert [text for text, _ in multi["words"]] == ["funny", "and", "scary"]
    assert nothing["chosen"] == [] and nothing["label"] == "no class chosen"
    assert single["chosen"] == ["drama"] and "probability 0.5000" in single["head"]
    assert [h.text for h in chrome.find_elements("css selector", "#results > h2")] == ["e: empty review"]


def test_the_served_page_after_an_explanation_and_a_prediction(three_class_ckpt, tmp_path, chrome):
    """Emoji (two UTF-16 code units, one code point) before words: each coloured span is its own word."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    text = "🎬🍿 great film 😀 awful 🙂 plot"
    wait = WebDriverWait(chrome, 30)

    def ask(url: str) -> None:
        chrome.get(url)
        wait.until(lambda b: b.find_element(By.ID, "model").text)  # /info answered
        box = chrome.find_element(By.ID, "text")
        chrome.execute_script("arguments[0].value = arguments[1]", box, text)  # chromedriver types no emoji
        chrome.find_element(By.ID, "submit").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results section.result"))

    with serving(three_class_ckpt) as (url, _):
        ask(url)
        # compared in the page: a span cut inside an emoji holds half of it, which the driver cannot return
        spans = chrome.execute_script(
            "return Array.from(document.querySelectorAll('[data-testid=review] .w'), (w) => {"
            " const token = w.title.slice(0, w.title.lastIndexOf(': '));"  # title: "token: score"
            " return [token, w.textContent === token]; })"
        )
        words = [(token, same) for token, same in spans if token.isalpha()]
        assert words == [("great", True), ("film", True), ("awful", True), ("plot", True)]  # each span is its token
        (shown,) = results(chrome)
    assert severe(chrome) == []
    assert shown["review"] == [text]  # every character, once
    assert set(shown["probs"]) == set(CLASSES) and all(width > 0 for width in shown["bars"].values())
    assert shown["chosen"] == [shown["label"]] == [max(shown["probs"], key=shown["probs"].get)]

    Predictor.from_checkpoint(str(three_class_ckpt)).export(str(tmp_path / "export"))
    with serving(tmp_path / "export") as (url, _):  # an export predicts only: the page asks /predict
        ask(url)
        (predicted,) = results(chrome)
    assert severe(chrome) == []
    assert predicted["words"] == [] and predicted["legend"] == []
    assert predicted["probs"] == pytest.approx(shown["probs"], abs=1e-3)
    assert predicted["chosen"] == [predicted["label"]] == shown["chosen"]
