"""The HTTP server in-process (FastAPI's test client): endpoints, every limit and error, batching, the page."""

import asyncio
import errno
import json
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi import Request
from fastapi.testclient import TestClient

from rnn_lightning import page, server
from rnn_lightning.errors import InputError
from rnn_lightning.inference import Predictor
from rnn_lightning.text.readers import EMPTY

TEXTS = ["A wonderful film, truly great.", "boring and awful", "the plot <br /> was fine"]


def client(path, monkeypatch=None, **kwargs) -> TestClient:
    limits = server.Limits(**kwargs.pop("limits", {}))
    return TestClient(server.create_app(str(path), limits, **kwargs))


def wait_ready(c: TestClient) -> None:
    for _ in range(200):
        if c.get("/health").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(c.get("/health").json())


@pytest.fixture()
def binary(binary_ckpt):
    with client(binary_ckpt) as c:
        wait_ready(c)
        yield c


def test_health_is_503_until_the_model_is_loaded(binary_ckpt, monkeypatch):
    release = threading.Event()
    real = server.ServedModel.__init__

    def slow(self, path):
        release.wait(10)
        real(self, path)

    monkeypatch.setattr(server.ServedModel, "__init__", slow)
    with client(binary_ckpt) as c:
        assert c.get("/health").status_code == 503 and c.get("/health").json()["status"] == "loading"
        assert c.post("/predict", json={"texts": ["x"]}).status_code == 503
        release.set()
        wait_ready(c)
        assert c.get("/health").json() == {"status": "ok"}


