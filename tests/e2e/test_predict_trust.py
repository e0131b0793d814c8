"""Predicting from input nobody checked: what a spreadsheet would run, byte-order marks and UTF-16, the
column the model was trained on, an output that is the input or a folder, text without spaces, and a
stop signal while the input still waits for its writer."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rnn_lightning.text import readers
from rnn_lightning.text.tokenizer import encode, text_chars, train_tokenizer
from rnn_lightning.training.cli import main
from rnn_lightning.training.prediction_writer import FORMULA_STARTS
from tests.helpers import ROOT, make_reviews, one_line_error, tiny_cli_args, write_splits

# Class names as training labels may carry them: a spreadsheet would run both as formulas.
CLASSES = {0: '=HYPERLINK("http://x","neg")', 1: "+pos"}
MAX_LEN = 24  # tiny_cli_args' data.max_len


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny classifier trained on a ``review`` column with formula-like class names: (config.yaml, checkpoint)."""
    root = tmp_path_factory.mktemp("trained")
    frame = make_reviews(200, seed=5).rename(columns={"text": "review"})
    data = write_splits(root / "data", frame.assign(label=frame.label.map(CLASSES)))
    main(["fit", *tiny_cli_args(data, root), "--data.text_field", "review", "--trainer.max_epochs", "1"])
    run = root / "lightning_logs" / "version_0"
    return run / "config.yaml", run / "checkpoints" / "last.ckpt"


def predict_args(model, predict_path, output) -> list[str]:
    config, ckpt = model
    return ["predict", "--config", str(config), "--ckpt_path", str(ckpt), "--data.predict_path", str(predict_path),
            "--prediction_writer.output", str(output), "--trainer.enable_progress_bar", "false"]  # fmt: skip


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


IDS = ["=1+2", "+33", "-4", "@SUM(A1)", "\tx", "\rcr", "two\nlines", 'a "quote", comma', "plain"]


def test_csv_cells_a_spreadsheet_would_run_get_a_quote_and_jsonl_stays_exact(cli, model, tmp_path):
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([i, "a wonderful film"] for i in IDS)
    cli(*predict_args(model, tmp_path / "in.csv", tmp_path / "out.csv"))
    cli(*predict_args(model, tmp_path / "in.csv", tmp_path / "out.jsonl"))
    rows = read_csv(tmp_path / "out.csv")
    assert len(rows) == len(IDS)  # one record per input row, newlines inside an id included
    assert [r["id"] for r in rows] == ["'" + i if i.startswith(FORMULA_STARTS) else i for i in IDS]
    assert {r["label"] for r in rows} <= {"'" + name for name in CLASSES.values()}
    assert all(not v.startswith(FORMULA_STARTS) for r in rows for k, v in r.items() if k.startswith("prob_"))
    assert all(0.0 < float(r["prob"]) <= 1.0 for r in rows)  # probabilities stay numbers
    exact = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in exact] == IDS
    assert {r["label"] for r in exact} <= set(CLASSES.values())


def test_byte_order_marked_csv_keeps_ids_and_the_trained_column_is_read(cli, model, tmp_path):
    texts = ["a wonderful film and loved it", "boring and awful"]
    body = "id,review\n" + "".join(f"r{i},{t}\n" for i, t in enumerate(texts))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())  # as spreadsheets save "CSV UTF-8"
    (tmp_path / "plain.txt").write_text("".join(t + "\n" for t in texts))
    cli(*predict_args(model, tmp_path / "bom.csv", tmp_path / "bom_out.csv"))
    cli(*predict_args(model, tmp_path / "plain.txt", tmp_path / "txt_out.csv"))
    rows, reference = read_csv(tmp_path / "bom_out.csv"), read_csv(tmp_path / "txt_out.csv")
    assert [r["id"] for r in rows] == ["r0", "r1"]
    assert [r["prob"] for r in rows] == [r["prob"] for r in reference]  # the review column, read whole


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_text_with_a_byte_order_mark_is_decoded(cli, model, tmp_path, encoding):
    texts = "a wonderful film, loved it\nboring and awful é\n"
    bom = {"utf-16-be": b"\xfe\xff"}.get(encoding, b"")  # the plain codecs write their own mark
    (tmp_path / "in.txt").write_bytes(bom + texts.encode(encoding))
    (tmp_path / "utf8.txt").write_text(texts, encoding="utf-8")
    cli(*predict_args(model, tmp_path / "in.txt", tmp_path / "out.csv"))
    cli(*predict_args(model, tmp_path / "utf8.txt", tmp_path / "ref.csv"))
    assert read_csv(tmp_path / "out.csv") == read_csv(tmp_path / "ref.csv")


