"""The prediction file: its columns, and the writer that fills it in input order, also under DDP."""

import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from rnn_lightning import page
from rnn_lightning.errors import InputError
from rnn_lightning.explain import explain_ids
from rnn_lightning.files import atomic_file, check_writable
from rnn_lightning.tasks import Task
from rnn_lightning.text.labels import LABEL_SEPARATOR


def prediction_fields(task: Task) -> list[str]:
    """The columns of a prediction file: the id, the task's decision (``Task.columns``; single-label: the
    predicted class, its probability, each class's), the error."""
    return ["id", *task.columns, "error"]


PREDICTIONS_NAME = "predictions.csv"  # under trainer.default_root_dir unless prediction_writer.output says
EXPLAINED_NAME = "predictions.jsonl"  # the same with ``explain``: the attributions need JSON
REPORT_ROWS = 1_000  # texts shown in the HTML report (the JSONL output has every one)


MERGE_ROWS = 65_536  # prediction records each process hands on at a time when the file is written

# First characters that make a spreadsheet read a cell as a formula (OWASP's "CSV injection" list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell):
    """``cell`` as a spreadsheet shows it without evaluating it: text that a spreadsheet would take for a
    formula gets a leading ``'`` (OWASP's advice); anything else, numbers included, is returned as it is."""
    return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) else cell


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path, or one file through links."""
    if a.absolute() == b.absolute():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def prediction_records(k: int) -> np.dtype:
    """One prediction as it waits on disk: its input row and the K probabilities."""
    return np.dtype([("row", np.int64), ("probs", np.float32, (k,))])


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results to ``output`` (``.csv`` or ``.jsonl``): one row per input row, in
    input order (also under DDP), with the columns of ``prediction_fields``: the id, the predicted
    class's name (``label``) and probability (``prob``), every class's probability, and an error for
    rows that could not be classified (their other fields are empty).

    Text from outside (ids, class names, errors) is written as follows. In a ``.csv``, a text cell that
    starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``
    (``spreadsheet_safe``), so a spreadsheet shows it instead of running it as a formula; every other
    character, newlines and other control characters included, is kept, and a cell holding a newline,
    a quote or a comma is quoted (RFC 4180), so a CSV reader gets one record per input row. The
    probabilities are numbers the writer makes and are written as they are. A ``.jsonl`` keeps every
    value exact (JSON escapes control characters).

    With ``explain``, each row of the ``.jsonl`` output also has the attribution of its predicted class
    (``rnn_lightning.explain``): ``target``, ``words`` ([{"token", "score"}] over the words read), ``logit``,
    ``baseline_logit`` and ``delta``; and ``report`` (default: the output with ``.html``) shows the first
    ``REPORT_ROWS`` of them, each with its decision (``Task.decision``) and each word coloured by its
    score, in one self-contained HTML file (``page.report``).

    Before any batch runs (``setup``), an output that is a folder, or that is the input itself
    (``data.predict_path``, also through a link), is refused in one line; so is, with ``explain``, a
    report that is a folder, the input or the output, or whose folder cannot be written.

    ``output`` unset: ``predictions.csv`` in ``trainer.default_root_dir``. The file appears only
    complete (``files.atomic_file``); its folder is checked before the first batch. Memory does not
    grow with the input: each process appends its batches' predictions to an unlinked temporary file
    beside the output, and at the end process 0 merges them, ``MERGE_ROWS`` per process at a time
    (gathered across processes under DDP), with the input's ids and errors, into the file.
    """

    def __init__(self, output: str | None = None, explain: bool = False, report: str | None = None) -> None:
        super().__init__(write_interval="batch")
        if output is not None and Path(output).suffix not in (".csv", ".jsonl"):
            raise InputError(f"prediction_writer.output: expected a .csv or .jsonl path, got {output!r}")
        if explain and output is not None and Path(output).suffix != ".jsonl":
            raise InputError(
                f"prediction_writer.output: {output!r}; explain writes the scores as JSON, to a .jsonl path"
            )
        if report is not None and (not explain or Path(report).suffix != ".html"):
            raise InputError(f"prediction_writer.report: {report!r}; expected an .html path, with explain: true")
        self.output, self.explain, self.report = output, explain, report
        self._part = None  # this process's predictions so far (records of prediction_records)
        self._explained = None  # with explain: their attributions, a JSON line per row ...
        self._explained_at: dict[int, tuple[int, int]] = {}  # ... at (offset, length), by row
        self._written = False

    def path(self, trainer: Trainer) -> Path:
        if self.output is not None:
            return Path(self.output)
        return Path(trainer.default_root_dir) / (EXPLAINED_NAME if self.explain else PREDICTIONS_NAME)

    def report_path(self, trainer: Trainer) -> Path:
        return Path(self.report) if self.report is not None else self.path(trainer).with_suffix(".html")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._written = False
        if stage == "predict":
            self._check_output(trainer)
            if self.explain and trainer.world_size > 1:
                raise InputError("prediction_writer.explain: runs in one process; predict with trainer.devices=1")
            if self.explain:
                self._check_report(trainer)

    def _check_output(self, trainer: Trainer) -> None:
        out = self.path(trainer)
        if out.is_dir():
            raise InputError(f"prediction_writer.output: {str(out)!r} is a folder; expected a .csv or .jsonl file path")
        source = getattr(trainer.datamodule, "predict_path", None)
        if source not in (None, "-") and _same_file(out, Path(source)):
            raise InputError(
                f"prediction_writer.output: {str(out)!r} is the input (data.predict_path {source!r}); "
                "expected another file, so that the input is kept"
            )
        check_writable([out.parent], need_bytes=0, field="prediction_writer.output")

    def _check_report(self, trainer: Trainer) -> None:
        """The report neither replaces the input or the output nor fails after the inference: a writable
        file path of its own."""
        report = self.report_path(trainer)
        if report.is_dir():
            raise InputError(f"prediction_writer.report: {str(report)!r} is a folder; expected an .html file path")
        source = getattr(trainer.datamodule, "predict_path", None)
        for field, other in (("data.predict_path", source), ("prediction_writer.output", self.path(trainer))):
            if other not in (None, "-") and _same_file(report, Path(other)):
                raise InputError(
                    f"prediction_writer.report: {str(report)!r} is the {field} {str(other)!r}; "
                    "expected another .html path, so that it is kept"
                )
        check_writable([report.parent], need_bytes=0, field="prediction_writer.report")

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = self.path(trainer).parent
        folder.mkdir(parents=True, exist_ok=True)
        self._part = tempfile.TemporaryFile(dir=folder)
        if self.explain:
            self._explained, self._explained_at = tempfile.TemporaryFile(dir=folder), {}

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning skips the loop, and its epoch hooks, when no row has text to classify (an empty
        # input, only blank lines): the file still gets one row per input row. Not called after an error.
        if stage == "predict" and not self._written and trainer.is_global_zero:
            self._write(trainer, pl_module.task, [])
        for part in (self._part, self._explained):
            if part is not None:
                part.close()
        self._part = self._explained = None

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        records = np.empty(len(batch[1]), prediction_records(prediction.shape[-1]))
        records["row"], records["probs"] = batch[1].numpy(), prediction.float().numpy()  # (B,), (B, K)
        self._part.write(records.tobytes())
        if self.explain:
            self._explain(trainer, pl_module, batch)

    def _explain(self, trainer: Trainer, pl_module: LightningModule, batch) -> None:
        """Each text's attribution to its predicted class, as a JSON line in ``self._explained``."""
        tokens, rows = batch[0], batch[1].tolist()
        vocabulary = trainer.datamodule.tokenizer
        found_rows = explain_ids(pl_module.net, tokens, pl_module.task)
        for row, ids, found in zip(rows, tokens.tolist(), found_rows, strict=True):
            words = [
                {"token": vocabulary.id_to_token(ids[p]), "score": round(score, 6)}
                for p, score in zip(found["positions"], found["scores"], strict=True)
            ]
            keep = {key: found[key] for key in ("target", "logit", "baseline_logit", "delta")}
            line = json.dumps({**keep, "words": words}).encode() + b"\n"
            self._explained_at[row] = (self._explained.seek(0, os.SEEK_END), len(line))
            self._explained.write(line)

    def _explanation(self, row: int) -> dict:
        offset, size = self._explained_at[row]
        self._explained.seek(offset)
        return json.loads(self._explained.read(size))

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        task = pl_module.task
        self._write(trainer, task, self._merged(trainer, len(task.class_names)))
        self._written = True

    def _merged(self, trainer: Trainer, k: int):
        """Every process's predictions in input order, a chunk at a time (on process 0; the others
        only hand theirs on). A process's rows ascend, and process r holds texts r, r + W, r + 2W, ...
        (``UnrepeatedDistributedSampler``), so each round's chunks together are the next run of rows."""
        dtype = prediction_records(k)
        part = self._part
        part.flush()
        part.seek(0)
        gather = dist.is_available() and dist.is_initialized() and trainer.world_size > 1
        while True:
            chunk = np.frombuffer(part.read(dtype.itemsize * MERGE_ROWS), dtype)
            if gather:
                chunks: list = [None] * trainer.world_size
                dist.all_gather_object(chunks, chunk)
                if not any(len(c) for c in chunks):
                    return
                chunk = np.concatenate(chunks)
                chunk = chunk[np.argsort(chunk["row"], kind="stable")]
            elif not len(chunk):
                return
            if trainer.is_global_zero:
                yield chunk

    def _write(self, trainer: Trainer, task: Task, chunks) -> None:
        """The file from ``chunks`` of prediction records in input order and the input's ids and errors."""
        if not trainer.is_global_zero:
            for _ in chunks:  # hand this process's predictions on
                pass
            return
        inputs = trainer.datamodule.predict_rows
        n = len(inputs) if inputs is not None else len(trainer.datamodule.splits["predict"])
        rows = inputs.rows() if inputs is not None else ((str(i), "") for i in range(n))
        out = self.path(trainer)
        fields = prediction_fields(task)
        with atomic_file(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fields) if out.suffix == ".csv" else None
            if writer:
                writer.writeheader()

            def emit(probs=None, source_row: int = -1) -> None:
                row = dict.fromkeys(fields)
                row["id"], row["error"] = next(rows)
                decision = task.no_decision() if probs is None else task.decision(probs.tolist())
                if probs is not None:
                    cells = task.cells(decision)
                    row.update({key: round(v, 6) if isinstance(v, float) else v for key, v in cells.items()})
                if self.explain:
                    explanation = self._explanation(source_row) if probs is not None else {}
                    row.update(explanation)
                    if len(shown) < REPORT_ROWS:  # the page shows the decision itself, not the file's cells
                        shown.append({"id": row["id"], "error": row["error"], **decision, **explanation})
                if writer:  # a multi-label row's labels joined into one cell, as training data reads them
                    joined = {k: LABEL_SEPARATOR.join(v) if isinstance(v, list) else v for k, v in row.items()}
                    writer.writerow({key: spreadsheet_safe(value) for key, value in joined.items()})
                else:
                    f.write(json.dumps(row) + "\n")

            done = 0  # input rows written
            shown: list[dict] = []  # the report's rows
            for chunk in chunks:
                for source_row, probs in zip(chunk["row"].tolist(), chunk["probs"], strict=True):
                    for _ in range(source_row - done):  # rows before it without text
                        emit()
                    emit(probs, source_row)
                    done = source_row + 1
            for _ in range(n - done):
                emit()
        rank_zero_info(f"Wrote {n} predictions to {out}")
        if self.explain:
            with atomic_file(self.report_path(trainer), "w", encoding="utf-8") as f:
                f.write(page.report(shown))
            rank_zero_info(f"Wrote the attributions of {len(shown)} of them to {self.report_path(trainer)}")