def test_a_model_that_cannot_be_loaded_is_said_in_health_and_to_the_caller(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    failures = []
    with TestClient(server.create_app(str(bad), on_fail=failures.append)) as c:
        for _ in range(100):
            if failures:
                break
            time.sleep(0.02)
        body = c.get("/health").json()
    assert body["status"] == "failed" and "bad.ckpt" in body["error"] and failures == [body["error"]]


def test_predict_answers_each_text_in_order_as_the_predictor_does(binary, binary_ckpt):
    got = binary.post("/predict", json={"texts": TEXTS}).json()
    assert got["model"] == {"name": "classifier_bigru.ckpt", "class_names": ["0", "1"]}
    expected = Predictor.from_checkpoint(str(binary_ckpt))(TEXTS)
    for row, want in zip(got["predictions"], expected, strict=True):
        assert row["label"] == want["label"]
        assert row["probs"] == pytest.approx(want["probs"], abs=1e-6) and row["prob"] == max(row["probs"].values())


def test_info_names_classes_vocabulary_length_version_and_limits(binary):
    info = binary.get("/info").json()
    assert info["class_names"] == ["0", "1"] and info["max_len"] == 12 and info["vocab_size"] == 34
    assert info["explain"] is True and info["version"] and info["limits"]["max_texts"] == 256


def test_explain_scores_each_read_word_and_they_sum_to_the_logit_change(binary):
    text = "A wonderful film, truly great."
    got = binary.post("/explain", json={"text": text}).json()
    assert got["target"] == got["label"] and "integrated gradients" in got["method"]
    words = got["words"]
    assert [text[w["start"] : w["end"]].lower() for w in words] == [
        "a",
        "wonderful",
        "film",
        ",",
        "truly",
        "great",
        ".",
    ]
    assert [w["token"] for w in words][:3] == ["a", "wonderful", "film"]  # in the vocabulary; the others <unk>
    total = sum(w["score"] for w in words)
    assert total == pytest.approx(got["logit"] - got["baseline_logit"], abs=1e-3 * max(1, abs(total)))
    other = binary.post("/explain", json={"text": text, "class": "0" if got["label"] == "1" else "1"}).json()
    assert [w["score"] for w in other["words"]] == pytest.approx([-w["score"] for w in words], abs=1e-6)


def test_explain_reads_only_the_last_max_len_tokens_with_offsets_into_the_whole_text(binary):
    text = "film " * 30 + "great wonderful"
    words = binary.post("/explain", json={"text": text}).json()["words"]
    assert len(words) == 12 and words[-1]["end"] == len(text) and words[0]["start"] > 0


def test_three_classes_explain_the_class_asked(three_class_ckpt):
    with client(three_class_ckpt) as c:
        wait_ready(c)
        assert c.get("/info").json()["class_names"] == ["neg", "mixed", "<b>pos</b>"]
        got = c.post("/explain", json={"text": "great film", "class": "mixed"}).json()
        assert got["target"] == "mixed" and set(got["probs"]) == {"neg", "mixed", "<b>pos</b>"}
        refused = c.post("/explain", json={"text": "great film", "class": "pos"})
        assert refused.status_code == 422 and refused.json()["error"].startswith("class: 'pos' is not one of")


BAD = [
    ("body too large", lambda: {"content": b'{"texts": ["' + b"a" * 2000 + b'"]}'}, 413, "body:"),
    ("too many texts", lambda: {"json": {"texts": ["good"] * 9}}, 413, "texts: 9 texts; at most 8"),
    ("text too long", lambda: {"json": {"texts": ["good", "x" * 101]}}, 413, "texts[1]: 101 characters"),
    ("no texts", lambda: {"json": {"texts": []}}, 422, "texts: empty list"),
    ("lone surrogate", lambda: {"content": b'{"texts": ["ok", "a \\ud800 b"]}'}, 422, "texts[1]: a lone surrogate"),
    ("a number", lambda: {"json": {"texts": ["ok", 3]}}, 422, "texts[1]: int; expected a string"),
    ("a string", lambda: {"json": {"texts": "ok"}}, 422, "texts: str; expected a list of strings"),
    ("missing", lambda: {"json": {}}, 422, "texts: missing"),
    ("unknown field", lambda: {"json": {"texts": ["ok"], "path": "/etc/passwd"}}, 422, "path: unknown field"),
    ("a list", lambda: {"json": ["ok"]}, 422, "body: a JSON list"),
    ("malformed", lambda: {"content": b'{"texts": ["ok"'}, 400, "body: not JSON"),
    ("not UTF-8", lambda: {"content": b'{"texts": ["\xff\xfe"]}'}, 400, "body: not UTF-8"),
    ("deep", lambda: {"content": b"[" * 100_000}, 413, "body:"),
]


@pytest.mark.parametrize("name, request_kwargs, status, error", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_one_line_and_the_server_keeps_serving(binary_ckpt, name, request_kwargs, status, error):
    with client(binary_ckpt, limits={"max_body_bytes": 1000, "max_texts": 8, "max_chars": 100}) as c:
        wait_ready(c)
        response = c.post("/predict", **request_kwargs())
        assert response.status_code == status, response.text
        message = response.json()["error"]
        assert message.startswith(error) and "\n" not in message
        assert c.post("/predict", json={"texts": ["still serving"]}).status_code == 200


def test_deeply_nested_json_within_the_size_limit_is_a_400(binary):
    response = binary.post("/predict", content=b"[" * 100_000)
    assert response.status_code == 400 and response.json()["error"].startswith("body: not JSON")


def test_unknown_paths_and_methods_answer_in_json(binary):
    assert binary.get("/nothing").json() == {"error": "GET /nothing: Not Found"}
    assert binary.get("/predict").status_code == 405


def test_a_request_past_the_timeout_gets_504_and_the_next_is_served(binary_ckpt, monkeypatch):
    real = server.ServedModel.predict

    def slow(self, texts):
        if texts == ["slow"]:
            time.sleep(0.5)
        return real(self, texts)

    monkeypatch.setattr(server.ServedModel, "predict", slow)
    with client(binary_ckpt, limits={"timeout_s": 0.2}) as c:
        wait_ready(c)
        response = c.post("/predict", json={"texts": ["slow"]})
        assert response.status_code == 504 and "timeout_s=0.2" in response.json()["error"]
        time.sleep(0.4)  # the model finishes the slow batch (a running call cannot be stopped)
        assert c.post("/predict", json={"texts": ["fast"]}).status_code == 200


def test_api_key_guards_every_endpoint_but_the_page_and_health(binary_ckpt):
    with client(binary_ckpt, api_key="s3cret") as c:
        wait_ready(c)
        assert c.post("/predict", json={"texts": ["x"]}).status_code == 401
        assert c.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert c.post("/predict", json={"texts": ["x"]}, headers=good).status_code == 200
        assert c.post("/explain", json={"text": "x"}, headers=good).status_code == 200
        assert c.get("/").status_code == 200 and '"auth": true' in c.get("/").text


def test_the_batcher_merges_waiting_requests_and_answers_each_its_own():
    sizes = []

    def run(texts):
        sizes.append(len(texts))
        time.sleep(0.01)
        return [t.upper() for t in texts]

    async def go():
        batcher = server.Batcher(run, ThreadPoolExecutor(1), window_s=0.005, max_batch=64)
        jobs = [[f"r{i}-{j}" for j in range(i % 3 + 1)] for i in range(40)]
        answers = await asyncio.gather(*(batcher.submit(job) for job in jobs))
        batcher.close()
        return jobs, answers

    jobs, answers = asyncio.run(go())
    assert answers == [[t.upper() for t in job] for job in jobs]
    assert max(sizes) > 3 and max(sizes) <= 64 and sum(sizes) == sum(len(j) for j in jobs)


def test_the_page_allows_only_its_own_script_and_escapes_data():
    html, digest = page.render(records=[{"id": "</script><script>alert(1)</script>", "label": None, "error": "x"}])
    assert "alert(1)</script>" not in html and "\\u003c/script\\u003e" in html
    assert html.count("<script>") == 1 and digest in html
    assert re.search(r"script-src '(sha256-[^']+)'", page.headers(digest)["Content-Security-Policy"])[1] == digest


def test_the_page_is_served_with_its_security_headers(binary):
    response = binary.get("/")
    assert response.headers["content-type"].startswith("text/html") and "<textarea" in response.text
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


def test_serve_refuses_a_missing_checkpoint_and_a_taken_port_in_one_line(tmp_path, capsys, binary_ckpt):
    with pytest.raises(SystemExit) as e:
        server.main(["--ckpt_path", str(tmp_path / "none.ckpt")])
    assert str(e.value).startswith("error: ckpt_path:") and "does not exist" in str(e.value)
    with pytest.raises(SystemExit) as e:
        server.main(["--ckpt_path", "best", "--runs_dir", str(tmp_path)])
    assert "no run under" in str(e.value)
    taken = server.listen("127.0.0.1", 0, backlog=1)
    try:
        with pytest.raises(SystemExit) as e:
            server.main(["--ckpt_path", str(binary_ckpt), "--port", str(taken.getsockname()[1])])
        assert str(e.value).startswith("error: host/port: cannot listen on 127.0.0.1:")
    finally:
        taken.close()
    with pytest.raises(SystemExit) as e:
        server.main(["--ckpt_path", str(binary_ckpt), "--max_texts", "0"])
    assert str(e.value) == "error: max_texts: 0; expected a number from 1 to 65536"


def test_an_unexpected_failure_is_a_json_500_and_the_server_keeps_serving(binary_ckpt, monkeypatch):
    real = server.ServedModel.predict

    def broken(self, texts):
        if texts == ["break"]:
            raise RuntimeError("boom")
        return real(self, texts)

    monkeypatch.setattr(server.ServedModel, "predict", broken)
    with TestClient(server.create_app(str(binary_ckpt)), raise_server_exceptions=False) as c:
        wait_ready(c)
        response = c.post("/predict", json={"texts": ["break"]})
        assert response.status_code == 500 and response.json()["error"].startswith("internal error (RuntimeError)")
        assert c.post("/predict", json={"texts": ["fine"]}).status_code == 200


def test_empty_texts_are_answered_as_predict_answers_them_and_never_reach_the_model(binary, binary_ckpt):
    texts = ["great film", "", " \n\t", "awful"]
    got = binary.post("/predict", json={"texts": texts})
    assert got.status_code == 200
    rows = got.json()["predictions"]
    assert rows[1] == rows[2] == {"error": EMPTY, "label": None, "prob": None, "probs": None}
    expected = Predictor.from_checkpoint(str(binary_ckpt))([texts[0], texts[3]])
    assert [rows[0]["label"], rows[3]["label"]] == [e["label"] for e in expected]
    assert "error" not in rows[0] and "error" not in rows[3]
    assert binary.post("/predict", json={"texts": [""]}).json()["predictions"] == [
        {"error": EMPTY, "label": None, "prob": None, "probs": None}
    ]


def test_a_failing_request_in_a_merged_batch_fails_alone():
    calls = []

    def run(texts):
        calls.append(list(texts))
        if "bad" in texts:
            raise IndexError("index out of range in self")
        return [t.upper() for t in texts]

    async def go():
        batcher = server.Batcher(run, ThreadPoolExecutor(1), window_s=0.5, max_batch=64)
        jobs = [["a", "b"], ["c", "bad"], ["d"], ["e"]]
        answers = await asyncio.gather(*(batcher.submit(job) for job in jobs), return_exceptions=True)
        batcher.close()
        return answers

    answers = asyncio.run(go())
    assert answers[0] == ["A", "B"] and answers[2] == ["D"] and answers[3] == ["E"]
    assert isinstance(answers[1], IndexError)
    assert calls[0] == ["a", "b", "c", "bad", "d", "e"]  # merged first, then one request at a time


@pytest.fixture(scope="module")
def poisoned_export(binary_ckpt, tmp_path_factory):
    """An export whose tokenizer maps the word "poison" past the embedding: the model fails on any text holding it."""
    out = tmp_path_factory.mktemp("poisoned") / "export"
    Predictor.from_checkpoint(str(binary_ckpt)).export(str(out))
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["poison"] = 100_000
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    return out


def test_concurrent_requests_batched_with_one_the_model_fails_on_get_their_answers(poisoned_export, monkeypatch):
    sizes = []
    real = server.ServedModel.predict

    def counted(self, texts):
        sizes.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(server.ServedModel, "predict", counted)
    texts = [f"great film {i}" for i in range(7)] + ["a poison text"]
    with TestClient(server.create_app(str(poisoned_export), server.Limits(batch_window_ms=500)),
                    raise_server_exceptions=False) as c:  # fmt: skip
        wait_ready(c)
        with ThreadPoolExecutor(len(texts)) as pool:
            responses = list(pool.map(lambda t: c.post("/predict", json={"texts": [t]}), texts))
    assert max(sizes) > 1  # the poisoned request shared a batch with others
    assert [r.status_code for r in responses] == [200] * 7 + [500]
    assert all(r.json()["predictions"][0]["label"] in ("0", "1") for r in responses[:7])
    assert responses[-1].json()["error"].startswith("internal error (")


def test_a_lone_surrogate_is_refused_for_explain_too(binary):
    response = binary.post("/explain", content=b'{"text": "great \\udfff film"}')
    assert response.status_code == 422 and response.json()["error"].startswith("text: a lone surrogate (U+DFFF)")


class NaNWeights(server.ServedModel):
    """The served checkpoint with every weight NaN, as damaged weights would make it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        with torch.no_grad():
            for weight in self.net.parameters():
                weight.fill_(math.nan)


def test_a_model_whose_output_is_not_finite_answers_500_never_200(binary_ckpt):
    with TestClient(server.create_app(str(binary_ckpt), model_class=NaNWeights)) as c:
        wait_ready(c)
        response = c.post("/predict", json={"texts": ["", "great film"]})
        assert response.status_code == 500
        assert response.json() == {"error": "texts[1]: the model's output is not finite (NaN or infinity); "
                                            "its weights may be damaged"}  # fmt: skip
        response = c.post("/explain", json={"text": "great film"})
        assert response.status_code == 500 and "the model's output is not finite" in response.json()["error"]


def test_a_body_that_does_not_arrive_within_the_timeout_is_408():
    async def go():
        sent = [{"type": "http.request", "body": b'{"texts": ["a', "more_body": True}]

        async def receive():
            if sent:
                return sent.pop()
            await asyncio.sleep(3600)  # the rest of the body never comes

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length", b"100")]}
        by = asyncio.get_running_loop().time() + 0.1
        return await asyncio.wait_for(server._json_body(Request(scope, receive), 1000, by, 0.1), 30)

    with pytest.raises(server.RequestError) as e:
        asyncio.run(go())
    assert e.value.status == 408 and e.value.message.startswith(
        "body: 13 bytes received within the server's timeout_s=0.1"
    )


@pytest.mark.parametrize(
    "option, value, error",
    [
        ("--timeout_s", "nan", "timeout_s: nan; expected a number from 0.01 to 3600.0"),
        ("--timeout_s", "inf", "timeout_s: inf; expected a number from 0.01 to 3600.0"),
        ("--timeout_s", "-1", "timeout_s: -1.0; expected a number from 0.01 to 3600.0"),
        ("--batch_window_ms", "inf", "batch_window_ms: inf; expected a number from 0.0 to 1000.0"),
        ("--batch_window_ms", "-0.5", "batch_window_ms: -0.5; expected a number from 0.0 to 1000.0"),
        ("--max_batch", "0", "max_batch: 0; expected a number from 1 to 65536"),
        ("--max_connections", "0", "max_connections: 0; expected a number from 1 to 65536"),
        ("--max_body_bytes", "-5", "max_body_bytes: -5; expected a number from 1 to 1073741824"),
    ],
)
def test_numeric_options_outside_their_range_are_one_line_before_anything_runs(tmp_path, option, value, error):
    with pytest.raises(SystemExit) as e:  # a missing checkpoint too: the option is said first
        server.main(["--ckpt_path", str(tmp_path / "none.ckpt"), option, value])
    assert str(e.value) == f"error: {error}"


def test_a_batch_window_as_long_as_the_timeout_is_refused(tmp_path):
    with pytest.raises(SystemExit) as e:
        server.main(["--ckpt_path", str(tmp_path / "none.ckpt"), "--timeout_s", "0.5", "--batch_window_ms", "500"])
    assert str(e.value).startswith("error: batch_window_ms: 500; expected less than timeout_s (0.5 s)")


@pytest.mark.parametrize("key", ["", "clé", " padded", "two\nlines"])
def test_an_api_key_no_client_could_send_is_refused_at_start(tmp_path, monkeypatch, key):
    monkeypatch.setenv(server.API_KEY_ENV, key)
    with pytest.raises(SystemExit) as e:
        server.main(["--ckpt_path", str(tmp_path / "none.ckpt")])
    assert str(e.value).startswith(f"error: {server.API_KEY_ENV}: ") and "\n" not in str(e.value)


def test_an_api_key_header_of_other_bytes_is_401_not_an_error(binary_ckpt):
    with client(binary_ckpt, api_key="s3cret") as c:
        wait_ready(c)
        response = c.get("/info", headers={"Authorization": "Bearer s3cr\xe9t".encode("latin-1")})
        assert response.status_code == 401


def test_open_files_are_raised_to_fit_max_connections_or_refused_in_one_line(monkeypatch):
    raised = []
    monkeypatch.setattr(server.resource, "setrlimit", lambda which, limits: raised.append(limits))
    monkeypatch.setattr(server.resource, "getrlimit", lambda which: (256, 4096))
    server.allow_open_files(1000)
    assert raised == [(3 * 1000 + server.FILES_BESIDE_CONNECTIONS, 4096)]
    with pytest.raises(InputError, match=r"^max_connections: 2000 needs \d+ open files; this process may open 4096"):
        server.allow_open_files(2000)


def test_accept_out_of_open_files_is_one_warning_line_and_other_loop_errors_go_to_asyncio(caplog, monkeypatch):
    passed = []
    loop = asyncio.new_event_loop()
    monkeypatch.setattr(loop, "default_exception_handler", passed.append)
    try:
        with caplog.at_level("WARNING", logger="uvicorn.error"):
            server.out_of_files(loop, {"message": "socket.accept() out of system resource",
                                       "exception": OSError(errno.EMFILE, "Too many open files")})  # fmt: skip
            server.out_of_files(loop, {"message": "other", "exception": ValueError("x")})
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records] == [
        "accept(): Too many open files; new connections wait a second (open connections: see --max_connections)"
    ]
    assert caplog.records[0].exc_info is None and [c["message"] for c in passed] == ["other"]
