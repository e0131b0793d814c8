"""Stopping on a signal: SIGTERM/SIGINT save the point reached, SLURM's requeue signal waits for a batch
boundary, and a lost DDP peer ends every process (``peers.py`` says what became of it)."""

import os
import signal
import threading
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rnn_lightning import checkpoint
from rnn_lightning.training.peers import describe_peers, is_lost_peer, peer_processes


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
            if peer_processes(trainer):  # a stopped process would outlive this one, holding its pipes
                trainer.strategy.launcher.kill(signal.SIGKILL)
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