def test_utf16_without_a_byte_order_mark_is_refused_in_one_line(cli, model, tmp_path):
    (tmp_path / "in.txt").write_bytes("a wonderful film\n".encode("utf-16-le"))
    line = one_line_error(cli(*predict_args(model, tmp_path / "in.txt", tmp_path / "out.csv"), check=False))
    assert "in.txt" in line and "UTF-8" in line and "byte-order mark" in line
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("how", ["same path", "a link to it"])
def test_output_that_is_the_input_is_refused_and_the_input_kept(cli, model, tmp_path, how):
    source = tmp_path / "reviews.csv"
    source.write_text("id,text\n1,a wonderful film\n")
    before = source.read_bytes()
    output = source
    if how == "a link to it":
        output = tmp_path / "out.csv"
        output.symlink_to(source)
    result = cli(*predict_args(model, source, output), check=False)
    line = one_line_error(result)
    assert "prediction_writer.output" in line and "is the input" in line
    assert source.read_bytes() == before and "Predicting" not in result.output


def test_output_that_is_a_folder_is_refused_before_predicting(cli, model, tmp_path):
    (tmp_path / "in.txt").write_text("a wonderful film\n")
    (tmp_path / "out.csv").mkdir()
    result = cli(*predict_args(model, tmp_path / "in.txt", tmp_path / "out.csv"), check=False)
    line = one_line_error(result)
    assert "prediction_writer.output" in line and "is a folder" in line
    assert "Predicting" not in result.output and list((tmp_path / "out.csv").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.csv"]


def test_a_fifo_in_a_folder_of_reviews_is_refused(cli, model, tmp_path):
    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "a.txt").write_text("a wonderful film")
    os.mkfifo(tmp_path / "reviews" / "b.txt")  # reading it would wait for a writer
    line = one_line_error(cli(*predict_args(model, tmp_path / "reviews", tmp_path / "out.csv"), check=False))
    assert "b.txt" in line and "not a regular file" in line


def test_a_huge_line_is_read_in_pieces_and_keeps_its_end(tmp_path):
    end = "é" * 300 + " the end"  # two-byte characters: a piece may start inside one
    (tmp_path / "in.txt").write_bytes(b"short\n" + b"x" * 3_000_000 + end.encode() + b"\nlast")
    (chunk,) = readers.read_reviews(str(tmp_path / "in.txt"), max_chars=1000)
    assert chunk.ids == ["1", "2", "3"] and chunk.errors == ["", "", ""]  # no character was cut in two
    assert chunk.texts[0] == "short" and chunk.texts[2] == "last"
    assert len(chunk.texts[1]) <= 1000 and chunk.texts[1].endswith(end) and set(chunk.texts[1][: -len(end)]) == {"x"}
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "big.txt").write_bytes(b"\xef\xbb\xbf" + b"x" * 3_000_000 + end.encode())
    (tmp_path / "folder" / "small.txt").write_bytes(b"\xef\xbb\xbfsmall")
    (chunk,) = readers.read_reviews(str(tmp_path / "folder"), max_chars=1000)
    assert chunk.texts[1] == "small" and chunk.errors == ["", ""]
    assert len(chunk.texts[0]) <= 1000 and chunk.texts[0].endswith(end)


