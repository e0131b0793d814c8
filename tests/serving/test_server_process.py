"""The real server as a subprocess on a free local port: concurrency, SIGTERM drain, an export folder, and a
real browser (headless Chromium) on the page."""

import json
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from rnn_lightning.inference import Predictor
from tests.helpers import ROOT, SUBPROCESS_ENV

pytestmark = pytest.mark.slow

# The server with one test hook: a text "slow" takes a second to classify (to have requests in flight).
HARNESS = """
import sys, time
from rnn_lightning import server
real = server.ServedModel.predict
def predict(self, texts):
    if "slow" in texts:
        time.sleep(1.0)
    return real(self, texts)
server.ServedModel.predict = predict
server.main(sys.argv[1:])
"""


@contextmanager
def serving(path, *args: str, slow_hook: bool = False, open_files: int | None = None):
    """(base URL, process) of ``python cli.py serve`` on a free port, once /health says 200; ``open_files``
    sets the process's limit on them (soft and hard)."""
    command = [sys.executable, "-c", HARNESS] if slow_hook else [sys.executable, str(ROOT / "cli.py"), "serve"]
    limit = None if open_files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2)
    proc = subprocess.Popen([*command, "--ckpt_path", str(path), "--port", "0", *args], cwd=ROOT, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)  # fmt: skip
    try:
        line = proc.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
        assert match, line + proc.stderr.read()
        url = match[1]
        for _ in range(300):
            try:
                if urllib.request.urlopen(url + "health", timeout=5).status == 200:
                    break
            except urllib.error.HTTPError:
                time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_concurrent_requests_each_get_their_own_answers(binary_ckpt):
    texts = [f"{w} film number {i}" for i in range(64) for w in ("great", "awful")][:96]
    expected = Predictor.from_checkpoint(str(binary_ckpt))(texts)
    with serving(binary_ckpt) as (url, _):
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda t: post(url + "predict", {"texts": [t]}), texts))
    for (status, body), want in zip(answers, expected, strict=True):
        assert status == 200 and body["predictions"][0]["label"] == want["label"]
        assert body["predictions"][0]["prob"] == pytest.approx(want["prob"], abs=1e-6)


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(binary_ckpt):
    with serving(binary_ckpt, slow_hook=True) as (url, proc):
        results = []
        threads = [threading.Thread(target=lambda: results.append(post(url + "predict", {"texts": ["slow", "ok"]})))
                   for _ in range(3)]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(0.3)  # in flight: the first batch sleeps a second
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(30) == 0, proc.stderr.read()
        assert [status for status, _ in results] == [200, 200, 200]
        with pytest.raises(urllib.error.URLError):  # no longer listening
            urllib.request.urlopen(url + "health", timeout=5)


def test_an_export_folder_predicts_and_says_it_cannot_explain(binary_ckpt, tmp_path):
    Predictor.from_checkpoint(str(binary_ckpt)).export(str(tmp_path / "export"))
    with serving(tmp_path / "export") as (url, _):
        status, body = post(url + "predict", {"texts": ["great film"]})
        assert status == 200 and body["model"]["name"] == "export"
        status, body = post(url + "explain", {"text": "great film"})
        assert status == 501 and "serve the checkpoint to explain" in body["error"]


