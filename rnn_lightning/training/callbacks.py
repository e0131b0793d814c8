"""Callbacks: prediction file writer, hyperparameters with final metrics, exact parameter counts, run config, LR suggestion."""

import csv
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, LearningRateFinder, ModelSummary
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.files import atomic_file, check_writable
from rnn_lightning.serving import prediction


def prediction_fields(class_names: list[str]) -> list[str]:
    """The columns of a prediction file: id, predicted class, its probability, each class's, error."""
    return ["id", "label", "prob", *(f"prob_{name}" for name in class_names), "error"]


PREDICTIONS_NAME = "predictions.csv"  # under trainer.default_root_dir unless prediction_writer.output says


MERGE_ROWS = 65_536  # prediction records each process hands on at a time when the file is written


def prediction_records(k: int) -> np.dtype:
    """One prediction as it waits on disk: its input row and the K probabilities."""
    return np.dtype([("row", np.int64), ("probs", np.float32, (k,))])


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results to ``output`` (``.csv`` or ``.jsonl``): one row per input row, in
    input order (also under DDP), with the columns of ``prediction_fields``: the id, the predicted
    class's name (``label``) and probability (``prob``), every class's probability, and an error for
    rows that could not be classified (their other fields are empty).

    ``output`` unset: ``predictions.csv`` in ``trainer.default_root_dir``. The file appears only
    complete (``files.atomic_file``); its folder is checked before the first batch. Memory does not
    grow with the input: each process appends its batches' predictions to an unlinked temporary file
    beside the output, and at the end process 0 merges them, ``MERGE_ROWS`` per process at a time
    (gathered across processes under DDP), with the input's ids and errors, into the file.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="batch")
        if output is not None and Path(output).suffix not in (".csv", ".jsonl"):
            raise InputError(f"prediction_writer.output: expected a .csv or .jsonl path, got {output!r}")
        self.output = output
        self._part = None  # this process's predictions so far (records of prediction_records)
        self._written = False

    def path(self, trainer: Trainer) -> Path:
        return Path(self.output) if self.output is not None else Path(trainer.default_root_dir) / PREDICTIONS_NAME

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._written = False
        if stage == "predict":
            check_writable([self.path(trainer).parent], need_bytes=0, field="prediction_writer.output")

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = self.path(trainer).parent
        folder.mkdir(parents=True, exist_ok=True)
        self._part = tempfile.TemporaryFile(dir=folder)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning skips the loop, and its epoch hooks, when no row has text to classify (an empty
        # input, only blank lines): the file still gets one row per input row. Not called after an error.
        if stage == "predict" and not self._written and trainer.is_global_zero:
            self._write(trainer, pl_module.class_names, [])
        if self._part is not None:
            self._part.close()
            self._part = None

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        records = np.empty(len(batch[1]), prediction_records(prediction.shape[-1]))
        records["row"], records["probs"] = batch[1].numpy(), prediction.float().numpy()  # (B,), (B, K)
        self._part.write(records.tobytes())

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module.class_names, self._merged(trainer, len(pl_module.class_names)))
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

    def _write(self, trainer: Trainer, names: list[str], chunks) -> None:
        """The file from ``chunks`` of prediction records in input order and the input's ids and errors."""
        if not trainer.is_global_zero:
            for _ in chunks:  # hand this process's predictions on
                pass
            return
        inputs = trainer.datamodule.predict_rows
        n = len(inputs) if inputs is not None else len(trainer.datamodule.splits["predict"])
        rows = inputs.rows() if inputs is not None else ((str(i), "") for i in range(n))
        out = self.path(trainer)
        fields = prediction_fields(names)
        with atomic_file(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fields) if out.suffix == ".csv" else None
            if writer:
                writer.writeheader()

            def emit(probs=None) -> None:
                row = dict.fromkeys(fields)
                row["id"], row["error"] = next(rows)
                if probs is not None:
                    pred = prediction(probs.tolist(), names)
                    row.update({"label": pred["label"], "prob": round(pred["prob"], 6)})
                    row.update({f"prob_{name}": round(q, 6) for name, q in pred["probs"].items()})
                writer.writerow(row) if writer else f.write(json.dumps(row) + "\n")

            done = 0  # input rows written
            for chunk in chunks:
                for row, probs in zip(chunk["row"].tolist(), chunk["probs"], strict=True):
                    for _ in range(row - done):  # rows before it without text
                        emit()
                    emit(probs)
                    done = row + 1
            for _ in range(n - done):
                emit()
        rank_zero_info(f"Wrote {n} predictions to {out}")