def test_text_without_spaces_is_tokenized_from_its_end_only():
    tok = train_tokenizer(["good film", "bad film"], vocab_size=10, max_len=4)
    budget = text_chars(4)
    huge = "good film " + "y" * (100 * budget)  # its last token is longer than the budget: cut inside it
    cut = huge[-budget:]
    np.testing.assert_array_equal(encode(tok, [huge]), encode(tok, [cut]))
    rows = readers.ReviewRows()
    rows.add("1", huge.encode(), max_chars=budget)
    assert rows.texts == [cut]


# ---------------------------------------------------------------- slow: processes, signals, memory


def start_predict(model, predict_path, output, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *predict_args(model, predict_path, output)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def waiting_on_a_pipe(pid: int) -> bool:
    """Whether the process's main thread sleeps in a pipe or FIFO read (Linux's /proc)."""
    with open(f"/proc/{pid}/wchan") as f:
        return "pipe" in f.read()


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/wchan"), reason="needs Linux's /proc to see the read wait")
@pytest.mark.parametrize("source", ["fifo", "stdin"])
def test_sigterm_stops_predict_waiting_for_its_input(model, tmp_path, source):
    """A FIFO nobody has written to (predict waits in setup), or a standard input that gave two lines and
    stalls (predict waits while encoding): SIGTERM ends it with 143 and no output file."""
    output, writer = tmp_path / "out.csv", []
    if source == "fifo":
        fifo = tmp_path / "in.txt"
        os.mkfifo(fifo)
        proc = start_predict(model, fifo, output)

        def opened() -> bool:  # succeeds once predict has the FIFO open for reading
            try:
                writer.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                return False
            return True

        wait_for(opened, "predict to open the FIFO")
    else:
        proc = start_predict(model, "-", output, stdin=subprocess.PIPE)
        proc.stdin.write("a wonderful film\nboring\n")
        proc.stdin.flush()
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    if source == "stdin":  # past setup, into reading the rest
        wait_for(lambda: any("Loaded model weights" in line for line in lines), "the checkpoint to load")
    wait_for(lambda: waiting_on_a_pipe(proc.pid), "predict to wait on its input")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=10)
    finally:
        proc.kill()
    print(f"{source}: exit {code} {time.monotonic() - sent:.2f} s after SIGTERM")
    assert code == 128 + signal.SIGTERM
    time.sleep(0.2)  # the stderr thread reads the last lines
    assert any("Stopped by SIGTERM; nothing was written" in line for line in lines), "".join(lines)[-2000:]
    assert not output.exists()
    for fd in writer:
        os.close(fd)


LINE_MB = 512  # one line without a space: more than the whole command may use (MEMORY_MB)
MEMORY_MB = 512  # peak resident memory of predict on it; the imports alone take ~350 MB


@pytest.mark.slow
def test_a_huge_line_without_spaces_costs_what_its_end_does(model, tmp_path):
    with open(tmp_path / "in.txt", "wb") as f:
        f.write(b"a wonderful film\n")
        block = b"z" * 2**20
        for _ in range(LINE_MB):
            f.write(block)
        f.write(b" boring\nthe end\n")
    # Measured by a small Python of its own: a child forked from this test's process would count its pages too.
    measure = (
        "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )  # KiB on Linux
    cli = [sys.executable, str(ROOT / "cli.py"), *predict_args(model, tmp_path / "in.txt", tmp_path / "out.csv")]
    proc = subprocess.run([sys.executable, "-c", measure, *cli], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_kib = int(proc.stdout.split()[-1])
    print(f"peak RSS {peak_kib / 1024:.0f} MiB for a {LINE_MB} MiB line")
    assert peak_kib < MEMORY_MB * 1024
    rows = read_csv(tmp_path / "out.csv")
    assert [r["id"] for r in rows] == ["1", "2", "3"] and all(r["label"] for r in rows)