def test_a_real_browser_classifies_explains_and_shows_markup_as_text(three_class_ckpt, tmp_path, chrome):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = chrome
    with serving(three_class_ckpt) as (url, _):
        browser.get(url)
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#target option")) == 4)
        review = 'A great <script>window.hacked=1</script> <img src=x onerror="window.hacked=2"> great film awful'
        browser.find_element(By.ID, "text").send_keys(review)
        Select(browser.find_element(By.ID, "target")).select_by_visible_text("mixed")
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "[data-testid=review] .w"))
        probs = {
            row.get_attribute("data-class"): float(row.find_element(By.CLASS_NAME, "prob").text)
            for row in browser.find_elements(By.CSS_SELECTOR, "table.probs tr")
        }
        assert set(probs) == {"neg", "mixed", "<b>pos</b>"} and sum(probs.values()) == pytest.approx(1, abs=1e-3)
        label = browser.find_element(By.CSS_SELECTOR, "[data-testid=label]").text
        assert label == max(probs, key=probs.get)  # the class name with markup is shown as text
        shown = browser.find_element(By.CSS_SELECTOR, "[data-testid=review]").text
        assert shown == review  # every character, markup included, displayed as text
        words = browser.find_elements(By.CSS_SELECTOR, "[data-testid=review] .w")
        assert [w.text for w in words][-3:] == ["great", "film", "awful"]  # the model reads the last 12 tokens
        assert browser.find_element(By.CSS_SELECTOR, "[data-testid=review] .unread").text.startswith("A great")
        scores = [float(w.get_attribute("data-score")) for w in words]
        assert any(s != 0 for s in scores) and all(w.get_attribute("title").count(":") == 1 for w in words)
        assert "mixed" in browser.find_element(By.CSS_SELECTOR, ".legend").find_element(By.XPATH, "..").text
        assert browser.execute_script("return window.hacked === undefined")
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=review] img, [data-testid=review] script")
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 1000


def connect(url: str) -> socket.socket:
    """A raw connection to the server at ``url`` (a test's guard of 30 s on every read)."""
    host, port = re.match(r"http://([\d.]+):(\d+)/", url).groups()
    return socket.create_connection((host, int(port)), timeout=30)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection. A close with unread data in the server's
    buffer reaches the client as a reset (RST) rather than an end of stream: closed all the same."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_slow_clients_are_cut_off_at_the_timeout_while_others_are_served(binary_ckpt):
    with serving(binary_ckpt, "--timeout_s", "1") as (url, proc):
        body_drip, header_drip = connect(url), connect(url)
        body_drip.sendall(b'POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"texts": ["a')
        header_drip.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\n")  # and no more
        assert post(url + "predict", {"texts": ["great film"]})[0] == 200
        answer = read_all(body_drip)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower()
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"].startswith("body: 13 bytes received within")
        assert read_all(header_drip) == b""  # closed: no request ever arrived
        assert post(url + "predict", {"texts": ["still serving"]})[0] == 200
    assert "Traceback" not in proc.stderr.read()


def test_connections_past_max_connections_get_503_until_idle_ones_are_closed(binary_ckpt):
    with serving(binary_ckpt, "--max_connections", "3", "--timeout_s", "1") as (url, proc):
        idle = [connect(url) for _ in range(3)]
        refused = read_all(connect(url))
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert json.loads(refused.split(b"\r\n\r\n", 1)[1]) == {
            "error": "the server has max_connections connections open; retry later"
        }
        assert [read_all(s) for s in idle] == [b""] * 3  # no request within timeout_s: closed
        assert post(url + "predict", {"texts": ["great film"]})[0] == 200
    assert "Traceback" not in proc.stderr.read()


def test_a_flood_of_dripping_connections_is_refused_or_closed_and_never_logs_a_traceback(binary_ckpt):
    flood = 1100  # past the server's 1,024 open files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < flood + 100:
        if hard != resource.RLIM_INFINITY and hard < flood + 100:
            pytest.skip(f"this process may open {hard} files; the test holds {flood} connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (flood + 100, hard))
    with serving(binary_ckpt, "--timeout_s", "1", open_files=1024) as (url, proc):
        drips = [connect(url) for _ in range(flood)]
        for sock in drips:
            sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\n")  # and no more
        answers = [read_all(sock) for sock in drips]
        assert {a[:13] for a in answers} <= {b"", b"HTTP/1.1 503 "}  # refused at once, or closed at timeout_s
        assert post(url + "predict", {"texts": ["great film"]})[0] == 200
    assert "Traceback" not in proc.stderr.read()
