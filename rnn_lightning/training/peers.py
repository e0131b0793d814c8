"""DDP peer forensics: whether an error means another process was lost, and what became of it."""

import time
from pathlib import Path

from lightning.pytorch import Trainer

LOST_PEER = ("timed out", "connection reset by peer", "connection closed by peer")

# A dying process's connections close while it exits, before its exit status can be read (a GPU context
# is freed first): how long to wait for a status before saying nothing of the peers.
EXIT_STATUS_WAIT_S = 10.0


def is_lost_peer(exception: BaseException) -> bool:
    """torch.distributed's error for a collective whose peer died (connection lost) or stopped
    answering (the strategy's timeout passed)."""
    return isinstance(exception, RuntimeError) and any(s in str(exception).lower() for s in LOST_PEER)


def peer_processes(trainer: Trainer) -> list:
    """The ``subprocess.Popen`` of each process Lightning started for local ranks 1..N-1; empty under
    torchrun or SLURM, whose own agents start and report the processes."""
    # Kept (lightning 2.6.6): `procs` of the private _SubprocessScriptLauncher has no public accessor; others lack it
    return list(getattr(trainer.strategy.launcher, "procs", None) or [])


def describe_peers(trainer: Trainer, wait_s: float = EXIT_STATUS_WAIT_S) -> str:
    """What became of the other processes of this node, as far as this one can see: ``process <local rank>
    exited with code <n>`` or ``process <local rank> is stopped (SIGSTOP)``, joined by ``; `` (empty when
    none can be told). While none has exited or stopped, they are polled for up to ``wait_s`` seconds: the
    process whose death closed the connection may not have finished exiting yet."""
    procs = peer_processes(trainer)
    deadline = time.monotonic() + wait_s
    while True:
        states = [state for local_rank, proc in enumerate(procs, start=1) if (state := peer_state(local_rank, proc))]
        if states or not procs or time.monotonic() >= deadline:
            return "; ".join(states)
        time.sleep(0.05)


def peer_state(local_rank: int, proc) -> str | None:
    """``process <local rank> exited with code <n>``, ``... is stopped (SIGSTOP)``, or None (running, as far
    as can be told)."""
    code = proc.poll()
    if code is not None:
        return f"process {local_rank} exited with code {code}"
    if is_stopped(proc.pid):
        return f"process {local_rank} is stopped (SIGSTOP)"
    return None


def is_stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (state T: SIGSTOP, or t: stopped by a debugger)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):  # no /proc (not Linux), or the process is gone: not stopped
        return False
