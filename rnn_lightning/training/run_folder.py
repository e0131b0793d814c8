"""Where a run goes: ``<trainer.default_root_dir>/lightning_logs/version_N/``, one number per run, and how
far a checkpoint of it got."""

import errno
import fcntl
import os
import socket
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from rnn_lightning.errors import InputError

RUNS_DIR_NAME = "lightning_logs"  # <trainer.default_root_dir>/lightning_logs/version_N/ holds each run
LOCK_NAME = ".fit.lock"  # in a run's folder: locked by the fit writing that run
_held: dict[Path, int] = {}  # run folder -> descriptor of its locked file, for this process's fit


def runs_dir(trainer_cfg: Namespace) -> Path:
    """The folder holding ``version_N`` runs, from the resolved trainer config."""
    logger = trainer_cfg.get("logger")
    if isinstance(logger, Namespace) and logger.get("init_args") and logger.init_args.get("save_dir"):
        return Path(logger.init_args.save_dir) / (logger.init_args.get("name") or "")
    return Path(trainer_cfg.get("default_root_dir") or ".") / RUNS_DIR_NAME


def claim_run_folder(trainer: Trainer, logger_cfg: Namespace | list | bool | None) -> int | None:
    """Take the next ``version_N`` by creating its folder (an atomic step), and give the trainer a logger
    built from its config (``logger_cfg``, the trainer's ``logger`` setting) with that version: two runs
    started together in one folder get two versions instead of both writing ``version_0``.

    Nothing is claimed for a logger whose config names its version (a resumed run continues its own) or
    that is not a TensorBoardLogger built from a ``class_path`` config. Returns the version claimed."""
    if isinstance(logger_cfg, list):  # several loggers: the first one's folder is the run's
        logger_cfg = logger_cfg[0] if logger_cfg else None
    logger = trainer.logger
    if (
        not isinstance(logger, TensorBoardLogger)
        or not isinstance(logger_cfg, Namespace)
        or logger_cfg.get("init_args", Namespace()).get("version") is not None
    ):
        return None
    root = Path(logger.root_dir)
    root.mkdir(parents=True, exist_ok=True)
    version = logger.version  # the next number after the folders there now
    while True:
        try:
            (root / f"version_{version}").mkdir()
            break
        except FileExistsError:
            version += 1
    # TensorBoardLogger takes its version at construction only: the same logger again, with the claimed one.
    args = {**logger_cfg.get("init_args", Namespace()).as_dict(), **(logger_cfg.get("dict_kwargs") or {})}
    claimed = type(logger)(**{**args, "version": version})
    trainer.loggers = [claimed if other is logger else other for other in trainer.loggers]
    return version


def lock_run_folder(folder: str | os.PathLike) -> None:
    """Hold the run folder ``folder`` for this process's fit, or refuse in one line when another process
    holds it (two resumes of one run would write the same checkpoints over each other).

    The lock is the kernel's (``flock``) on a file in the folder: released when the process ends in any
    way, a kill included, so a stale lock never blocks a resume. Released early by ``release_run_folders``."""
    folder = Path(folder).resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return  # a file system without locks (some network ones): the run goes on unguarded
        raise InputError(
            f"ckpt_path: the run {folder} is being written by {holder}; wait for it to end or stop it, then resume"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    _held[folder] = fd


def launched_first() -> bool:
    """Whether this process is a run's first (global rank 0), known before a trainer exists: the other DDP
    processes (started by Lightning, torchrun or SLURM) have their rank, or their node's, in the environment."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") in ("", "0")


def release_run_folders() -> None:
    """Release the run folders this process holds (its fit ended)."""
    while _held:
        os.close(_held.popitem()[1])


# Data settings that decide which texts a training batch holds: a position inside an epoch counts batches of them.
EPOCH_POSITION_SETTINGS = ("batch_size", "val_fraction", "val_split", "split_seed", "train_name", "unlabelled")


def check_resume_position(ckpt: dict, data_cfg: Namespace) -> None:
    """Refuse to resume a checkpoint written mid-epoch with other data settings of ``EPOCH_POSITION_SETTINGS``:
    its training loader resumes by skipping the batches trained, which would then be other texts (some
    skipped unseen, some seen twice). One written at an epoch's end resumes with any of them."""
    # Kept (layout of lightning 2.6.6): the loop's progress is the only record of where in the epoch it stopped
    try:
        progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        mid_epoch = progress["current"]["processed"] > 0 and not progress["is_last_batch"]
    except (KeyError, TypeError):
        return
    saved = ckpt.get("datamodule_hyper_parameters") or {}
    for key in EPOCH_POSITION_SETTINGS if mid_epoch else ():
        if key in saved and key in data_cfg and saved[key] != data_cfg[key]:
            raise InputError(
                f"data.{key}: the checkpoint stopped mid-epoch (epoch {ckpt.get('epoch')}, batch "
                f"{progress['current']['processed']}) with data.{key} {saved[key]!r}, got {data_cfg[key]!r}; resume "
                f"with --data.{key} {saved[key]}, or from a checkpoint written at an epoch's end"
            )


def epochs_done(ckpt: dict) -> int:
    """Whole epochs a checkpoint has trained (one written mid-epoch has not finished its epoch)."""
    # Kept (layout of lightning 2.6.6): "epoch" is e both mid-epoch e and at its end; only the fit loop counts done ones
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(ckpt.get("epoch", -1)) + 1
