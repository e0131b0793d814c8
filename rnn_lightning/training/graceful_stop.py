"""The Lightning callback for stopping: SIGTERM/SIGINT save the point reached, SLURM's requeue signal waits for
a batch boundary, and a lost DDP peer ends every process (``peers.py`` says what became of it). The signal
handlers it uses are in ``rnn_lightning.signals``, with every other."""

import logging
import signal
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rnn_lightning import checkpoint
from rnn_lightning.signals import Deferred, SigintAsSigterm, Stopped, StoppedWhilePreparing
from rnn_lightning.training.peers import describe_peers, is_lost_peer, peer_processes

# Lightning's signal handler logs "Received SIGTERM: 15" here (lightning 2.6.6), also for a Ctrl+C forwarded to it.
SIGNAL_LOG = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")


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

    resume_advice = "continue with --ckpt_path last"  # the stop line's last words; tune's trials say their own

    def __init__(self) -> None:
        self._sigint = SigintAsSigterm()
        self._requeue: Deferred | None = None  # Lightning's requeue handler, under SLURM
        self._stopped_in_validation = False  # while writing the stop's checkpoint: validation to run again

    @property
    def signum(self) -> int | None:
        """SIGINT once Ctrl+C was pressed (it arrives as SIGTERM), else None."""
        return self._sigint.received

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._sigint.install()
        SIGNAL_LOG.addFilter(self._name_the_signal)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._sigint.uninstall()
        SIGNAL_LOG.removeFilter(self._name_the_signal)
        self._requeue = None

    def _name_the_signal(self, record: logging.LogRecord) -> bool:
        """Lightning's "Received SIGTERM: 15", said as "Received SIGINT: 2" when it was a forwarded Ctrl+C."""
        if self.signum == signal.SIGINT and isinstance(record.msg, str):
            record.msg = record.msg.replace(f"SIGTERM: {signal.SIGTERM.value}", f"SIGINT: {signal.SIGINT.value}")
        return True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning installs its SLURM handlers just before the loop runs, so this is the first hook after them.
        env = getattr(trainer.strategy, "cluster_environment", None)
        if env is None and SLURMEnvironment.detect():  # a single-device strategy holds no environment
            env = SLURMEnvironment()
        if isinstance(env, SLURMEnvironment) and env.requeue_signal is not None:
            requeue = Deferred(env.requeue_signal)  # takes over the handler Lightning installs when auto_requeue is on
            self._requeue = requeue if requeue.active else None

    def on_train_batch_start(self, trainer: Trainer, *args, **kwargs) -> None:
        if self._requeue is not None:
            self._requeue.run_pending()  # Lightning's: hpc_ckpt_N.ckpt, then `scontrol requeue`

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, ckpt: dict) -> None:
        logger = trainer.logger
        if isinstance(logger, TensorBoardLogger) and isinstance(logger.version, int):
            ckpt[checkpoint.RUN_VERSION_KEY] = logger.version
        if self._stopped_in_validation:
            validation_not_begun(ckpt)

    def on_predict_batch_end(self, trainer: Trainer, *args, **kwargs) -> None:
        if trainer.received_sigterm:  # Lightning notes SIGTERM in every stage but stops only fit and evaluation
            raise SIGTERMException

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if is_lost_peer(exception):
            exception.peers = describe_peers(trainer)  # read by the CLI's one-line error
            if peer_processes(trainer):  # a stopped process would outlive this one, holding its pipes
                trainer.strategy.launcher.kill(signal.SIGKILL)
            return
        if not isinstance(exception, (SIGTERMException, Stopped)):  # Stopped: a stop outside Lightning's path
            return
        signum = self.signum or getattr(exception, "signum", None) or signal.SIGTERM
        exception.code = 128 + signum  # SIGTERMException is a SystemExit: this becomes the exit status
        name = signal.Signals(signum).name
        if isinstance(exception, StoppedWhilePreparing):
            rank_zero_info(f"Stopped by {name} while preparing the data; the unfinished files were removed")
            return
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
        # Stopped inside the epoch's validation: the metrics of the batches validated are not in a checkpoint,
        # so the resumed run validates that epoch again from its first batch.
        self._stopped_in_validation = trainer.validating and not trainer.sanity_checking
        try:
            trainer.save_checkpoint(path, weights_only=False)  # the whole state, to resume from
        finally:
            self._stopped_in_validation = False
        rank_zero_info(
            f"Stopped by {name} at epoch {trainer.current_epoch}, global step {trainer.global_step}: saved {path}; "
            f"{self.resume_advice}"
        )


VAL_PROGRESS_KEY = "epoch_loop.val_loop.batch_progress"  # in ckpt["loops"]["fit_loop"] (lightning 2.6.6)


def validation_not_begun(ckpt: dict) -> None:
    """Mark a checkpoint's in-epoch validation as begun but no batch of it done. Resumed, Lightning's fit loop
    then validates again before the next epoch ("restarted mid-evaluation"); marked as it is when a stop
    interrupts validation (every batch so far complete), it would skip that validation instead."""
    # Kept (lightning 2.6.6): no public API restarts an interrupted validation; this is the progress layout its
    # _EvaluationLoop.update_restart_stage reads as mid-evaluation (total: started == ready, processed == started - 1)
    progress = ckpt["loops"]["fit_loop"][VAL_PROGRESS_KEY]
    progress["total"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["current"] = {"ready": 0, "started": 0, "processed": 0, "completed": 0}
    progress["is_last_batch"] = False