class HParamsWithMetrics(Callback):
    """At the end of ``fit``, records the hyperparameters together with the final and best validation
    metrics, so runs compare side by side in TensorBoard's HPARAMS tab."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.logger is None:
            return
        metrics = {
            f"hp/{k.replace('/', '_')}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and isinstance(ckpt.best_model_score, torch.Tensor):
            metrics["hp/best_val_acc"] = float(ckpt.best_model_score)
        params = {**dict(pl_module.hparams), **{f"data.{k}": v for k, v in trainer.datamodule.hparams.items()}}
        trainer.logger.log_hyperparams({k: ("None" if v is None else v) for k, v in params.items()}, metrics)


class LearningRateSuggestion(LearningRateFinder):
    """Lightning's learning-rate finder at the start of ``fit``, reporting rather than applying.

    The learning rate lives in the optimizer's config (``--optimizer.init_args.lr``), not in the
    model, so Lightning's finder cannot set it; this one prints the suggestion and saves the
    loss-versus-learning-rate plot as ``lr_finder.png`` in the run directory. Training then goes on.
    """

    def __init__(self, min_lr: float = 1e-6, max_lr: float = 1.0, num_training_steps: int = 100) -> None:
        super().__init__(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training_steps, update_attr=False)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        finder = self.optimal_lr
        if finder is None or not trainer.is_global_zero:
            return
        lr = finder.suggestion()
        out = Path(trainer.log_dir or trainer.default_root_dir) / "lr_finder.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig = finder.plot(suggest=lr is not None)
        fig.savefig(out)
        import matplotlib.pyplot as plt

        plt.close(fig)
        if lr is None:
            rank_zero_info(
                f"The learning-rate finder has no suggestion (too few steps, or the loss diverged); plot: {out}"
            )
        else:
            rank_zero_info(
                f"Suggested learning rate: {lr:.3g} (use it with --optimizer.init_args.lr {lr:.3g}); plot: {out}"
            )


class ParameterSummary(ModelSummary):
    """Lightning's model summary plus exact parameter counts (its table rounds 1,018,881 to "1.0 M")."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        rows = []
        for name, child in pl_module.net.named_children():
            parts = child.named_children() if isinstance(child, nn.ModuleList) else [("", child)]
            rows += [(f"{name}.{i}" if i else name, sum(p.numel() for p in m.parameters())) for i, m in parts]
        total = sum(p.numel() for p in pl_module.parameters())
        lines = [f"  {name:<16} {count:>12,}" for name, count in rows]
        rank_zero_info("Parameters (exact):\n" + "\n".join(lines) + f"\n  {'total':<16} {total:>12,}")


class RunConfigSaver(SaveConfigCallback):
    """LightningCLI's config saver (``config.yaml`` in the run folder), except that a fit resumed
    from a checkpoint of its own run (in its folder, or a SLURM requeue checkpoint, which names its
    run) keeps the ``config.yaml`` the run started with, and a command without a logger
    (``predict``) writes none (it has no run folder of its own)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.logger is None:
            return
        log_dir, ckpt_path = trainer.log_dir, self.config.get("ckpt_path")
        if stage == "fit" and ckpt_path and log_dir and os.path.isfile(os.path.join(log_dir, self.config_filename)):
            if Path(ckpt_path).resolve().is_relative_to(Path(log_dir).resolve()) or Path(ckpt_path).match(
                checkpoint.HPC_PATTERN
            ):
                return
        super().setup(trainer, pl_module, stage)


LOST_PEER = ("timed out", "connection reset by peer", "connection closed by peer")


def is_lost_peer(exception: BaseException) -> bool:
    """torch.distributed's error for a collective whose peer died (connection lost) or stopped
    answering (the strategy's timeout passed)."""
    return isinstance(exception, RuntimeError) and any(s in str(exception).lower() for s in LOST_PEER)


def describe_peers(trainer: Trainer) -> str:
    """What became of the other processes of this node, as far as this one can see: those Lightning
    started for local ranks 1..N-1 (``launcher.procs``, the public attribute of its subprocess
    launcher; empty under torchrun, whose agent reports its own workers)."""
    states = []
    for local_rank, proc in enumerate(getattr(trainer.strategy.launcher, "procs", None) or [], start=1):
        code = proc.poll()
        if code is not None:
            states.append(f"process {local_rank} exited with code {code}")
        elif _stopped(proc.pid):
            states.append(f"process {local_rank} is stopped (SIGSTOP)")
    return "; ".join(states)


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):  # no /proc (not Linux): unknown
        return False


