"""Where a run goes: ``<trainer.default_root_dir>/lightning_logs/version_N/``, one number per run, and how
far a checkpoint of it got."""

from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

RUNS_DIR_NAME = "lightning_logs"  # <trainer.default_root_dir>/lightning_logs/version_N/ holds each run


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


def epochs_done(ckpt: dict) -> int:
    """Whole epochs a checkpoint has trained (one written mid-epoch has not finished its epoch)."""
    # Kept (layout of lightning 2.6.6): "epoch" is e both mid-epoch e and at its end; only the fit loop counts done ones
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(ckpt.get("epoch", -1)) + 1