class GracefulStop(Callback):
    """SIGTERM (what SLURM, Kubernetes and ``timeout`` send) or SIGINT (Ctrl+C) during ``fit``: finish the
    current batch, write ``last.ckpt`` of exactly that point (mid-epoch included; the training loader
    resumes there), and exit with 128 + the signal's number. During ``predict``: stop after the current
    batch, writing nothing. A second Ctrl+C stops at once.

    Lightning's own SIGTERM path does the stopping (all DDP processes at the same step); SIGINT is
    forwarded to it, so both signals behave alike. This callback adds the checkpoint and the exit code.

    Under DDP, a collective that lost a peer (dead, or past the timeout): the exception is given what
    became of this node's other processes (for the CLI's one-line error), and the processes Lightning
    started for them are killed, so a stopped one does not outlive the run.

    Under SLURM, Lightning's requeue signal (SIGUSR1; ``SLURMEnvironment(auto_requeue=True)``, the
    default) saves ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir`` and requeues the job, which then
    resumes from it. Lightning does that inside the signal handler, wherever the step happens to be
    (after the optimizer step but before the loop counts the batch, the batch would be trained twice);
    here it is deferred to the start of the next batch, a point a checkpoint resumes from exactly.
    Every checkpoint also records its TensorBoard run, so the requeued job continues that run.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous_sigint = None
        self._requeue = None  # (signal, Lightning's handler) under SLURM
        self._requeue_pending = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._forward_sigint)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
        self._requeue, self._requeue_pending = None, False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning installs its SLURM handlers just before the loop runs, so this is the first hook after them.
        env = getattr(trainer.strategy, "cluster_environment", None)
        if env is None and SLURMEnvironment.detect():  # a single-device strategy holds no environment
            env = SLURMEnvironment()
        if not isinstance(env, SLURMEnvironment) or threading.current_thread() is not threading.main_thread():
            return
        signum = env.requeue_signal
        handler = signal.getsignal(signum) if signum is not None else None
        if callable(handler):  # installed by Lightning when auto_requeue is on
            self._requeue = (signum, handler)
            signal.signal(signum, self._note_requeue)

    def _note_requeue(self, signum, frame) -> None:
        self._requeue_pending = True

    def on_train_batch_start(self, trainer: Trainer, *args, **kwargs) -> None:
        if self._requeue_pending:
            self._requeue_pending = False
            signum, handler = self._requeue
            handler(signum, None)  # Lightning's: hpc_ckpt_N.ckpt, then `scontrol requeue`

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, ckpt: dict) -> None:
        logger = trainer.logger
        if isinstance(logger, TensorBoardLogger) and isinstance(logger.version, int):
            ckpt[checkpoint.RUN_VERSION_KEY] = logger.version

    def _forward_sigint(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second Ctrl+C
        self.signum = signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)

    def on_predict_batch_end(self, trainer: Trainer, *args, **kwargs) -> None:
        if trainer.received_sigterm:  # Lightning notes SIGTERM in every stage but stops only fit and evaluation
            raise SIGTERMException

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if is_lost_peer(exception):
            exception.peers = describe_peers(trainer)  # read by the CLI's one-line error
            launcher = trainer.strategy.launcher
            if getattr(launcher, "procs", None):  # a stopped process would outlive this one, holding its pipes
                launcher.kill(signal.SIGKILL)
            return
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.signum or signal.SIGTERM
        exception.code = 128 + signum  # SIGTERMException is a SystemExit: this becomes the exit status
        name = signal.Signals(signum).name
        if trainer.state.fn != "fit":
            rank_zero_info(f"Stopped by {name}; nothing was written")
            return
        last = [c for c in trainer.checkpoint_callbacks if getattr(c, "filename", None) == checkpoint.LAST_NAME]
        if not last or last[0].dirpath is None:
            rank_zero_warn(
                f"Stopped by {name} at global step {trainer.global_step}; checkpointing is off, nothing saved"
            )
            return
        path = Path(last[0].dirpath) / f"{checkpoint.LAST_NAME}.ckpt"
        trainer.save_checkpoint(path)
        rank_zero_info(
            f"Stopped by {name} at epoch {trainer.current_epoch}, global step {trainer.global_step}: saved {path}; "
            "continue with --ckpt_path last"
        )
